//! The application layer: what every door (the CLI, the HTTP server, the demo) and the
//! tests and benchmarks work through. It loads and validates the policies and the holiday
//! calendar, opens the state store (creating it only where the caller says so), and makes
//! what a worker needs (the signing key, the mailer) — nothing else opens them, so no door
//! reaches into another.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::jobs::Settings;
use crate::lifecycle::{Context, HolidayCalendar};
use crate::policy::Policies;
use crate::store::{Open, Opened, Store};

/// An opened application: its configuration and the lifecycle's context.
pub struct App {
    pub config: Config,
    pub ctx: Context,
}

impl App {
    /// Open with a state store that must exist already (see [`Open`]).
    pub async fn open(config: Config) -> Result<App> {
        Ok(App::open_with(config, Open::Existing).await?.0)
    }

    /// Open, creating the state store when `open` allows it (`serve`, `demo`,
    /// `store init`); says whether it was created.
    pub async fn open_with(config: Config, open: Open) -> Result<(App, Opened)> {
        let dir = config.policies_dir();
        let policies = Policies::load(&dir)
            .map_err(|p| Error::from(p).context(format!("policy folder {}", dir.display())))?;
        let calendar = match &config.deadlines.calendar {
            Some(p) => HolidayCalendar::load(&config.path(p))?,
            None => HolidayCalendar::builtin()?,
        };
        let (store, opened) = open_store(&config, open).await?;
        let ctx = Context {
            mail: crate::lifecycle::notify::MailSettings::from_config(&config),
            store,
            policies,
            calendar,
            targets: crate::targets::Pools::new(&config.base_dir, config.targets.max_connections),
            intake: config.intake.clone(),
        };
        Ok((App { config, ctx }, opened))
    }

    /// What a worker needs besides the context: the receipt signing key (created on first
    /// use), the mailer, the backup folders. Read-only commands never make it.
    pub fn worker(&self) -> Result<Settings> {
        Settings::from_config(&self.config)
    }

    pub async fn close(&self) {
        self.ctx.close().await;
    }
}

/// The state store the configuration names, opened as `open` allows.
pub async fn open_store(config: &Config, open: Open) -> Result<(Store, Opened)> {
    let url = config.store_url()?;
    Store::open(&url, config.store.max_connections, open)
        .await
        .map_err(|e| e.context(format!("state store {}", crate::config::redact_url(&url))))
}
