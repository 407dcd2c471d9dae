//! Configuration: `quietus.toml`, environment overrides, embedded defaults.
//!
//! Where the config comes from: `--config PATH`, else `$QUIETUS_CONFIG`, else
//! `./quietus.toml` if present, else the embedded defaults (SQLite state store and outbox
//! under `./var/`, policies from `./policies/`). Every key can be overridden from the
//! environment as `QUIETUS_<SECTION>__<KEY>` (for example `QUIETUS_STORE__URL`). Unknown
//! keys are errors. Relative paths are relative to the config file's folder (the working
//! directory for the embedded defaults), so a config works from any directory. Every key
//! is documented once, in `deploy/quietus.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::error::{Code, Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreConfig,
    pub targets: TargetsConfig,
    pub policies: PoliciesConfig,
    pub inbox: InboxConfig,
    pub intake: IntakeConfig,
    pub server: ServerConfig,
    pub api: ApiConfig,
    pub deadlines: DeadlinesConfig,
    pub backup: BackupConfig,
    pub jobs: JobsConfig,
    pub schedule: ScheduleConfig,
    pub mail: MailConfig,
    pub proof: ProofConfig,
    /// The folder relative paths are resolved against (not a key: set on load).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file the config came from, if any (not a key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://...`. A secret when it carries a password: prefer
    /// `QUIETUS_STORE__URL` or `url_file`.
    pub url: String,
    /// A file whose first line is the URL (wins over `url`).
    pub url_file: Option<PathBuf>,
    /// Connections in the pool.
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://var/quietus.db".into(),
            url_file: None,
            max_connections: 8,
        }
    }
}

/// The target systems (the data maps name them): how they are connected to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetsConfig {
    /// Connections in each system's pool (one pool per system for the process's life).
    pub max_connections: u32,
}

impl Default for TargetsConfig {
    fn default() -> Self {
        TargetsConfig {
            max_connections: crate::targets::pools::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Folder of retention files (`*.toml`) and data maps (`systems/*.toml`).
    pub dir: PathBuf,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        PoliciesConfig {
            dir: "policies".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Folder watched by `quietus serve` for `*.json` tickets and `*.csv` exit lists.
    /// Processed files move to `done/` or `rejected/` inside it.
    pub dir: PathBuf,
    /// Seconds between two looks at the inbox.
    pub poll_seconds: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            dir: "var/inbox".into(),
            poll_seconds: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (tickets, CSV lists).
    pub max_body_bytes: usize,
    /// The address people reach quietus at (links in emails), e.g. https://privacy.corp.example.
    pub public_url: String,
    /// Seconds a connection has to send a whole request head, counted from when it opens
    /// or from its last answer: silent, idle and slow-header connections are closed then.
    pub header_timeout_seconds: u64,
    /// Seconds a request has to send its whole body; then 408 timeout.
    pub body_timeout_seconds: u64,
    /// Connections served at once; more wait in the kernel's queue until one closes.
    pub max_connections: usize,
    /// Verification attempts (`/api/v1/verify`, `/verify`) one client address may make
    /// per minute; more get 429 rate_limited.
    pub verify_attempts_per_minute: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8750)),
            max_body_bytes: 64 * 1024,
            public_url: "http://127.0.0.1:8750".into(),
            header_timeout_seconds: 10,
            body_timeout_seconds: 30,
            max_connections: 256,
            verify_attempts_per_minute: 10,
        }
    }
}

/// What a bearer token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Files requests that still need identity verification.
    Submitter,
    /// HR systems: exit tickets, trusted identity.
    Hr,
    /// Reviews and decides.
    Dpo,
    /// Reads everything, changes nothing.
    Auditor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submitter => "submitter",
            Role::Hr => "hr",
            Role::Dpo => "dpo",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer tokens, stored as SHA-256 hashes (`quietus token` makes one).
    pub tokens: Vec<TokenConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it ("hr-system"); recorded as the actor of what it does.
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// An `auditor` token sees identities masked; with `unmask = true` it may ask for them
    /// unmasked (`GET /api/v1/requests/ID?unmask=true`), and each such view is recorded in
    /// the request's history with the token's name. Other roles see identities anyway.
    #[serde(default)]
    pub unmask: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadlinesConfig {
    /// A holiday calendar file replacing the built-in mainland-China calendar.
    pub calendar: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    /// How long before its receipt an exit's date may lie; an older one is refused as
    /// implausible (a typo such as 2002 for 2026).
    pub exit_date_past: crate::policy::Period,
    /// How long after its receipt an exit's date may lie.
    pub exit_date_future: crate::policy::Period,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            exit_date_past: crate::policy::Period::new(10, crate::policy::Unit::Years),
            exit_date_future: crate::policy::Period::new(1, crate::policy::Unit::Years),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Encrypted archives (`ID.jsonl.zst.age`).
    pub dir: PathBuf,
    /// One age key per archive (`ID.key`); destroying one crypto-shreds its archive.
    /// Keep it on other storage than `dir`, and out of the backups of the machine.
    pub keys_dir: PathBuf,
    /// How long a backup lives; then it is crypto-shredded and can no longer restore.
    pub keep: crate::policy::Period,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: "var/backups".into(),
            keys_dir: "var/backup-keys".into(),
            keep: crate::policy::Period::new(90, crate::policy::Unit::Days),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Seconds a worker holds a task before another may take it over.
    pub lease_seconds: u64,
    /// Attempts before a task (and its request) needs attention.
    pub max_attempts: i64,
    /// Rows changed per statement and transaction. Each batch is a commit on the system
    /// and a progress record in the store (about 2.5 ms on SQLite): 2 000 rows hold a
    /// batch's locks for a few milliseconds and make those fixed costs small per row.
    pub batch_size: usize,
    /// Seconds between two looks for due work (`serve`).
    pub poll_seconds: u64,
    /// Tasks a worker runs at once (each on its own connections to its system).
    pub parallel: usize,
    /// Where the workers of this host hold their presence files (locked while they run):
    /// a worker that died is known at once, and its leases are released without waiting
    /// them out. Local storage, one per host.
    pub workers_dir: PathBuf,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            lease_seconds: 300,
            max_attempts: 5,
            batch_size: 2000,
            poll_seconds: 5,
            parallel: 4,
            workers_dir: "var/workers".into(),
        }
    }
}

/// Cron expressions (with seconds: `sec min hour day month weekday`), in UTC. Blank
/// disables a schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// When approved destructive tasks may run against the target systems: the times this
    /// expression matches (e.g. `* * 1-4 * * *` is 01:00 to 04:59). Blank: any time.
    /// Disabling accounts is not held back: it happens on the exit date itself.
    pub window: String,
    /// The retention sweep: rows whose retention ran out are erased with no ticket.
    pub retention_sweep: String,
    /// Crypto-shredding of expired backups.
    pub backup_expiry: String,
    /// Deadline reminders for the DPO.
    pub reminders: String,
    /// Whether a daemon that starts fires, once, the latest tick of the past day that no
    /// instance fired (one missed while quietus was not running). Off: only ticks after
    /// the start fire.
    pub catch_up: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            window: String::new(),
            retention_sweep: "0 0 3 * * *".into(),
            backup_expiry: "0 30 3 * * *".into(),
            reminders: "0 0 9 * * *".into(),
            catch_up: false,
        }
    }
}

/// The schedules that tick (the execution window is not one: it is open or closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ScheduleName {
    /// Erase rows whose retention ran out.
    RetentionSweep,
    /// Crypto-shred expired backups.
    BackupExpiry,
    /// Remind the DPO of deadlines.
    Reminders,
}

impl ScheduleName {
    pub const ALL: [ScheduleName; 3] = [
        ScheduleName::RetentionSweep,
        ScheduleName::BackupExpiry,
        ScheduleName::Reminders,
    ];

    /// The config key, and the name in the state store's `schedule_ticks`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleName::RetentionSweep => "retention_sweep",
            ScheduleName::BackupExpiry => "backup_expiry",
            ScheduleName::Reminders => "reminders",
        }
    }

    /// Its cron expression in the config (blank: off).
    pub fn expr(self, c: &ScheduleConfig) -> &str {
        match self {
            ScheduleName::RetentionSweep => &c.retention_sweep,
            ScheduleName::BackupExpiry => &c.backup_expiry,
            ScheduleName::Reminders => &c.reminders,
        }
    }
}

impl std::fmt::Display for ScheduleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How mail leaves: `.eml` files in a folder (default) or SMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailTransportKind {
    /// One `ID.eml` file per message in `outbox_dir`.
    File,
    /// An SMTP relay (`[mail.smtp]`).
    Smtp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// `file` (default: `.eml` files in `outbox_dir`) or `smtp`.
    pub transport: MailTransportKind,
    /// Where the file transport writes `ID.eml`.
    pub outbox_dir: PathBuf,
    /// The `From` of every message (`Name <address>`).
    pub from: String,
    /// The right-hand side of `Message-ID`s (and the SMTP `EHLO` name); blank: the domain
    /// of `from`.
    pub domain: Option<String>,
    /// A folder of operator templates (`LOCALE/KIND.subject.txt`, `.txt`, `.html`) that
    /// win over the built-in ones of the same name.
    pub templates_dir: Option<PathBuf>,
    /// Attempts (with exponential backoff) before a message is marked `failed`.
    pub max_attempts: i64,
    /// The DPO's address: deadline reminders and failure alerts. None: not sent.
    pub dpo: Option<String>,
    pub smtp: SmtpConfig,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            transport: MailTransportKind::File,
            outbox_dir: "var/outbox".into(),
            from: "quietus <privacy@localhost>".into(),
            domain: None,
            templates_dir: None,
            max_attempts: 10,
            dpo: None,
            smtp: SmtpConfig::default(),
        }
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text (a relay on the same host or a test server only).
    None,
    /// STARTTLS, required (port 587 by default).
    Starttls,
    /// Implicit TLS from the first byte (port 465 by default).
    Tls,
}

/// A secret from the configuration: never shown by `Debug`, never serialized back.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// The relay's host name (also the name its TLS certificate must carry).
    pub host: String,
    /// The relay's port; blank: 25 (`none`), 587 (`starttls`) or 465 (`tls`).
    pub port: Option<u16>,
    /// `none`, `starttls` or `tls`.
    pub tls: SmtpTls,
    /// The login, if the relay wants one.
    pub username: Option<String>,
    /// A file whose first line is the password (wins over `password`).
    pub password_file: Option<PathBuf>,
    /// The password: a secret, set it with `QUIETUS_MAIL__SMTP__PASSWORD`, not in the file.
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
    /// Seconds to wait for the relay (connect and each command).
    pub timeout_seconds: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            host: "localhost".into(),
            port: None,
            tls: SmtpTls::Starttls,
            username: None,
            password_file: None,
            password: None,
            timeout_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProofConfig {
    /// The log's name in checkpoints and the signing key's name (C2SP signed-note origin).
    pub origin: String,
    /// The receipt and checkpoint signing key (a secret; `quietus keys init` makes it,
    /// and quietus makes one on first use if it is missing).
    pub key_file: PathBuf,
    /// The public key that verifies receipts and checkpoints (give it to anyone).
    pub public_key_file: PathBuf,
    /// Receipt files (`REQUEST-RECEIPT.json`).
    pub receipts_dir: PathBuf,
    /// The latest signed checkpoint, rewritten after each append: copy it to a witness.
    pub checkpoint_file: PathBuf,
    /// Witnesses' copies of a checkpoint (files, e.g. a mounted witness's folder): `log
    /// verify` requires each to exist once the log has entries, to be signed by the key,
    /// and the log to be consistent with it.
    pub witnesses: Vec<PathBuf>,
}

impl Default for ProofConfig {
    fn default() -> Self {
        ProofConfig {
            origin: "quietus/log".into(),
            key_file: "var/keys/receipts.key".into(),
            public_key_file: "var/keys/receipts.pub".into(),
            receipts_dir: "var/receipts".into(),
            checkpoint_file: "var/log/checkpoint".into(),
            witnesses: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store: StoreConfig::default(),
            targets: TargetsConfig::default(),
            policies: PoliciesConfig::default(),
            inbox: InboxConfig::default(),
            intake: IntakeConfig::default(),
            server: ServerConfig::default(),
            api: ApiConfig::default(),
            deadlines: DeadlinesConfig::default(),
            backup: BackupConfig::default(),
            jobs: JobsConfig::default(),
            schedule: ScheduleConfig::default(),
            mail: MailConfig::default(),
            proof: ProofConfig::default(),
            base_dir: PathBuf::from("."),
            source: None,
        }
    }
}

/// The config file's text (read within its limit), as figment's TOML source named by its
/// path: a parse error says which file, as reading the file through figment would.
struct ConfigFile {
    path: PathBuf,
    data: figment::providers::Data<Toml>,
}

impl figment::Provider for ConfigFile {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::from("TOML file", self.path.as_path())
    }

    fn data(
        &self,
    ) -> std::result::Result<
        figment::value::Map<figment::Profile, figment::value::Dict>,
        figment::Error,
    > {
        self.data.data()
    }
}

impl Config {
    /// Load the config: explicit path, `$QUIETUS_CONFIG`, `./quietus.toml`, or the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let from_env = std::env::var_os("QUIETUS_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let path = match (explicit, from_env) {
            (Some(p), _) => Some(p.to_path_buf()),
            (None, Some(p)) => Some(p),
            (None, None) => Some(PathBuf::from("quietus.toml")).filter(|p| p.is_file()),
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = &path {
            if !p.is_file() {
                return Err(Error::new(
                    Code::Config,
                    format!("config file {} does not exist", p.display()),
                ));
            }
            // Read here, within the limit (a config file is never gigabytes; a device or
            // a huge file is refused, not read into memory), then parsed by figment.
            let text = crate::fsx::read_text_limited(p, crate::fsx::limit::TEXT)
                .map_err(|e| Error::new(e.code, format!("config file {}", e.message)))?;
            figment = figment.merge(ConfigFile {
                path: p.clone(),
                data: Toml::string(&text),
            });
        }
        figment = figment.merge(
            Env::prefixed("QUIETUS_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let mut config: Config = figment.extract().map_err(|e| {
            let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            Error::new(
                Code::Config,
                format!("invalid configuration: {}", msgs.join("; ")),
            )
        })?;
        let base = match &path {
            Some(p) => p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| ".".into()),
            None => PathBuf::from("."),
        };
        config.base_dir = std::path::absolute(&base).unwrap_or(base);
        config.source = path;
        config.check_bounds()?;
        Ok(config)
    }

    /// Numbers out of their range are errors, never quietly replaced by another value.
    fn check_bounds(&self) -> Result<()> {
        let bounds: [(&str, i128, i128, i128); 12] = [
            (
                "server.header_timeout_seconds",
                self.server.header_timeout_seconds.into(),
                1,
                3_600,
            ),
            (
                "server.body_timeout_seconds",
                self.server.body_timeout_seconds.into(),
                1,
                3_600,
            ),
            (
                "server.max_connections",
                i128::try_from(self.server.max_connections).unwrap_or(i128::MAX),
                1,
                100_000,
            ),
            (
                "server.verify_attempts_per_minute",
                self.server.verify_attempts_per_minute.into(),
                1,
                100_000,
            ),
            (
                "targets.max_connections",
                self.targets.max_connections.into(),
                1,
                1_000,
            ),
            // A lease is renewed every third of it: shorter ones are taken over mid-task.
            (
                "jobs.lease_seconds",
                self.jobs.lease_seconds.into(),
                10,
                86_400,
            ),
            ("jobs.max_attempts", self.jobs.max_attempts.into(), 1, 1_000),
            (
                "jobs.batch_size",
                i128::try_from(self.jobs.batch_size).unwrap_or(i128::MAX),
                1,
                5_000,
            ),
            (
                "jobs.poll_seconds",
                self.jobs.poll_seconds.into(),
                1,
                86_400,
            ),
            (
                "jobs.parallel",
                i128::try_from(self.jobs.parallel).unwrap_or(i128::MAX),
                1,
                64,
            ),
            (
                "inbox.poll_seconds",
                self.inbox.poll_seconds.into(),
                1,
                86_400,
            ),
            ("mail.max_attempts", self.mail.max_attempts.into(), 1, 1_000),
        ];
        let wrong: Vec<String> = bounds
            .iter()
            .filter(|(_, v, lo, hi)| v < lo || v > hi)
            .map(|(k, v, lo, hi)| format!("{k} = {v}: must be from {lo} to {hi}"))
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                Code::Config,
                format!("invalid configuration: {}", wrong.join("; ")),
            ))
        }
    }

    /// A config for a folder (the demo's): paths relative to `dir`.
    pub fn for_dir(dir: &Path) -> Config {
        Config {
            base_dir: dir.to_path_buf(),
            ..Config::default()
        }
    }

    /// A path from the config, resolved against the config's folder.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.path(&self.policies.dir)
    }

    pub fn backup_dirs(&self) -> (PathBuf, PathBuf) {
        (
            self.path(&self.backup.dir),
            self.path(&self.backup.keys_dir),
        )
    }

    pub fn workers_dir(&self) -> PathBuf {
        self.path(&self.jobs.workers_dir)
    }

    pub fn inbox_dir(&self) -> PathBuf {
        self.path(&self.inbox.dir)
    }

    /// Where the file transport writes `.eml` files.
    pub fn outbox_dir(&self) -> PathBuf {
        self.path(&self.mail.outbox_dir)
    }

    /// The operator's mail templates folder, if one is configured.
    pub fn mail_templates_dir(&self) -> Option<PathBuf> {
        self.mail.templates_dir.as_deref().map(|p| self.path(p))
    }

    /// The state store URL, with a relative SQLite path made absolute.
    pub fn store_url(&self) -> Result<String> {
        let url = match &self.store.url_file {
            Some(f) => {
                let f = self.path(f);
                let text =
                    crate::fsx::read_text_limited(&f, crate::fsx::limit::TEXT).map_err(|e| {
                        Error::new(Code::Config, format!("store.url_file {}", e.message))
                    })?;
                text.lines().next().unwrap_or("").trim().to_owned()
            }
            None => self.store.url.clone(),
        };
        Ok(resolve_sqlite_url(&url, &self.base_dir))
    }
}

/// Make the path of a `sqlite:` URL absolute against `base`; other URLs unchanged.
pub fn resolve_sqlite_url(url: &str, base: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_owned();
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path == ":memory:" || Path::new(path).is_absolute() {
        return url.to_owned();
    }
    let abs = base.join(path);
    match query {
        Some(q) => format!("sqlite://{}?{q}", abs.display()),
        None => format!("sqlite://{}", abs.display()),
    }
}

/// Hide the password of a URL for display.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
    {
        let user = userinfo.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_config_loads_and_numbers_out_of_range_are_refused() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/quietus.toml");
        let c = Config::load(Some(&deploy)).unwrap();
        assert_eq!(c.jobs.workers_dir, PathBuf::from("var/workers"));
        assert!(!c.schedule.catch_up);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("quietus.toml");
        std::fs::write(&f, "[jobs]\nlease_seconds = 3\nbatch_size = 0\n").unwrap();
        let e = Config::load(Some(&f)).unwrap_err();
        assert_eq!(e.code, Code::Config);
        assert!(
            e.message
                .contains("jobs.lease_seconds = 3: must be from 10 to 86400")
                && e.message.contains("jobs.batch_size = 0"),
            "{}",
            e.message
        );
    }

    #[test]
    fn sqlite_paths_resolve_against_the_config_folder() {
        let base = Path::new("/srv/q");
        assert_eq!(
            resolve_sqlite_url("sqlite://var/q.db", base),
            "sqlite:///srv/q/var/q.db"
        );
        assert_eq!(
            resolve_sqlite_url("sqlite:///abs.db", base),
            "sqlite:///abs.db"
        );
        assert_eq!(
            resolve_sqlite_url("postgres://h/db", base),
            "postgres://h/db"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
