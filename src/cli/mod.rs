//! The command line: one function per subcommand, no logic of its own.

pub mod output;
mod policy;
mod proof;
mod requests;
mod serve;
mod work;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::policy::Policies;
use crate::store::{Open, Opened};

/// quietus carries out GDPR and PIPL data-subject requests and employee exits, backs up
/// before it deletes, and proves what it erased.
#[derive(Debug, Parser)]
#[command(name = "quietus", version, about, long_about = None)]
pub struct Cli {
    /// The config file (default: $QUIETUS_CONFIG, else ./quietus.toml if present, else the
    /// embedded defaults).
    #[arg(long, global = true, env = "QUIETUS_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Who is acting, recorded in the request history (default: cli:$USER).
    #[arg(long, global = true, env = "QUIETUS_ACTOR")]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: the HTTP API and the inbox watcher.
    Serve {
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Set up a demo in DIR (config, example policies, demo CRM) and show it working.
    Demo {
        #[arg(long)]
        dir: PathBuf,
        /// Replace DIR if it is not empty.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Submit a ticket (a JSON file, or - for standard input); prints the request id.
    Submit {
        file: String,
        #[arg(long)]
        json: bool,
    },
    /// The requests, overdue first, then by days left.
    Queue {
        /// Only requests in this state (pending_review, approved, on_hold, ...).
        #[arg(long)]
        state: Option<String>,
        /// Only overdue requests.
        #[arg(long)]
        overdue: bool,
        #[arg(long)]
        json: bool,
    },
    /// One request: ticket, deadline, plan summary, history.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// What would happen for a request (a dry run: reads the target systems, changes nothing).
    Plan {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve requests whose plans are not blocked (one or several ids, in order; with
    /// several, one that cannot be approved is reported and the others still are).
    Approve {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse a request; the reason is sent to the subject.
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Put a legal hold on a request: nothing destructive happens until it is released.
    Hold {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Release a legal hold.
    Release {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Extend the response deadline once, with a reason sent to the subject.
    Extend {
        id: String,
        #[arg(long)]
        reason: String,
        /// How much longer ("2 months", "10 working days"); GDPR allows up to 2 months.
        #[arg(long, default_value = "2 months")]
        by: String,
    },
    /// Cancel a request.
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Execute what is due now (approved requests, their tasks, expired backups), once.
    Run {
        /// Start a retention sweep first (rows whose retention ran out, no ticket needed).
        #[arg(long)]
        sweep: bool,
        #[arg(long)]
        json: bool,
    },
    /// Put back what a request's tasks erased or overwrote, from its backups.
    Restore {
        id: String,
        /// Say what would be restored; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Why (recorded in the history and sent to the subject and the DPO); needed for a
        /// real restore.
        #[arg(long)]
        reason: Option<String>,
        /// Do not ask for confirmation on a terminal.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Retry a task that needs attention, with a fresh retry budget (after fixing its cause).
    Retry { task: String },
    /// Confirm a manual task (a system with no connector) as done.
    Confirm {
        task: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Check the target systems against the data maps: reachable, tables and columns
    /// present, every lookup column indexed. Exit 1 on an error.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Verify a receipt offline: signature, inclusion in the log, its checkpoint; with
    /// --checkpoint a later checkpoint's consistency; with --backup/--key every Merkle root;
    /// with --recheck the live systems again, for every changed table. Exit 0 when all
    /// holds, 1 with the reason otherwise.
    Verify {
        receipt: PathBuf,
        /// The public key (default: the one the config names; never one from the receipt).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// A checkpoint (e.g. a witness's copy) the receipt's log must be consistent with.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// A backup archive of the receipt, to recompute its Merkle roots.
        #[arg(long, requires = "key")]
        backup: Option<PathBuf>,
        /// The backup's key file.
        #[arg(long, requires = "backup")]
        key: Option<PathBuf>,
        /// Ask the live systems that nothing erased remains.
        #[arg(long)]
        recheck: bool,
        #[arg(long)]
        json: bool,
    },
    /// The transparency log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// The receipt signing key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The state store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Make an API token: prints the token once and the line for quietus.toml.
    Token {
        /// Who will hold it (recorded as the actor of what it does).
        #[arg(long)]
        name: String,
        /// submitter | hr | dpo | auditor | admin
        #[arg(long)]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Check every entry (each column) against its leaf hash, every stored checkpoint
    /// against the entries, and the log against the checkpoint file and the witnesses'
    /// copies (`proof.witnesses`): a log shorter than one was rolled back; entries with no
    /// checkpoint anywhere do not hold. Exit 1 on any difference.
    Verify {
        #[arg(long)]
        public_key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the signing key and its public key file.
    Init,
    /// Replace the signing key; the old one is kept so old receipts stay verifiable.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Create the state store that store.url names (a new SQLite file, or the tables in an
    /// empty PostgreSQL database); an existing store is left as it is. Only this, `serve`
    /// and `demo` create a store: every other command refuses one that does not exist.
    Init,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy folder (default: the configured one).
    Check {
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Parse the command line, run it, and turn errors into messages and exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before anything runs: a rehearsal's mistyped time must not become "now".
    if let Err(msg) = crate::clock::init() {
        eprintln!("error: {msg}");
        eprintln!("  (code: {})", Code::Config);
        return ExitCode::FAILURE;
    }
    if let Err(e) = crate::failpoints::init() {
        eprintln!("error: {}", e.message);
        eprintln!("  (code: {})", e.code);
        return ExitCode::FAILURE;
    }
    // The daemon reports what it does; one-shot commands only warn.
    init_tracing(if matches!(cli.command, Command::Serve { .. }) {
        "warn,quietus=info"
    } else {
        "warn"
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.message);
            eprintln!("  (code: {})", e.code);
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("QUIETUS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let actor = cli.actor.clone().unwrap_or_else(|| {
        format!(
            "cli:{}",
            std::env::var("USER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "operator".into())
        )
    });
    crate::text::printable("--actor (or QUIETUS_ACTOR)", &actor, false)?;
    match cli.command {
        Command::Policy {
            command: PolicyCommand::Check { dir, json },
        } => {
            let dir = match dir {
                Some(d) => d,
                None => Config::load(cli.config.as_deref())?.policies_dir(),
            };
            policy::check(&dir, json)
        }
        Command::Token { name, role } => policy::token(&name, &role),
        Command::Doctor { json } => {
            let config = Config::load(cli.config.as_deref())?;
            let dir = config.policies_dir();
            let policies = Policies::load(&dir)
                .map_err(|p| Error::from(p).context(format!("policy folder {}", dir.display())))?;
            let pools =
                crate::targets::Pools::new(&config.base_dir, config.targets.max_connections);
            let findings = crate::targets::doctor::check(&pools, &policies.systems).await;
            pools.close().await;
            if json {
                crate::outln!("{}", serde_json::to_string_pretty(&findings)?);
            } else {
                for f in &findings {
                    crate::outln!("{:<7} {:<8} {}", f.level, f.system, f.message);
                }
            }
            Ok(if findings.iter().any(|f| f.level == "error") {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Demo { dir, force, json } => crate::demo::run(&dir, force, json, &actor)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Serve { listen } => {
            let config = Config::load(cli.config.as_deref())?;
            let (app, opened) = App::open_with(config, Open::CreateIfMissing).await?;
            if opened == Opened::Created {
                tracing::warn!(
                    store = %crate::config::redact_url(&app.config.store_url()?),
                    "created a new, empty state store"
                );
            }
            serve::run(app, listen).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Store {
            command: StoreCommand::Init,
        } => {
            let config = Config::load(cli.config.as_deref())?;
            let shown = crate::config::redact_url(&config.store_url()?);
            let (store, opened) = crate::app::open_store(&config, Open::CreateIfMissing).await?;
            store.close().await;
            match opened {
                Opened::Created => crate::outln!("created the state store {shown}"),
                Opened::Existing => {
                    crate::outln!(
                        "the state store {shown} already exists (its migrations are applied)"
                    )
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        cmd @ (Command::Verify { .. } | Command::Log { .. } | Command::Keys { .. }) => {
            let config = Config::load(cli.config.as_deref())?;
            proof::run(&config, cmd).await
        }
        cmd @ (Command::Run { .. }
        | Command::Restore { .. }
        | Command::Confirm { .. }
        | Command::Retry { .. }) => {
            let app = App::open(Config::load(cli.config.as_deref())?).await?;
            let r = match app.worker() {
                Ok(settings) => work::run(&app.ctx, &settings, cmd, &actor).await,
                Err(e) => Err(e),
            };
            app.close().await;
            r
        }
        other => {
            let app = App::open(Config::load(cli.config.as_deref())?).await?;
            let r = requests::run(&app.ctx, other, &actor).await;
            app.close().await;
            r
        }
    }
}

pub(crate) fn usage(msg: impl Into<String>) -> Error {
    Error::new(Code::Usage, msg)
}
