//! The request history: who moved a request from which state to which, when and why.
//! Every line is written here, in the transaction of the change it records; request
//! transitions caused by work follow the lifecycle's rules ([`Event::target`]).

use super::BeginWrite as _;
use chrono::{DateTime, Utc};

use super::Store;
use crate::error::Result;
use crate::lifecycle::state::{Event, State};

impl Store {
    /// Add a history line to a request without changing its state.
    pub async fn note(
        &self,
        request_id: &str,
        actor: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let state: (State,) = sqlx::query_as("SELECT state FROM requests WHERE id = $1").bind(request_id).fetch_one(&mut *tx).await?;
            history_in(&mut tx, request_id, now, actor, state.0, state.0, Some(reason)).await?;
            tx.commit().await?;
        });
        Ok(())
    }
}

/// A history line, in the caller's transaction.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn history_in<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    request_id: &str,
    at: DateTime<Utc>,
    actor: &str,
    from: State,
    to: State,
    reason: Option<&str>,
) -> std::result::Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> State: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    sqlx::query("INSERT INTO history (request_id, at, actor, from_state, to_state, reason) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(request_id.to_owned())
        .bind(at)
        .bind(actor.to_owned())
        .bind(from)
        .bind(to)
        .bind(reason.map(str::to_owned))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A request's work is done: its completion receipt is due, in the caller's transaction.
/// The request stays where it is (scheduled, running or failed) until the receipt is
/// issued: it becomes `completed` in the receipt's own transaction
/// ([`Store::append_log`](super::Store::append_log)), never before its receipt exists.
/// False when the request is not in `from` (or its receipt is due already).
pub(super) async fn work_done_in<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    request_id: &str,
    now: DateTime<Utc>,
    from: State,
) -> std::result::Result<bool, sqlx::Error>
where
    DB: sqlx::Database,
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> State: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    if Event::Complete.target(from).is_none() {
        return Ok(false);
    }
    let moved: Option<(String,)> = sqlx::query_as(
        "UPDATE requests SET updated_at = $2, receipt_due = $3 WHERE id = $1 AND state = $4 AND receipt_due = $5 RETURNING id",
    )
    .bind(request_id.to_owned())
    .bind(now)
    .bind(true)
    .bind(from)
    .bind(false)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(moved.is_some())
}

/// Apply a lifecycle event to a request, in the caller's transaction: the lifecycle's
/// rule ([`Event::target`]) says where it leads; an event that changes nothing records
/// nothing.
pub(super) async fn apply_event_in<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    request_id: &str,
    now: DateTime<Utc>,
    actor: &str,
    event: Event,
    why: &str,
) -> std::result::Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> State: sqlx::Encode<'q, DB> + sqlx::Type<DB> + sqlx::Decode<'q, DB>,
    for<'r> (State,): sqlx::FromRow<'r, DB::Row>,
    for<'r> (String,): sqlx::FromRow<'r, DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
{
    let from: Option<(State,)> = sqlx::query_as("SELECT state FROM requests WHERE id = $1")
        .bind(request_id.to_owned())
        .fetch_optional(&mut **tx)
        .await?;
    let Some((from,)) = from else { return Ok(()) };
    let Some(to) = event.target(from) else {
        return Ok(());
    };
    if to == from {
        return Ok(());
    }
    let moved: Option<(String,)> = sqlx::query_as(
        "UPDATE requests SET state = $2, updated_at = $3 WHERE id = $1 AND state = $4 RETURNING id",
    )
    .bind(request_id.to_owned())
    .bind(to)
    .bind(now)
    .bind(from)
    .fetch_optional(&mut **tx)
    .await?;
    if moved.is_some() {
        let why = (!why.is_empty()).then_some(why);
        history_in(tx, request_id, now, actor, from, to, why).await?;
    }
    Ok(())
}
