//! Backups in the state store: what each task backed up, when it expires, and its
//! crypto-shredding.

use super::BeginWrite as _;
use chrono::{DateTime, Utc};

use super::Store;
use super::history::history_in;
use crate::error::Result;
use crate::lifecycle::state::State;

/// A backup as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct BackupRow {
    pub id: String,
    pub request_id: Option<String>,
    pub task_id: String,
    pub path: String,
    pub sha256: String,
    pub size: i64,
    pub rows: i64,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub shredded_at: Option<DateTime<Utc>>,
}

impl Store {
    pub async fn backups_of(&self, request_id: &str) -> Result<Vec<BackupRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, request_id, task_id, path, sha256, size, rows, created_at, expires_at, shredded_at FROM backups WHERE request_id = $1 ORDER BY created_at, id")
                .bind(request_id).fetch_all(pool).await?
        }))
    }

    pub async fn backup(&self, id: &str) -> Result<Option<BackupRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, request_id, task_id, path, sha256, size, rows, created_at, expires_at, shredded_at FROM backups WHERE id = $1")
                .bind(id).fetch_optional(pool).await?
        }))
    }

    pub async fn expired_backups(&self, now: DateTime<Utc>) -> Result<Vec<BackupRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, request_id, task_id, path, sha256, size, rows, created_at, expires_at, shredded_at FROM backups WHERE shredded_at IS NULL AND expires_at <= $1 ORDER BY expires_at")
                .bind(now).fetch_all(pool).await?
        }))
    }

    /// Record that a backup's key and archive were destroyed, with a history line.
    pub async fn backup_shredded(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE backups SET shredded_at = $2 WHERE id = $1 AND shredded_at IS NULL").bind(id).bind(now).execute(&mut *tx).await?;
            let rid: Option<(Option<String>,)> = sqlx::query_as("SELECT request_id FROM backups WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
            if let Some((Some(rid),)) = rid {
                let state: (State,) = sqlx::query_as("SELECT state FROM requests WHERE id = $1").bind(&rid).fetch_one(&mut *tx).await?;
                let why = format!("backup {id} expired: its key was destroyed (crypto-shredded) and the archive removed");
                history_in(&mut tx, &rid, now, "quietus", state.0, state.0, Some(&why)).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
