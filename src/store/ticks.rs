//! Schedule ticks in the state store: each tick of each schedule is fired by one instance.

use chrono::{DateTime, Utc};

use super::Store;
use crate::config::ScheduleName;
use crate::error::Result;

impl Store {
    /// Claim a schedule tick; true for exactly one caller across all instances.
    pub async fn claim_tick(
        &self,
        name: ScheduleName,
        tick_at: DateTime<Utc>,
        worker: &str,
    ) -> Result<bool> {
        let n = on_pool!(self, pool => {
            sqlx::query("INSERT INTO schedule_ticks (name, tick_at, fired_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(name).bind(tick_at).bind(worker).execute(pool).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// The latest tick of a schedule that any instance fired, if any.
    pub async fn last_tick(&self, name: ScheduleName) -> Result<Option<DateTime<Utc>>> {
        let row: Option<(DateTime<Utc>,)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT tick_at FROM schedule_ticks WHERE name = $1 ORDER BY tick_at DESC LIMIT 1")
                .bind(name).fetch_optional(pool).await?
        });
        Ok(row.map(|r| r.0))
    }
}
