//! `quietus serve`: the HTTP API and the inbox watcher, until SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::error::{Code, Error, Result};
use crate::web::AppState;

pub async fn run(app: App, listen: Option<std::net::SocketAddr>) -> Result<()> {
    let settings = app.worker()?;
    let App { config, ctx } = app;
    let shutdown = shutdown_signal()?;
    let addr = listen.unwrap_or(config.server.listen);
    let today = ctx.today(crate::clock::now());
    for y in [
        today.format("%Y").to_string(),
        (today + chrono::Days::new(60)).format("%Y").to_string(),
    ] {
        if let Ok(y) = y.parse::<i32>()
            && !ctx.calendar.covers(y)
        {
            tracing::warn!(
                "the holiday calendar has no data for {y}: PIPL working days in {y} are counted as weekends only"
            );
        }
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::new(Code::Io, format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::new(Code::Io, e.to_string()))?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let inbox_dir = config.inbox_dir();
    let every = Duration::from_secs(config.inbox.poll_seconds);
    let state = Arc::new(AppState {
        ctx,
        tokens: config.api.tokens.clone(),
        max_body_bytes: config.server.max_body_bytes,
        checkpoint_file: config.path(&config.proof.checkpoint_file),
        public_key_file: config.path(&config.proof.public_key_file),
        limits: crate::web::Limits::of(&config.server),
        verify_attempts: Default::default(),
    });
    tracing::info!(%bound, inbox = %inbox_dir.display(), store = state.ctx.store.dialect(), "quietus serving");
    // Tests and supervisors read this line to learn the port.
    crate::outln!("listening on http://{bound}");
    let web = tokio::spawn(crate::web::serve(state.clone(), listener, rx.clone()));
    // The store's connections (one per lane, the issuer, the sender, the web) and the
    // target systems' pools, opened beside the first requests rather than by them.
    let opening = {
        let state = state.clone();
        let connections = settings.parallel + 3;
        tokio::spawn(async move {
            let ctx = &state.ctx;
            tokio::join!(
                ctx.store.open_connections(connections),
                ctx.targets.open_all(&ctx.policies.systems)
            );
        })
    };
    let schedules = crate::jobs::schedule::from_config(&config.schedule)?;
    let catch_up = config.schedule.catch_up;
    let work_every = Duration::from_secs(config.jobs.poll_seconds);
    let work_state = state.clone();
    let work_rx = rx.clone();
    let worker = tokio::spawn(async move {
        crate::jobs::worker_loop(
            &work_state.ctx,
            settings,
            schedules,
            catch_up,
            work_every,
            work_rx,
        )
        .await
    });
    let inbox_state = state.clone();
    let inbox_rx = rx.clone();
    let inbox = tokio::spawn(async move {
        crate::intake::inbox::watch(&inbox_state.ctx, inbox_dir, every, inbox_rx).await
    });
    shutdown.await;
    tracing::info!("shutting down");
    let _ = tx.send(true);
    opening.abort();
    let _ = inbox.await;
    let _ = worker.await;
    match web.await {
        Ok(r) => r?,
        Err(e) => return Err(Error::new(Code::Internal, format!("HTTP task: {e}"))),
    }
    state.ctx.close().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, so call
/// it before announcing readiness: a signal that arrives early is then not fatal.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::new(Code::Io, format!("cannot handle SIGTERM: {e}")))?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::new(Code::Io, format!("cannot handle SIGINT: {e}")))?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
