//! One connection pool per target system for the process's life.
//!
//! Every door (a CLI command, `serve`, `demo`) and every test reaches a target system
//! through the [`Pools`] of its [`crate::lifecycle::Context`]: the first use of a system
//! connects (bounded by `[targets] max_connections`), every later one reuses that pool.
//! Opening a pool per survey and per task cost two fresh connections each time (a
//! PostgreSQL TLS handshake is the larger part of a small erasure).
//!
//! A system that cannot be reached is not remembered: the use gets the connector's error
//! (naming the system) and the next use tries again. A pool is keyed by the system's name
//! and its URL (after `${VAR}` expansion): a system whose URL changed gets a new pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, OnceCell};

use super::{Target, expand_env};
use crate::error::{Code, Error, Result};
use crate::policy::System;

/// Connections in each system's pool when the configuration does not say.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4;

/// The target pools of a process; cheap to clone (clones share the pools).
#[derive(Clone)]
pub struct Pools {
    inner: Arc<Inner>,
}

struct Inner {
    base_dir: PathBuf,
    max_connections: u32,
    /// By system name: the URL its pool was opened with, and the pool once connected.
    slots: Mutex<HashMap<String, Slot>>,
    /// Pools opened so far (a reused pool is not counted again).
    opened: AtomicUsize,
}

struct Slot {
    url: String,
    target: Arc<OnceCell<Target>>,
}

impl std::fmt::Debug for Pools {
    // URLs can carry passwords: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("base_dir", &self.inner.base_dir)
            .field("max_connections", &self.inner.max_connections)
            .field("opened", &self.opened())
            .finish_non_exhaustive()
    }
}

impl Pools {
    /// No pool open yet. Relative SQLite paths resolve against `base_dir` (the config
    /// file's folder); each pool holds at most `max_connections` (at least one).
    pub fn new(base_dir: &Path, max_connections: u32) -> Pools {
        Pools {
            inner: Arc::new(Inner {
                base_dir: base_dir.to_path_buf(),
                max_connections: max_connections.max(1),
                slots: Mutex::new(HashMap::new()),
                opened: AtomicUsize::new(0),
            }),
        }
    }

    /// The folder relative SQLite paths resolve against.
    pub fn base_dir(&self) -> &Path {
        &self.inner.base_dir
    }

    /// Connections each pool holds at most.
    pub fn max_connections(&self) -> u32 {
        self.inner.max_connections
    }

    /// The pool of `sys`: the one already open, or a new one. Concurrent first uses of a
    /// system wait for one connect; a failed connect is returned and tried again next time.
    pub async fn get(&self, sys: &System) -> Result<Target> {
        let raw = sys
            .url
            .as_deref()
            .ok_or_else(|| Error::new(Code::Config, format!("system {} has no url", sys.name)))?;
        let url = expand_env(raw)?;
        let cell = {
            let mut slots = self.inner.slots.lock().await;
            match slots.get(&sys.name) {
                Some(slot) if slot.url == url => slot.target.clone(),
                // New, or its URL changed: a new pool (the old one closes when its last
                // user lets go of it).
                Some(_) | None => {
                    let target = Arc::new(OnceCell::new());
                    slots.insert(
                        sys.name.clone(),
                        Slot {
                            url: url.clone(),
                            target: target.clone(),
                        },
                    );
                    target
                }
            }
        };
        let target = cell
            .get_or_try_init(|| async {
                let t =
                    Target::connect(sys, &url, &self.inner.base_dir, self.inner.max_connections)
                        .await?;
                self.inner.opened.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Error>(t)
            })
            .await?;
        Ok(target.clone())
    }

    /// Open the pool of every system that has a connector, one after another, so that
    /// the first survey or task finds it open (a PostgreSQL TLS connection is several
    /// round trips). A system that cannot be reached is said (a warning naming it) and
    /// tried again when it is next used. For a long-running process (`serve`).
    pub async fn open_all(&self, systems: &[System]) {
        for sys in systems {
            if sys.driver == crate::policy::Driver::Manual {
                continue;
            }
            match self.get(sys).await {
                // A task holds two at once (its reads beside its transaction).
                Ok(t) => t.open_connections(2).await,
                Err(e) => {
                    tracing::warn!(system = %sys.name, code = %e.code, "not reachable yet: {}", e.message)
                }
            }
        }
    }

    /// How many pools this process has opened (each system once, unless its URL changed
    /// or it could not be reached until now).
    pub fn opened(&self) -> usize {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// Close every open pool (at the end of a command or of `serve`). A later use opens
    /// a new one.
    pub async fn close(&self) {
        let slots: Vec<Slot> = self
            .inner
            .slots
            .lock()
            .await
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in slots {
            if let Some(t) = s.target.get() {
                t.close().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::Db;

    fn system(url: &str) -> System {
        toml::from_str(&format!(
            "name = \"crm\"\ndriver = \"sqlite\"\nurl = {url:?}\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A system that cannot be reached gives its error, naming it, and is tried again next
    /// time; once open, its pool is reused; a changed URL gets a pool of its own.
    #[tokio::test]
    async fn failures_are_not_kept_and_pools_are_reused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::new(Code::Internal, e.to_string()))?;
        let pools = Pools::new(dir.path(), 2);
        let sys = system("sqlite://crm.db");
        let Err(e) = pools.get(&sys).await else {
            panic!("a missing SQLite file connected");
        };
        assert!(
            e.message.contains("system crm") && e.message.contains("does not exist"),
            "{}",
            e.message
        );
        assert_eq!(pools.opened(), 0);

        crate::demo::create_crm_sqlite(&dir.path().join("crm.db")).await?;
        let a = pools.get(&sys).await?;
        let b = pools.clone().get(&sys).await?;
        assert_eq!(pools.opened(), 1, "the second use reuses the pool");
        let (Db::Sqlite(a), Db::Sqlite(b)) = (a.db(), b.db()) else {
            panic!("a SQLite target");
        };
        assert_eq!(a.options().get_max_connections(), 2);
        assert!(!b.is_closed());

        // The same system at another URL (the old pool closes with its last user).
        crate::demo::create_crm_sqlite(&dir.path().join("other.db")).await?;
        let c = pools.get(&system("sqlite://other.db")).await?;
        assert_eq!(pools.opened(), 2, "a new URL, a new pool");
        pools.close().await;
        let Db::Sqlite(c) = c.db() else {
            panic!("a SQLite target");
        };
        assert!(c.is_closed());
        Ok(())
    }
}
