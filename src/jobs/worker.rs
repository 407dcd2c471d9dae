//! The daemon's worker: the schedule ticks (each fired once across all instances) beside
//! the rounds of work.

use chrono::{DateTime, Utc};

use super::Settings;
use crate::config::ScheduleName;
use crate::error::Result;
use crate::lifecycle::Context;

use super::{expire_backups, run_due, schedule, sweep};

/// The daemon's worker: a ticker fires each schedule's ticks as they come due (each tick
/// once across all instances), beside rounds of work every `every`, and at once after a
/// tick or when work is made: by this process (the store wakes it after the commit) or by
/// another (the store watches for that; see [`crate::store::wake`]). A tick that passed
/// before the daemon started is not fired, unless `catch_up`: then the latest tick of the
/// past day that no instance fired is fired at start.
pub async fn worker_loop(
    ctx: &Context,
    s: Settings,
    schedules: Vec<schedule::Schedule>,
    catch_up: bool,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Taken before the first round, so that work made during it is looked for after it.
    let mut made = ctx.store.work_made();
    let watcher = ctx.store.watch_other_processes(stop.clone());
    let started = crate::clock::now();
    let mut since = Vec::with_capacity(schedules.len());
    for sch in &schedules {
        since.push(first_round_since(ctx, sch, catch_up, started).await);
    }
    // The ticks run beside the work, so a long round of work (a large exit) never holds a
    // tick back; a tick that made work (a sweep) wakes the worker at once.
    let woken = tokio::sync::Notify::new();
    let s = &s;
    let ticker = {
        let mut stop = stop.clone();
        let woken = &woken;
        let schedules = &schedules;
        async move {
            loop {
                let now = crate::clock::now();
                for (sch, since) in schedules.iter().zip(since.iter_mut()) {
                    let Some(tick) = sch.cron.latest_in(*since, now) else {
                        continue;
                    };
                    match ctx.store.claim_tick(sch.name, tick, &s.worker).await {
                        Ok(true) => {
                            *since = now;
                            fire(ctx, s, sch.name, now).await;
                            woken.notify_one();
                        }
                        Ok(false) => *since = now, // another instance fired it
                        // Not claimed: tried again at the next look.
                        Err(e) => {
                            tracing::warn!(schedule = %sch.name, code = %e.code, "cannot claim the tick at {tick}: {}", e.message)
                        }
                    }
                }
                let now = crate::clock::now();
                let wait = schedules
                    .iter()
                    .filter_map(|sch| sch.cron.next_after(now))
                    .min()
                    .and_then(|t| (t - now).to_std().ok())
                    .map_or(every, |d| d.min(every))
                    .max(std::time::Duration::from_millis(50));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let work = async {
        loop {
            if let Err(e) = run_due(ctx, s, &stop, &|_| {}).await {
                tracing::warn!(code = %e.code, "work round failed: {}", e.message);
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = woken.notified() => {}
                _ = made.wait() => {}
                _ = stop.changed() => return,
            }
        }
    };
    tokio::join!(ticker, work, watcher);
}

/// Where a schedule's first round looks for ticks from: the start, or (to catch up) a
/// day before it. Says which tick a start passes over.
async fn first_round_since(
    ctx: &Context,
    sch: &schedule::Schedule,
    catch_up: bool,
    started: DateTime<Utc>,
) -> DateTime<Utc> {
    let day_before = started - chrono::Duration::days(1);
    let next = sch
        .cron
        .next_after(started)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "never".into());
    let Some(missed) = sch.cron.latest_in(day_before, started) else {
        tracing::info!(schedule = %sch.name, "next tick at {next}");
        return started;
    };
    let last = match ctx.store.last_tick(sch.name).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(schedule = %sch.name, code = %e.code, "cannot read the last tick: {}", e.message);
            None
        }
    };
    if last.is_some_and(|l| l >= missed) {
        tracing::info!(schedule = %sch.name, "next tick at {next}");
        return started;
    }
    if catch_up {
        tracing::info!(schedule = %sch.name, "the tick at {} passed while no instance ran: fired now (schedule.catch_up)", missed.to_rfc3339());
        return day_before;
    }
    match last {
        Some(_) => tracing::warn!(
            schedule = %sch.name,
            "the tick at {} passed while no instance ran and is not fired (schedule.catch_up is off); next tick at {next}",
            missed.to_rfc3339()
        ),
        None => tracing::info!(
            schedule = %sch.name,
            "first start: the tick at {} is past and not fired (schedule.catch_up is off); next tick at {next}",
            missed.to_rfc3339()
        ),
    }
    started
}

async fn fire(ctx: &Context, s: &Settings, name: ScheduleName, now: DateTime<Utc>) {
    let r = match name {
        ScheduleName::RetentionSweep => sweep(ctx, now)
            .await
            .map(|n| format!("{n} sweep task(s) created")),
        ScheduleName::BackupExpiry => expire_backups(ctx, s, now).await.map(|n| {
            format!(
                "{} expired backup(s) and {} unrecorded archive(s) crypto-shredded",
                n.expired, n.unrecorded
            )
        }),
        ScheduleName::Reminders => reminders(ctx, now).await,
    };
    match r {
        Ok(msg) => tracing::info!(schedule = %name, "{msg}"),
        Err(e) => tracing::warn!(schedule = %name, code = %e.code, "{}", e.message),
    }
}

/// Deadline reminders: requests due within three days or overdue (ids only in the log).
async fn reminders(ctx: &Context, now: DateTime<Utc>) -> Result<String> {
    let today = ctx.today(now);
    let items = ctx.queue(&[], false, today).await?;
    let near: Vec<&crate::lifecycle::QueueItem> = items
        .iter()
        .filter(|i| i.days_left.is_some_and(|d| d <= 3))
        .collect();
    for i in &near {
        tracing::warn!(request = %i.id, days_left = i.days_left.unwrap_or_default(), "deadline near or passed");
        let about = crate::mail::Concerns::Request {
            id: &i.id,
            kind: i.kind,
        };
        let m = ctx.mail.to_dpo(
            about,
            crate::mail::vars::Message::Reminder(crate::mail::vars::Reminder {
                request_id: i.id.clone(),
                deadline: i.due_date.map(|d| ctx.zone().day(d)),
                days_left: i.days_left,
                state: i.state,
                jurisdiction: i.jurisdiction,
            }),
        )?;
        for m in &m {
            ctx.store.enqueue(m, now).await?;
        }
    }
    Ok(format!(
        "{} request(s) due within three days or overdue",
        near.len()
    ))
}
