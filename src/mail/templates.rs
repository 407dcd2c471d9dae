//! Mail templates: text and HTML per message kind, in English (`en`) and Simplified
//! Chinese (`zh-CN`), built in, and overridable by an operator.
//!
//! A template is named `LOCALE/KIND.subject.txt`, `LOCALE/KIND.txt` or `LOCALE/KIND.html`
//! (plus `LOCALE/_layout.html`, which the HTML templates extend). A file with the same
//! name under `mail.templates_dir` wins over the built-in one; a file it does not have
//! falls back to the built-in one. An operator may also add a locale of their own (a
//! folder with at least `KIND.subject.txt`, `KIND.txt` and `KIND.html`). Templates are
//! read at every render, so an edit takes effect without a restart.
//!
//! The syntax is minijinja's (Jinja2). HTML templates are auto-escaped; text and subject
//! templates are not. Printing a variable the caller did not give is an error (so a typo
//! in a template shows at once), while `{% if name %}` on a missing one is simply false.
//! Every template also sees `locale` and `request_kind` (`erasure`, `exit`, `access`; unset
//! only for failure alerts not about a request), and the text and HTML templates see the
//! rendered `subject`.

use std::path::{Component, Path};

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value, context};
use serde::Serialize;

use super::MessageKind;
use crate::error::{Code, Error, Result};
use crate::policy::RequestKind;

/// The locales with built-in templates; the first is the fallback.
pub const LOCALES: [&str; 2] = ["en", "zh-CN"];

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rendered {
    /// One line.
    pub subject: String,
    pub text: String,
    pub html: String,
}

macro_rules! embedded {
    ($($loc:literal => [$($kind:literal),* $(,)?]);* $(;)?) => {
        &[
            $(
                (
                    concat!($loc, "/_layout.html"),
                    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/mail/", $loc, "/_layout.html")),
                ),
                $(
                    (
                        concat!($loc, "/", $kind, ".subject.txt"),
                        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/mail/", $loc, "/", $kind, ".subject.txt")),
                    ),
                    (
                        concat!($loc, "/", $kind, ".txt"),
                        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/mail/", $loc, "/", $kind, ".txt")),
                    ),
                    (
                        concat!($loc, "/", $kind, ".html"),
                        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/mail/", $loc, "/", $kind, ".html")),
                    ),
                )*
            )*
        ]
    };
}

/// The built-in templates, by name.
static EMBEDDED: &[(&str, &str)] = embedded!(
    "en" => [
        "acknowledgement", "verification", "approval", "refusal", "extension",
        "completion", "export_ready", "reminder", "failure_alert", "manual_task",
        "restored",
    ];
    "zh-CN" => [
        "acknowledgement", "verification", "approval", "refusal", "extension",
        "completion", "export_ready", "reminder", "failure_alert", "manual_task",
        "restored",
    ];
);

/// The built-in template of a name, if there is one.
pub fn builtin(name: &str) -> Option<&'static str> {
    EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The names of every built-in template (for an operator who wants to copy them).
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(n, _)| *n)
}

/// Whether a template name stays inside the templates folder.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\\')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn load(dir: Option<&Path>, name: &str) -> std::result::Result<Option<String>, minijinja::Error> {
    if !safe_name(name) {
        return Ok(None);
    }
    if let Some(dir) = dir {
        let path = dir.join(name);
        if path.exists() {
            return crate::fsx::read_text_limited(&path, crate::fsx::limit::TEXT)
                .map(Some)
                .map_err(|e| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("cannot read {}", e.message),
                    )
                });
        }
    }
    Ok(builtin(name).map(str::to_owned))
}

/// The locale whose templates are used for `requested`: `en` and `zh-CN` (and their
/// variants: `en-GB`, `zh`, `zh_CN`, `zh-Hans`, ...), a locale the operator added
/// templates for, or else `en`.
pub fn resolve_locale(requested: &str, kind: MessageKind, templates_dir: Option<&Path>) -> String {
    let norm = requested.trim().replace('_', "-").to_ascii_lowercase();
    let simplified_chinese = [
        "zh",
        "zh-cn",
        "zh-sg",
        "zh-hans",
        "zh-hans-cn",
        "zh-hans-sg",
    ];
    if norm == "en" || norm.starts_with("en-") {
        return "en".to_owned();
    }
    if simplified_chinese.contains(&norm.as_str()) {
        return "zh-CN".to_owned();
    }
    let requested = requested.trim();
    if let Some(dir) = templates_dir
        && !requested.is_empty()
        && requested
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && dir
            .join(requested)
            .join(format!("{kind}.subject.txt"))
            .is_file()
    {
        return requested.to_owned();
    }
    LOCALES[0].to_owned()
}

fn template_error(name: &str, e: &minijinja::Error) -> Error {
    let mut msg = format!("mail template {name}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::new(Code::Config, msg)
}

/// Render a message of `kind` about a request of `request_kind`, in `locale` (unknown
/// locales fall back to `en`) with the caller's variables (a JSON object), the
/// operator's templates first when `templates_dir` is given. A kind whose words depend
/// on the request's kind ([`MessageKind::worded_by_request_kind`]) is not rendered
/// without one.
pub fn render(
    kind: MessageKind,
    request_kind: Option<RequestKind>,
    locale: &str,
    vars: &serde_json::Value,
    templates_dir: Option<&Path>,
) -> Result<Rendered> {
    let Some(given) = vars.as_object() else {
        return Err(Error::new(
            Code::Internal,
            format!("mail {kind}: the template variables must be a JSON object"),
        ));
    };
    if given.contains_key("request_kind") {
        return Err(Error::new(
            Code::Internal,
            format!("mail {kind}: request_kind comes from the request, not the variables"),
        ));
    }
    if request_kind.is_none() && kind.worded_by_request_kind() {
        return Err(Error::new(
            Code::Internal,
            format!("mail {kind}: its words depend on the request's kind, which is not given"),
        ));
    }
    let request_kind = request_kind.map(RequestKind::as_str);
    let locale = resolve_locale(locale, kind, templates_dir);
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| Error::new(Code::Internal, format!("mail template syntax: {e}")))?;
    env.set_syntax(syntax);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    let dir = templates_dir.map(Path::to_path_buf);
    env.set_loader(move |name| load(dir.as_deref(), name));

    let base = Value::from(minijinja::value::Serde(vars));
    let render_one = |name: String, ctx: &Value| -> Result<String> {
        let tmpl = env
            .get_template(&name)
            .map_err(|e| template_error(&name, &e))?;
        tmpl.render(ctx).map_err(|e| template_error(&name, &e))
    };

    let subject_ctx = context! { locale => &locale, request_kind => request_kind, ..base.clone() };
    let subject = render_one(format!("{locale}/{kind}.subject.txt"), &subject_ctx)?;
    let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    if subject.is_empty() {
        return Err(Error::new(
            Code::Config,
            format!("mail template {locale}/{kind}.subject.txt renders an empty subject"),
        ));
    }
    let ctx = context! {
        locale => &locale, request_kind => request_kind, subject => &subject, ..base
    };
    let text = render_one(format!("{locale}/{kind}.txt"), &ctx)?;
    let html = render_one(format!("{locale}/{kind}.html"), &ctx)?;
    Ok(Rendered {
        subject,
        text: tidy_text(&text),
        html,
    })
}

/// Trailing spaces off every line, no more than one blank line in a row, one final newline.
fn tidy_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.trim().lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_every_builtin_template() {
        for locale in LOCALES {
            assert!(builtin(&format!("{locale}/_layout.html")).is_some());
            for kind in MessageKind::ALL {
                for ext in ["subject.txt", "txt", "html"] {
                    let name = format!("{locale}/{kind}.{ext}");
                    assert!(builtin(&name).is_some(), "{name} is missing");
                }
            }
        }
        assert_eq!(
            builtin_names().count(),
            LOCALES.len() * (1 + 3 * MessageKind::ALL.len())
        );
    }

    #[test]
    fn locales_resolve() {
        let k = MessageKind::Approval;
        assert_eq!(resolve_locale("en-GB", k, None), "en");
        assert_eq!(resolve_locale("zh_CN", k, None), "zh-CN");
        assert_eq!(resolve_locale("zh-Hans", k, None), "zh-CN");
        assert_eq!(resolve_locale("fr", k, None), "en");
        assert_eq!(resolve_locale("../../etc", k, Some(Path::new("/"))), "en");
    }

    #[test]
    fn names_stay_inside_the_folder() {
        assert!(safe_name("en/approval.txt"));
        assert!(!safe_name("../approval.txt"));
        assert!(!safe_name("/etc/passwd"));
        assert!(!safe_name("en\\..\\x"));
    }

    #[test]
    fn text_is_tidied() {
        assert_eq!(tidy_text("\n a  \n\n\n\nb\n\n"), "a\n\nb\n");
    }
}
