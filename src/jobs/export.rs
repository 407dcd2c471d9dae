//! Exports for access requests (GDPR Art. 15, PIPL Art. 45): the subject's mapped data in
//! a system, as a readable HTML page with the information Art. 15 requires and a JSON
//! copy of the same data, encrypted with age under a random passphrase, downloadable by a
//! link that expires. Nothing in the target system changes.
//!
//! The link and the passphrase never travel together: the email carries the link only;
//! the passphrase is kept sealed with the link's token (of which the store keeps only a
//! hash), and the download page unseals and shows it once the visitor has typed the
//! subject's address ([`unseal`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::task::{Step, TableResult, TaskResult, column};
use super::{Settings, TaskBody};
use crate::error::{Code, Error, Result};
use crate::lifecycle::Context;
use crate::policy::{Jurisdiction, RequestKind, System};
use crate::store::TaskRow;
use crate::store::exports::ExportRow;
use crate::targets::Target;
use crate::targets::sql::Which;

/// How long a download link works.
pub const EXPORT_DAYS: i64 = 14;

/// Wrong addresses typed on a download page before its link stops working.
pub const MAX_ADDRESS_CHECKS: i64 = 5;

/// The scrypt work factor (`log2 N`) of a sealed passphrase. Low on purpose: what it
/// guards is the link's token, 30 random characters, which no work factor needs to
/// stretch.
const SEAL_WORK_FACTOR: u8 = 10;

/// Seal a file's passphrase with the token of its download link (age, scrypt), as base64.
pub fn seal(passphrase: &str, token: &str) -> Result<String> {
    use base64::Engine;
    let mut r = age::scrypt::Recipient::new(age::secrecy::SecretString::from(token.to_owned()));
    r.set_work_factor(SEAL_WORK_FACTOR);
    let sealed = age::encrypt(&r, passphrase.as_bytes())
        .map_err(|e| Error::new(Code::Internal, format!("sealing a passphrase: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
}

/// The passphrase [`seal`] sealed with `token`.
pub fn unseal(sealed: &str, token: &str) -> Result<String> {
    use base64::Engine;
    let bad = |e: String| Error::new(Code::Store, format!("a sealed passphrase: {e}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed.trim())
        .map_err(|e| bad(e.to_string()))?;
    let mut id = age::scrypt::Identity::new(age::secrecy::SecretString::from(token.to_owned()));
    id.set_max_work_factor(SEAL_WORK_FACTOR);
    let plain = age::decrypt(&id, &bytes).map_err(|e| bad(e.to_string()))?;
    String::from_utf8(plain).map_err(|e| bad(e.to_string()))
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn random_text(groups: usize) -> String {
    use rand::Rng;
    const A: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";
    let mut rng = rand::rng();
    (0..groups)
        .map(|_| {
            (0..5)
                .map(|_| char::from(A[rng.random_range(0..A.len())]))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(Code::Io, format!("export {}: {e}", path.display()))
}

/// Run an export task: write the encrypted page, record it, and tell the subject.
pub async fn run(ctx: &Context, s: &Settings, task: &TaskRow, now: DateTime<Utc>) -> Result<Step> {
    let rid = task
        .request_id
        .as_deref()
        .ok_or_else(|| Error::new(Code::Internal, "an export task without a request"))?;
    let req = ctx.request(rid).await?;
    let body: TaskBody = serde_json::from_str(&task.body)?;
    let sys = ctx
        .policies
        .system(&task.system)
        .ok_or_else(|| {
            Error::new(
                Code::Policy,
                format!("system {} is not mapped", task.system),
            )
        })?
        .clone();
    // Each attempt writes a new file; one that died before recording it left only an
    // encrypted file no link points at.
    let id = crate::store::new_id();
    let dir = s
        .backup_dir
        .parent()
        .map(|p| p.join("exports"))
        .unwrap_or_else(|| PathBuf::from("exports"));
    crate::fsx::create_dir_private(&dir).map_err(|e| io(&dir, e))?;
    let path = dir.join(format!("{id}.html.age"));
    let tmp = dir.join(format!(".{id}.tmp"));
    let passphrase = random_text(5);
    let target = ctx.targets.get(&sys).await?.scoped();
    let tables = write_page(ctx, &sys, &body, &req, &target, &tmp, &passphrase, now).await?;
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    let token = random_text(6);
    let expires = now + Duration::days(EXPORT_DAYS);
    let row = ExportRow {
        id: id.clone(),
        request_id: req.id.clone(),
        task_id: task.id.clone(),
        path: path.display().to_string(),
        expires_at: expires,
        deleted_at: None,
        passphrase_sealed: Some(seal(&passphrase, &token)?),
        failed_checks: 0,
    };
    ctx.store
        .insert_export(&row, &hex::encode(Sha256::digest(token.as_bytes())), now)
        .await?;
    let mails = ctx.mail.to_subject(
        &req,
        crate::mail::vars::Message::ExportReady(crate::mail::vars::ExportReady {
            request_id: req.id.clone(),
            download_url: format!("{}/export/{token}", ctx.mail.public_url),
            expires: ctx.zone().time(expires),
        }),
        Vec::new(),
    )?;
    Ok(Step::Done(TaskResult {
        backup: None,
        tables,
        recheck: "export written; nothing changed".into(),
        retained_keys: Default::default(),
        mails,
    }))
}

#[allow(clippy::too_many_arguments)]
async fn write_page(
    ctx: &Context,
    sys: &System,
    body: &TaskBody,
    req: &crate::lifecycle::Request,
    target: &Target,
    tmp: &Path,
    passphrase: &str,
    now: DateTime<Utc>,
) -> Result<Vec<TableResult>> {
    let file = crate::fsx::create_private(tmp).map_err(|e| io(tmp, e))?;
    let enc = age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(
        passphrase.to_owned(),
    ));
    let mut w = enc
        .wrap_output(std::io::BufWriter::new(file))
        .map_err(|e| io(tmp, e))?;
    let mut out = Vec::new();
    let zh = req.locale == "zh-CN";
    let mut page = String::new();
    page.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>");
    page.push_str(if zh {
        "您的个人信息"
    } else {
        "Your personal data"
    });
    page.push_str("</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}</style></head><body>");
    page.push_str(&format!(
        "<h1>{}</h1><p>{} {} — {} {}</p>",
        if zh {
            "您的个人信息"
        } else {
            "Your personal data"
        },
        if zh { "请求" } else { "Request" },
        esc(&req.id),
        if zh { "导出时间" } else { "exported" },
        ctx.zone().time(now)
    ));
    page.push_str(&art15(ctx, sys, req.jurisdiction));
    w.write_all(page.as_bytes()).map_err(|e| io(tmp, e))?;
    let mut json_rows: Vec<serde_json::Value> = Vec::new();
    for e in &body.entries {
        let Some(table) = sys.table(&e.table) else {
            continue;
        };
        let catalog = target.columns(&table.name).await?;
        let key = column(&catalog, &table.name, &table.key)?;
        let cols: Vec<_> = table
            .columns
            .keys()
            .map(|c| column(&catalog, &table.name, c))
            .collect::<Result<Vec<_>>>()?;
        let mut html = format!(
            "<h2>{} · {}</h2><table><tr>",
            esc(&sys.name),
            esc(&table.name)
        );
        for (c, cat) in &table.columns {
            html.push_str(&format!(
                "<th>{}<br><small>{}</small></th>",
                esc(c),
                esc(cat)
            ));
        }
        html.push_str("</tr>");
        let names: Vec<String> = table.columns.keys().cloned().collect();
        let n = target
            .scan(
                sys,
                table,
                Which::Subject(&req.subject),
                &key.sql_type,
                &cols,
                |row| {
                    html.push_str("<tr>");
                    let mut obj = serde_json::Map::new();
                    for (name, v) in names.iter().zip(row.iter().skip(1)) {
                        html.push_str(&format!("<td>{}</td>", esc(v.as_deref().unwrap_or(""))));
                        obj.insert(name.clone(), json!(v));
                    }
                    html.push_str("</tr>");
                    json_rows.push(json!({"system": sys.name, "table": table.name, "values": obj}));
                    Ok(())
                },
            )
            .await?;
        html.push_str("</table>");
        w.write_all(html.as_bytes()).map_err(|e| io(tmp, e))?;
        out.push(TableResult {
            table: table.name.clone(),
            action: crate::policy::Action::Export,
            backed_up: 0,
            changed: 0,
            already_done: n,
            digest: None,
        });
    }
    let data = serde_json::to_string_pretty(
        &json!({"request": req.id, "exported_at": now, "rows": json_rows}),
    )?;
    let tail = format!(
        "<h2>JSON</h2><p>{}</p><pre id=\"data\">{}</pre></body></html>",
        if zh {
            "同样的数据,机器可读格式"
        } else {
            "The same data, machine-readable"
        },
        esc(&data)
    );
    w.write_all(tail.as_bytes()).map_err(|e| io(tmp, e))?;
    let buf = w.finish().map_err(|e| io(tmp, e))?;
    let f = buf.into_inner().map_err(|e| io(tmp, e.error()))?;
    f.sync_all().map_err(|e| io(tmp, e))?;
    Ok(out)
}

/// The information GDPR Art. 15(1) and PIPL Art. 44-45 say must accompany the data.
fn art15(ctx: &Context, sys: &System, j: Jurisdiction) -> String {
    let mut cats: Vec<&String> = sys.tables.iter().flat_map(|t| t.columns.values()).collect();
    cats.sort();
    cats.dedup();
    let mut s = String::from("<h2>What we hold, why, and for how long</h2><ul>");
    s.push_str(&format!(
        "<li><b>Purposes and source</b>: {} ({}).</li>",
        esc(sys
            .description
            .as_deref()
            .unwrap_or("the system named below")),
        esc(&sys.name)
    ));
    s.push_str("<li><b>Categories and how long they are kept</b>:<ul>");
    for c in cats {
        let line = match ctx.policies.resolve(c, RequestKind::Erasure, j) {
            Some(r) => match (r.period, &r.from) {
                (Some(p), Some(f)) => format!(
                    "kept {p} from {f}, then {}: {}",
                    r.then
                        .map(|t| format!("{t:?}").to_lowercase())
                        .unwrap_or_default(),
                    r.basis_text()
                ),
                _ => format!("erased on request ({}): {}", r.action, r.basis_text()),
            },
            None => "no retention rule".into(),
        };
        s.push_str(&format!("<li>{}: {}</li>", esc(c), esc(&line)));
    }
    s.push_str("</ul></li>");
    s.push_str("<li><b>Recipients</b>: none are recorded for this system.</li>");
    s.push_str("<li><b>Automated decisions</b>: none, including profiling.</li>");
    s.push_str(
        "<li><b>Your rights</b>: to have inaccurate data corrected, to have data erased, to restrict or object to \
         its processing, and to receive it in a portable form (GDPR Art. 16-21; PIPL Art. 44-47).</li>\
         <li><b>Complaints</b>: to a supervisory authority (GDPR Art. 77; PIPL Art. 65), and to a court \
         (GDPR Art. 79; PIPL Art. 50).</li></ul>",
    );
    s
}

/// Delete expired exports (the link stops working at expiry anyway).
pub async fn expire(ctx: &Context, now: DateTime<Utc>) -> Result<usize> {
    let mut n = 0;
    for e in ctx.store.expired_exports(now).await? {
        let _ = std::fs::remove_file(&e.path);
        ctx.store.export_deleted(&e.id, now).await?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_passphrase_opens_with_its_token_only() {
        let sealed = seal("abcde-fghij", "the-token").unwrap();
        assert!(!sealed.contains("abcde"));
        assert_eq!(unseal(&sealed, "the-token").unwrap(), "abcde-fghij");
        assert_eq!(unseal(&sealed, "another").unwrap_err().code, Code::Store);
        assert!(unseal("not base64!", "the-token").is_err());
    }
}
