//! Encrypted exports (access requests) in the state store.

use chrono::{DateTime, Utc};

use super::Store;
use crate::error::Result;

/// An export as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExportRow {
    pub id: String,
    pub request_id: String,
    pub task_id: String,
    pub path: String,
    pub expires_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// The file's passphrase, sealed with the link's token (`jobs::export::seal`); unset
    /// once the export is deleted.
    pub passphrase_sealed: Option<String>,
    /// Wrong addresses typed on the download page.
    pub failed_checks: i64,
}

/// `SELECT` every column of [`ExportRow`] from exports, then `$rest`.
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT id, request_id, task_id, path, expires_at, deleted_at, passphrase_sealed, \
             failed_checks FROM exports ",
            $rest
        )
    };
}

impl Store {
    pub async fn insert_export(
        &self,
        e: &ExportRow,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO exports (id, request_id, task_id, path, token_sha256, created_at, expires_at, passphrase_sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&e.id).bind(&e.request_id).bind(&e.task_id).bind(&e.path).bind(token_sha256).bind(now).bind(e.expires_at)
                .bind(&e.passphrase_sealed)
                .execute(pool).await?;
        });
        Ok(())
    }

    pub async fn export_by_token(&self, token_sha256: &str) -> Result<Option<ExportRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(select!("WHERE token_sha256 = $1"))
                .bind(token_sha256).fetch_optional(pool).await?
        }))
    }

    pub async fn exports_of_task(&self, task_id: &str) -> Result<Vec<ExportRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(select!("WHERE task_id = $1"))
                .bind(task_id).fetch_all(pool).await?
        }))
    }

    pub async fn expired_exports(&self, now: DateTime<Utc>) -> Result<Vec<ExportRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(select!("WHERE deleted_at IS NULL AND expires_at <= $1"))
                .bind(now).fetch_all(pool).await?
        }))
    }

    pub async fn export_deleted(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE exports SET deleted_at = $2, passphrase_sealed = NULL WHERE id = $1").bind(id).bind(now).execute(pool).await?;
        });
        Ok(())
    }

    /// Count one wrong address typed for an export; returns how many there were in all.
    pub async fn export_check_failed(&self, id: &str) -> Result<i64> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("UPDATE exports SET failed_checks = failed_checks + 1 WHERE id = $1 RETURNING failed_checks")
                .bind(id).fetch_one(pool).await?
        }))
    }
}
