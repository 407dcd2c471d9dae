//! Where messages go: `.eml` files in a folder, or an SMTP relay.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::message::build_message;
use crate::config::{Config, MailTransportKind, SmtpConfig, SmtpTls};
use crate::error::{Code, Error, Result};
use crate::store::outbox::OutboxRow;

/// A way out for messages.
pub enum Transport {
    /// One `ID.eml` file per message in `dir`, written under a temporary name, synced and
    /// renamed; a message whose file already exists counts as sent (exactly once by name).
    File { dir: PathBuf },
    /// An SMTP relay.
    Smtp {
        relay: AsyncSmtpTransport<Tokio1Executor>,
        /// `host:port`, for messages (never the credentials).
        server: String,
    },
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::File { dir } => f.debug_struct("File").field("dir", dir).finish(),
            Transport::Smtp { server, .. } => {
                f.debug_struct("Smtp").field("server", server).finish()
            }
        }
    }
}

impl Transport {
    /// An SMTP transport from `[mail.smtp]`, with its password (a secret, kept only inside
    /// the transport's credentials) and the name to greet the relay with.
    pub fn smtp(cfg: &SmtpConfig, password: Option<String>, hello_name: &str) -> Result<Transport> {
        let host = cfg.host.trim();
        if host.is_empty() {
            return Err(Error::new(Code::Config, "mail.smtp.host is empty"));
        }
        let (tls, default_port) = match cfg.tls {
            SmtpTls::None => (Tls::None, 25),
            SmtpTls::Starttls => (Tls::Required(tls_parameters(host)?), 587),
            SmtpTls::Tls => (Tls::Wrapper(tls_parameters(host)?), 465),
        };
        let port = cfg.port.unwrap_or(default_port);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .hello_name(ClientId::Domain(hello_name.to_owned()))
            .timeout(Some(Duration::from_secs(cfg.timeout_seconds.max(1))));
        match (&cfg.username, password) {
            (Some(user), Some(pass)) => {
                builder = builder.credentials(Credentials::new(user.clone(), pass));
            }
            (Some(_), None) => {
                return Err(Error::new(
                    Code::Config,
                    "mail.smtp.username is set but no password is given \
                     (mail.smtp.password_file or QUIETUS_MAIL__SMTP__PASSWORD)",
                ));
            }
            (None, _) => {}
        }
        Ok(Transport::Smtp {
            relay: builder.build(),
            server: format!("{host}:{port}"),
        })
    }
}

fn tls_parameters(host: &str) -> Result<TlsParameters> {
    TlsParameters::new(host.to_owned()).map_err(|e| {
        Error::new(
            Code::Config,
            format!("mail.smtp TLS set-up for {host}: {e}"),
        )
    })
}

/// What a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The transport accepted the message.
    Sent,
    /// The file transport found the message's file already written (an earlier attempt
    /// got that far): it counts as sent, and is not written twice.
    AlreadyThere,
}

/// Why a delivery failed. The message names no address (the relay's answer is scrubbed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    pub message: String,
    /// Retrying cannot help (a bad address, a relay's 5xx answer).
    pub permanent: bool,
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Replace anything that looks like an email address by `[address]`: every word with an
/// `@` or a `"`, where a word runs on through spaces inside double quotes (the quoted
/// local part of `"john doe"@example.com` is one word).
fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let (mut quoted, mut escaped) = (false, false);
    let flush = |word: &mut String, out: &mut String| {
        if word.contains(['@', '"']) {
            out.push_str("[address]");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() && !quoted {
            flush(&mut word, &mut out);
            out.push(c);
            continue;
        }
        word.push(c);
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => {}
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A transport with the sender's identity: what `send_due` needs.
#[derive(Debug)]
pub struct Mailer {
    pub transport: Transport,
    /// `From` of every message.
    pub from: Mailbox,
    /// The right-hand side of `Message-ID`s.
    pub domain: String,
}

impl Mailer {
    /// A mailer sending as `from` (`Name <address>`); `domain` defaults to the domain of
    /// `from`.
    pub fn new(transport: Transport, from: &str, domain: Option<&str>) -> Result<Mailer> {
        let from: Mailbox = from.parse().map_err(|e| {
            Error::new(
                Code::Config,
                format!("mail.from is not a valid mailbox: {e}"),
            )
        })?;
        let domain = domain
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| from.email.domain().to_owned());
        if domain.is_empty()
            || domain.contains(['<', '>', '@'])
            || domain.contains(char::is_whitespace)
        {
            return Err(Error::new(
                Code::Config,
                format!("mail.domain {domain:?} is not a domain"),
            ));
        }
        Ok(Mailer {
            transport,
            from,
            domain,
        })
    }

    /// The mailer that the configuration describes (`[mail]`). The SMTP password comes
    /// from `mail.smtp.password_file`, else `mail.smtp.password` (set it from the
    /// environment: `QUIETUS_MAIL__SMTP__PASSWORD`).
    pub fn from_config(config: &Config) -> Result<Mailer> {
        let m = &config.mail;
        let hello = match m.domain.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() => d.to_owned(),
            _ => m
                .from
                .parse::<Mailbox>()
                .map(|b| b.email.domain().to_owned())
                .unwrap_or_else(|_| "localhost".to_owned()),
        };
        let transport = match m.transport {
            MailTransportKind::File => Transport::File {
                dir: config.outbox_dir(),
            },
            MailTransportKind::Smtp => {
                let password = match &m.smtp.password_file {
                    Some(f) => {
                        let f = config.path(f);
                        let text = crate::fsx::read_text_limited(&f, crate::fsx::limit::KEY)
                            .map_err(|e| {
                                Error::new(e.code, format!("mail.smtp.password_file {}", e.message))
                            })?;
                        Some(text.lines().next().unwrap_or("").to_owned())
                    }
                    None => m.smtp.password.as_ref().map(|s| s.0.clone()),
                };
                Transport::smtp(&m.smtp, password, &hello)?
            }
        };
        Mailer::new(transport, &m.from, m.domain.as_deref())
    }

    /// The MIME message of an outbox entry, dated `now`.
    pub fn message(&self, row: &OutboxRow, now: DateTime<Utc>) -> Result<Message> {
        build_message(row, &self.from, &self.domain, now)
    }

    /// Hand one message to the transport.
    pub async fn deliver(
        &self,
        row: &OutboxRow,
        now: DateTime<Utc>,
    ) -> std::result::Result<Delivery, DeliveryError> {
        let message = self.message(row, now).map_err(|e| DeliveryError {
            message: scrub(&e.message),
            permanent: true,
        })?;
        match &self.transport {
            Transport::File { dir } => {
                let dir = dir.clone();
                let id = row.id.clone();
                let bytes = message.formatted();
                tokio::task::spawn_blocking(move || write_eml(&dir, &id, &bytes))
                    .await
                    .map_err(|e| DeliveryError {
                        message: format!("writing the .eml file was interrupted: {e}"),
                        permanent: false,
                    })?
                    .map_err(|e| DeliveryError {
                        permanent: e.code == Code::Usage,
                        message: e.message,
                    })
            }
            Transport::Smtp { relay, server } => match relay.send(message).await {
                Ok(_) => Ok(Delivery::Sent),
                Err(e) => Err(DeliveryError {
                    message: scrub(&format!("SMTP {server}: {e}")),
                    permanent: e.is_permanent(),
                }),
            },
        }
    }
}

/// Write `DIR/ID.eml` exactly once: a temporary file, synced, renamed into place, and the
/// folder synced. An existing `ID.eml` means an earlier attempt wrote it.
fn write_eml(dir: &Path, id: &str, bytes: &[u8]) -> Result<Delivery> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::new(
            Code::Usage,
            format!("outbox id {id:?} cannot name a file"),
        ));
    }
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Error::new(Code::Io, format!("{what} {}: {e}", p.display()))
    };
    crate::fsx::create_dir_private(dir).map_err(|e| io("cannot create", dir, e))?;
    let path = dir.join(format!("{id}.eml"));
    if path.exists() {
        return Ok(Delivery::AlreadyThere);
    }
    let tmp = dir.join(format!(".{id}.eml.tmp"));
    {
        let mut f = crate::fsx::create_private(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| io("cannot write", &tmp, e))?;
        f.sync_all().map_err(|e| io("cannot sync", &tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io("cannot rename into", &path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Make the rename durable; not every platform can sync a folder.
        let _ = d.sync_all();
    }
    Ok(Delivery::Sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_scrubbed() {
        assert_eq!(
            scrub("550 5.1.1 <a.b@example.com>: Recipient rejected"),
            "550 5.1.1 [address] Recipient rejected"
        );
        assert_eq!(scrub("connection refused"), "connection refused");
        // Quoted local parts hold spaces (and escaped quotes): none of it survives.
        assert_eq!(
            scrub("550 5.1.1 <\"john q. doe\"@example.com>: Recipient rejected"),
            "550 5.1.1 [address] Recipient rejected"
        );
        assert_eq!(
            scrub("550 <\"a \\\" b\"@example.com> unknown"),
            "550 [address] unknown"
        );
    }

    #[tokio::test]
    async fn smtp_transports_build_for_every_tls_mode() {
        for tls in [SmtpTls::None, SmtpTls::Starttls, SmtpTls::Tls] {
            let cfg = SmtpConfig {
                host: "mail.example.com".into(),
                tls,
                username: Some("quietus".into()),
                ..SmtpConfig::default()
            };
            let t = Transport::smtp(&cfg, Some("secret-pw".into()), "example.com").unwrap();
            let shown = format!("{t:?}");
            let port = match tls {
                SmtpTls::None => 25,
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
            };
            assert!(
                shown.contains(&format!("mail.example.com:{port}")),
                "{shown}"
            );
            assert!(!shown.contains("secret-pw"));
        }
        let no_password = SmtpConfig {
            username: Some("quietus".into()),
            ..SmtpConfig::default()
        };
        assert_eq!(
            Transport::smtp(&no_password, None, "x").unwrap_err().code,
            Code::Config
        );
    }

    #[test]
    fn the_password_never_shows() {
        let mut config = Config::default();
        config.mail.smtp.password = Some(crate::config::Secret("secret-pw".into()));
        assert!(!format!("{config:?}").contains("secret-pw"));
        assert!(
            !serde_json::to_string(&config)
                .unwrap()
                .contains("secret-pw")
        );
    }

    #[test]
    fn mailers_take_the_domain_of_from() {
        let t = || Transport::File { dir: "x".into() };
        let m = Mailer::new(t(), "Privacy <privacy@corp.example>", None).unwrap();
        assert_eq!(m.domain, "corp.example");
        let m = Mailer::new(t(), "privacy@corp.example", Some("mail.corp.example")).unwrap();
        assert_eq!(m.domain, "mail.corp.example");
        assert!(Mailer::new(t(), "not a mailbox", None).is_err());
        assert!(Mailer::new(t(), "a@b.example", Some("x y")).is_err());
        let m = Mailer::from_config(&Config::default()).unwrap();
        assert_eq!(m.domain, "localhost");
        assert!(matches!(m.transport, Transport::File { .. }));
    }

    #[test]
    fn eml_files_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            write_eml(dir.path(), "abc", b"one").unwrap(),
            Delivery::Sent
        );
        assert_eq!(
            write_eml(dir.path(), "abc", b"two").unwrap(),
            Delivery::AlreadyThere
        );
        assert_eq!(
            crate::fsx::read_limited(&dir.path().join("abc.eml"), u64::MAX).unwrap(),
            b"one".to_vec()
        );
        assert!(write_eml(dir.path(), "../x", b"x").is_err());
    }
}
