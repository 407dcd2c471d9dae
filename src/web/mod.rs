//! The HTTP door: a JSON API under `/api/v1` with bearer tokens, and `/healthz`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, FormRejection, PathRejection, QueryRejection};
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, Request, State as AxState,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::{Role, TokenConfig};
use crate::error::{Code, Error};
use crate::intake::{self, Source};
use crate::lifecycle::Context;
use crate::policy::IdentityKind;
use crate::store::exports::ExportRow;

mod decide;

/// What the handlers share.
pub struct AppState {
    pub ctx: Context,
    pub tokens: Vec<TokenConfig>,
    pub max_body_bytes: usize,
    /// The latest signed checkpoint's file, and the public key's (served to witnesses and
    /// verifiers).
    pub checkpoint_file: std::path::PathBuf,
    pub public_key_file: std::path::PathBuf,
    pub limits: Limits,
    /// Verification attempts per client address in the current minute.
    pub verify_attempts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// What a client may take of the server (`[server]` in the configuration).
#[derive(Debug, Clone)]
pub struct Limits {
    /// To send a whole request head, from the connection's start or its last answer.
    pub header_timeout: Duration,
    /// To send a whole request body.
    pub body_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Verification attempts per client address and minute.
    pub verify_attempts_per_minute: u32,
}

impl Limits {
    pub fn of(c: &crate::config::ServerConfig) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(c.header_timeout_seconds),
            body_timeout: Duration::from_secs(c.body_timeout_seconds),
            max_connections: c.max_connections,
            verify_attempts_per_minute: c.verify_attempts_per_minute,
        }
    }
}

/// The client's address (from the connection), if known.
struct Peer(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

const VERIFY_WINDOW: Duration = Duration::from_secs(60);

/// Count one verification attempt of `peer`; `Err(seconds to wait)` past the limit.
fn verify_attempt(state: &AppState, peer: &Peer) -> Result<(), u64> {
    let Some(ip) = peer.0 else { return Ok(()) };
    let now = Instant::now();
    let mut map = state
        .verify_attempts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if map.len() > 10_000 {
        map.retain(|_, (start, _)| now.duration_since(*start) < VERIFY_WINDOW);
    }
    let entry = map.entry(ip).or_insert((now, 0));
    if now.duration_since(entry.0) >= VERIFY_WINDOW {
        *entry = (now, 0);
    }
    if entry.1 >= state.limits.verify_attempts_per_minute {
        let left = VERIFY_WINDOW.saturating_sub(now.duration_since(entry.0));
        return Err(left.as_secs().max(1));
    }
    entry.1 += 1;
    Ok(())
}

fn retry_after(mut res: Response, seconds: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

fn rate_limited(seconds: u64) -> Error {
    Error::new(
        Code::RateLimited,
        format!("too many verification attempts from this address: try again in {seconds} s"),
    )
}

/// An error as the API answers it: `{"error": {"code", "message"}}` with the code's status.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = %self.0.code, location = %self.0.location, "request failed: {}", self.0.message);
        }
        (
            status,
            Json(json!({"error": {"code": self.0.code.as_str(), "message": self.0.message}})),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The caller, from its bearer token.
struct Caller {
    name: String,
    role: Role,
    /// An auditor that may ask to see identities unmasked (`api.tokens.unmask`).
    unmask: bool,
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, Error> {
    // The scheme is case-insensitive (RFC 7235 section 2.1).
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::new(
                Code::Unauthorized,
                "a bearer token is required (Authorization: Bearer TOKEN)",
            )
        })?;
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    state
        .tokens
        .iter()
        .find(|t| t.sha256.eq_ignore_ascii_case(&hash))
        .map(|t| Caller {
            name: t.name.clone(),
            role: t.role,
            unmask: t.unmask,
        })
        .ok_or_else(|| Error::new(Code::Unauthorized, "unknown token"))
}

fn require(caller: &Caller, roles: &[Role]) -> Result<(), Error> {
    if caller.role == Role::Admin || roles.contains(&caller.role) {
        Ok(())
    } else {
        Err(Error::new(
            Code::Forbidden,
            format!("the role {} may not do this", caller.role.as_str()),
        ))
    }
}

/// Build the router.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    let mut api = Router::new()
        .route("/requests", post(create_request).get(list_requests))
        .route("/requests/{id}", get(get_request))
        .route("/verify", post(verify));
    for d in decide::ApiDecision::ALL {
        api = api.route(&d.path(), d.route());
    }
    let api = api
        .fallback(api_not_found)
        .method_not_allowed_fallback(api_method_not_allowed);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/log/checkpoint", get(checkpoint))
        .route("/keys/receipts.pub", get(public_key))
        .route("/export/{token}", get(export_page).post(export_form))
        .route("/export/{token}/file", get(download_export))
        .route("/verify", get(verify_page).post(verify_form))
        .route("/confirm", get(confirm_page).post(confirm_form))
        .nest("/api/v1", api)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn api_not_found() -> ApiError {
    ApiError(Error::new(Code::NotFound, "no such API path"))
}

async fn api_method_not_allowed() -> Response {
    let mut res =
        ApiError(Error::new(Code::Usage, "this method is not allowed here")).into_response();
    *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    res
}

/// Take the whole request body before any handler runs, within `body_timeout` in all (a
/// body dribbled a byte at a time is cut as surely as one that stalls) and within
/// `max_body_bytes`.
async fn read_body(AxState(state): AxState<Arc<AppState>>, req: Request, next: Next) -> Response {
    use futures_util::StreamExt;
    let limit = state.max_body_bytes;
    let too_large = || {
        Error::new(
            Code::TooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return close(ApiError(too_large()).into_response());
    }
    let (parts, body) = req.into_parts();
    let collected = tokio::time::timeout(state.limits.body_timeout, async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Error::new(
                    Code::Ticket,
                    format!("the request body could not be read: {e}"),
                )
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    })
    .await;
    match collected {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => close(ApiError(e).into_response()),
        Err(_) => {
            tracing::warn!(path = %parts.uri.path(), "a request body was cut: slower than body_timeout_seconds");
            close(
                ApiError(Error::new(
                    Code::Timeout,
                    format!(
                        "the request body did not arrive within {} s",
                        state.limits.body_timeout.as_secs()
                    ),
                ))
                .into_response(),
            )
        }
    }
}

/// Close the connection after this answer (the rest of its request was not read).
fn close(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

async fn healthz(AxState(state): AxState<Arc<AppState>>) -> Response {
    let ok = match &state.ctx.store.pool {
        crate::store::Pool::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.is_ok(),
        crate::store::Pool::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.is_ok(),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"status": if ok { "ok" } else { "store unavailable" }, "version": crate::TOOL}),
        ),
    )
        .into_response()
}

/// The latest signed checkpoint (C2SP tlog-checkpoint, as a signed note).
async fn checkpoint(AxState(state): AxState<Arc<AppState>>) -> Response {
    serve_text(
        &state.checkpoint_file,
        "no checkpoint yet: the log is empty",
    )
}

/// The public key that verifies receipts and checkpoints.
async fn public_key(AxState(state): AxState<Arc<AppState>>) -> Response {
    serve_text(&state.public_key_file, "no signing key yet")
}

/// An export whose link still works: known, not expired or deleted, not locked by
/// wrong addresses; else the page that says why (404, 410).
async fn live_export(
    state: &AppState,
    token: &str,
) -> Result<(ExportRow, crate::lifecycle::Request), Response> {
    let hash = hex::encode(Sha256::digest(token.trim().as_bytes()));
    let not_valid = || {
        page(
            StatusCode::NOT_FOUND,
            "This link does not work",
            "<p>This download link is not valid.</p>",
        )
    };
    let e = match state.ctx.store.export_by_token(&hash).await {
        Ok(Some(e)) => e,
        Ok(None) => return Err(not_valid()),
        Err(e) => return Err(ApiError(e).into_response()),
    };
    let req = match state.ctx.request(&e.request_id).await {
        Ok(r) => r,
        Err(_) => return Err(not_valid()),
    };
    let w = Words::of(&req);
    if e.deleted_at.is_some() || e.expires_at <= crate::clock::now() {
        return Err(page(StatusCode::GONE, w.expired_title, w.expired));
    }
    if e.failed_checks >= crate::jobs::export::MAX_ADDRESS_CHECKS {
        return Err(page(StatusCode::GONE, w.locked_title, w.locked));
    }
    Ok((e, req))
}

/// The words of the download pages, in the request's language.
struct Words {
    title: &'static str,
    ask: &'static str,
    email: &'static str,
    submit: &'static str,
    wrong: &'static str,
    no_address: &'static str,
    passphrase: &'static str,
    download: &'static str,
    how: &'static str,
    legacy: &'static str,
    expired_title: &'static str,
    expired: &'static str,
    locked_title: &'static str,
    locked: &'static str,
}

impl Words {
    fn of(req: &crate::lifecycle::Request) -> Words {
        let locale = crate::mail::templates::resolve_locale(
            &req.locale,
            crate::mail::MessageKind::ExportReady,
            None,
        );
        if locale == "zh-CN" {
            Words {
                title: "下载您的个人信息副本",
                ask: "为确认是您本人，请输入本链接所发送至的电子邮件地址。确认后，页面将显示打开文件所需的口令。",
                email: "电子邮件地址",
                submit: "确认",
                wrong: "该地址不是本链接所发送至的地址。多次输入错误后，链接将失效。",
                no_address: "无法在此确认您的身份，请回复我们的邮件与我们联系。",
                passphrase: "打开文件所需的口令：",
                download: "下载加密文件",
                how: "请使用 age（https://age-encryption.org）打开文件：运行 <code>age -d 文件名 &gt; export.html</code>，并在提示时输入上述口令。口令不会通过电子邮件发送，请勿转告他人。",
                legacy: "打开文件所需的口令已随下载链接一并发送。",
                expired_title: "链接已过期",
                expired: "<p>此下载链接已过期，文件不再保留。如仍需要副本，请重新提出请求。</p>",
                locked_title: "链接已失效",
                locked: "<p>输入错误地址的次数过多，此下载链接已失效。如需副本，请与我们联系。</p>",
            }
        } else {
            Words {
                title: "Download the copy of your personal data",
                ask: "To make sure it is you, type the email address this link was sent to. The page then shows the passphrase that opens the file.",
                email: "Email address",
                submit: "Confirm",
                wrong: "That is not the address this link was sent to. After too many wrong tries the link stops working.",
                no_address: "We cannot confirm here that it is you: please reply to our message.",
                passphrase: "The passphrase that opens the file:",
                download: "Download the encrypted file",
                how: "Open the file with age (https://age-encryption.org): run <code>age -d FILE &gt; export.html</code> and type the passphrase above when asked. It is never sent by email; do not pass it on.",
                legacy: "The passphrase that opens the file came with the message that brought you this link.",
                expired_title: "This link has expired",
                expired: "<p>This download link has expired and the file is no longer kept. Ask again if you still want a copy.</p>",
                locked_title: "This link no longer works",
                locked: "<p>Too many wrong addresses were typed, so this download link no longer works. Write to us if you still want a copy.</p>",
            }
        }
    }
}

fn address_form(w: &Words, note: Option<&str>) -> String {
    format!(
        "{}<p>{}</p><form method=\"post\"><label>{} <input type=\"email\" name=\"email\" required autocomplete=\"email\"></label> \
         <button type=\"submit\">{}</button></form>",
        note.map(|n| format!("<p><strong>{n}</strong></p>"))
            .unwrap_or_default(),
        w.ask,
        w.email,
        w.submit
    )
}

/// The link in the export_ready email: a page that asks for the subject's address (a link
/// alone shows no passphrase).
async fn export_page(
    AxState(state): AxState<Arc<AppState>>,
    Path(token): Path<String>,
) -> Response {
    match live_export(&state, &token).await {
        Ok((_, req)) => {
            let w = Words::of(&req);
            page(StatusCode::OK, w.title, &address_form(&w, None))
        }
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct AddressForm {
    #[serde(default)]
    email: String,
}

/// The address typed on the export page: the subject's shows the passphrase and the
/// file's link; another is counted, and enough of them lock the link.
async fn export_form(
    AxState(state): AxState<Arc<AppState>>,
    Path(token): Path<String>,
    axum::Form(f): axum::Form<AddressForm>,
) -> Response {
    let (e, req) = match live_export(&state, &token).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let w = Words::of(&req);
    let Some(expected) = req.subject.get(&IdentityKind::Email) else {
        return page(
            StatusCode::FORBIDDEN,
            w.title,
            &format!("<p>{}</p>", w.no_address),
        );
    };
    if f.email.trim().is_empty() {
        return page(StatusCode::OK, w.title, &address_form(&w, None));
    }
    let typed = crate::intake::identity::normalize(IdentityKind::Email, &f.email).ok();
    if typed.as_deref() != Some(expected.as_str()) {
        let failed = match state.ctx.store.export_check_failed(&e.id).await {
            Ok(n) => n,
            Err(err) => return ApiError(err).into_response(),
        };
        tracing::warn!(export = %e.id, failed, "a wrong address was typed on an export's page");
        if failed >= crate::jobs::export::MAX_ADDRESS_CHECKS {
            return page(StatusCode::GONE, w.locked_title, w.locked);
        }
        return page(
            StatusCode::FORBIDDEN,
            w.title,
            &address_form(&w, Some(w.wrong)),
        );
    }
    let shown = match &e.passphrase_sealed {
        Some(sealed) => match crate::jobs::export::unseal(sealed, token.trim()) {
            Ok(p) => format!(
                "<p>{}</p><p style=\"font-size:1.3em\"><code id=\"passphrase\">{}</code></p>",
                w.passphrase,
                esc(&p)
            ),
            Err(err) => return ApiError(err).into_response(),
        },
        None => format!("<p>{}</p>", w.legacy),
    };
    tracing::info!(export = %e.id, request = %req.id, "an export's passphrase was shown");
    let file_url = format!("{}/export/{}/file", state.ctx.mail.public_url, token.trim());
    page(
        StatusCode::OK,
        w.title,
        &format!(
            "{shown}<p><a href=\"{}\">{}</a></p><p>{}</p>",
            esc(&file_url),
            w.download,
            w.how
        ),
    )
}

/// An encrypted export's file, by the token of its download link, while the link works.
async fn download_export(
    AxState(state): AxState<Arc<AppState>>,
    Path(token): Path<String>,
) -> Response {
    let (e, _) = match live_export(&state, &token).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    // Streamed in pieces: an export can be large, and never sits whole in memory.
    let Ok(file) = crate::fsx::open_read_async(std::path::Path::new(&e.path)).await else {
        return ApiError(Error::new(Code::NotFound, "the export is no longer there"))
            .into_response();
    };
    let pieces = futures_util::stream::try_unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), f)))
    });
    let disposition = format!("attachment; filename=\"export-{}.html.age\"", e.request_id);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(pieces),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    token: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// The link in the verification email: a page whose button confirms (a link alone never
/// changes anything, so mail scanners that open links do no harm).
async fn verify_page(q: Result<Query<TokenForm>, QueryRejection>) -> Response {
    let Ok(Query(q)) = q else {
        return no_token_page();
    };
    page(
        StatusCode::OK,
        "Confirm your request",
        &format!(
            "<p>Please confirm that you made this request, so that we can start on it.</p>\
             <form method=\"post\" action=\"verify\"><input type=\"hidden\" name=\"token\" value=\"{}\">\
             <button type=\"submit\">Yes, I made this request</button></form>",
            esc(&q.token)
        ),
    )
}

fn no_token_page() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "This link does not work",
        "<p>This link is incomplete: open the whole link from the email.</p>",
    )
}

async fn verify_form(
    AxState(state): AxState<Arc<AppState>>,
    peer: Peer,
    f: Result<axum::Form<TokenForm>, FormRejection>,
) -> Response {
    let Ok(axum::Form(f)) = f else {
        return no_token_page();
    };
    if let Err(wait) = verify_attempt(&state, &peer) {
        return retry_after(
            page(
                StatusCode::TOO_MANY_REQUESTS,
                "Please wait",
                &format!("<p>Too many attempts: please try again in {wait} seconds.</p>"),
            ),
            wait,
        );
    }
    match intake::verify_token(&state.ctx, &f.token, crate::clock::now()).await {
        Ok(req) => page(
            StatusCode::OK,
            "Thank you",
            &format!(
                "<p>Your request <code>{}</code> is confirmed; we will answer by {}.</p>",
                esc(&req.id),
                req.due_date
                    .map(|d| state.ctx.zone().day(d).to_string())
                    .unwrap_or_default()
            ),
        ),
        Err(e) => page(
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
            "This link does not work",
            &format!("<p>{}</p>", esc(&e.message)),
        ),
    }
}

/// The link in a manual task's email: what to do, and a button to confirm it is done.
async fn confirm_page(
    AxState(state): AxState<Arc<AppState>>,
    q: Result<Query<TokenForm>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return no_token_page();
    };
    let hash = hex::encode(Sha256::digest(q.token.trim().as_bytes()));
    match state.ctx.store.task_by_confirm_token(&hash).await {
        Ok(Some(t)) if t.state == crate::jobs::TaskState::WaitingConfirmation => {
            let body: crate::jobs::TaskBody = serde_json::from_str(&t.body).unwrap_or_default();
            let items: String = body
                .entries
                .iter()
                .map(|e| {
                    format!(
                        "<li>{} <code>{}</code>: {} ({})</li>",
                        esc(e.action.as_str()),
                        esc(&e.table),
                        esc(&e.categories.join(", ")),
                        esc(&e.basis)
                    )
                })
                .collect();
            page(
                StatusCode::OK,
                &format!("Task {} in {}", t.id, t.system),
                &format!(
                    "<p>For request <code>{}</code>, please do this in <b>{}</b>:</p><ul>{items}</ul>\
                 <form method=\"post\" action=\"confirm\"><input type=\"hidden\" name=\"token\" value=\"{}\">\
                 <button type=\"submit\">It is done</button></form>",
                    esc(t.request_id.as_deref().unwrap_or("")),
                    esc(&t.system),
                    esc(&q.token)
                ),
            )
        }
        Ok(Some(t)) => {
            use crate::jobs::TaskState as S;
            match t.state {
                S::Done => page(
                    StatusCode::OK,
                    "Already confirmed",
                    "<p>This task is confirmed already. Thank you.</p>",
                ),
                S::Cancelled => page(
                    StatusCode::GONE,
                    "This task was cancelled",
                    "<p>Its request was cancelled or restored: there is nothing to do.</p>",
                ),
                S::WaitingKeys
                | S::Pending
                | S::BackedUp
                | S::WaitingConfirmation
                | S::NeedsAttention => page(
                    StatusCode::CONFLICT,
                    "This task does not wait for you",
                    "<p>This task does not wait for a confirmation now.</p>",
                ),
            }
        }
        Ok(None) | Err(_) => page(
            StatusCode::NOT_FOUND,
            "This link does not work",
            "<p>No task waits for this link.</p>",
        ),
    }
}

async fn confirm_form(
    AxState(state): AxState<Arc<AppState>>,
    f: Result<axum::Form<TokenForm>, FormRejection>,
) -> Response {
    let Ok(axum::Form(f)) = f else {
        return no_token_page();
    };
    let hash = hex::encode(Sha256::digest(f.token.trim().as_bytes()));
    let result = async {
        let t = state
            .ctx
            .store
            .task_by_confirm_token(&hash)
            .await?
            .ok_or_else(|| Error::new(Code::NotFound, "no task waits for this link"))?;
        let actor = format!("owner of {} (email link)", t.system);
        state.ctx.store.take_for_confirmation(&t.id, &actor).await?;
        let doc = json!({"confirmed_by": actor}).to_string();
        state
            .ctx
            .store
            .task_done(&t.id, &actor, &doc, &[], crate::clock::now())
            .await?;
        Ok::<_, Error>(t)
    }
    .await;
    match result {
        Ok(t) => page(
            StatusCode::OK,
            "Thank you",
            &format!("<p>Task <code>{}</code> is confirmed.</p>", esc(&t.id)),
        ),
        Err(e) => page(
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
            "This link does not work",
            &format!("<p>{}</p>", esc(&e.message)),
        ),
    }
}

fn serve_text(path: &std::path::Path, missing: &str) -> Response {
    match crate::fsx::read_text_limited(path, crate::fsx::limit::RECEIPT) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(_) => ApiError(Error::new(Code::NotFound, missing)).into_response(),
    }
}

fn body_bytes(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, Error> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::new(
                Code::TooLarge,
                format!(
                    "the request body is larger than {} bytes",
                    state.max_body_bytes
                ),
            )
        } else {
            Error::new(
                Code::Ticket,
                format!("the request body could not be read: {e}"),
            )
        }
    })
}

async fn create_request(
    AxState(state): AxState<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = authenticate(&state, &headers)?;
    require(&caller, &[Role::Submitter, Role::Hr, Role::Dpo])?;
    let bytes = body_bytes(&state, body)?;
    let ctx = &state.ctx;
    let ticket = intake::parse_ticket(&bytes, "request body", ctx.policies.handover_required())?;
    let source = Source {
        door: crate::intake::Door::Api,
        actor: format!("api:{}", caller.name),
        trusted: matches!(caller.role, Role::Hr | Role::Dpo | Role::Admin),
    };
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let sub = intake::submit(ctx, &ticket, &raw, &source, crate::clock::now())
        .await
        .map_err(|e| {
            // An untrusted caller is not told which request another ticket made.
            if e.code == Code::Conflict && !source.trusted {
                Error::new(
                    Code::Conflict,
                    format!(
                        "external_id {:?} is already taken by a different ticket; send the same \
                         ticket again or use a new external_id",
                        ticket.external_id.as_deref().unwrap_or_default()
                    ),
                )
            } else {
                e
            }
        })?;
    let status = if sub.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sub)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list_requests(
    AxState(state): AxState<Arc<AppState>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let caller = authenticate(&state, &headers)?;
    require(&caller, &[Role::Dpo, Role::Auditor])?;
    let Query(q) = q.map_err(|e| Error::new(Code::Usage, e.body_text()))?;
    let states = match q.state {
        Some(s) => vec![
            s.parse::<crate::lifecycle::State>()
                .map_err(|e| Error::new(Code::Usage, format!("state: {e}")))?,
        ],
        None => vec![],
    };
    let today = state.ctx.today(crate::clock::now());
    let items = state.ctx.queue(&states, false, today).await?;
    Ok(Json(json!({"today": today, "requests": items})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowQuery {
    /// An auditor with `unmask` asks to see identities as they are.
    #[serde(default)]
    unmask: bool,
}

async fn get_request(
    AxState(state): AxState<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<ShowQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let caller = authenticate(&state, &headers)?;
    require(&caller, &[Role::Dpo, Role::Auditor])?;
    let Path(id) = id.map_err(|e| Error::new(Code::Usage, e.body_text()))?;
    let Query(q) = q.map_err(|e| Error::new(Code::Usage, e.body_text()))?;
    let mut req = state.ctx.request(&state.ctx.resolve(&id).await?).await?;
    if caller.role == Role::Auditor {
        if !q.unmask {
            req.subject = crate::intake::identity::masked(&req.subject);
            req.successor = req.successor.as_ref().map(crate::intake::identity::masked);
            // Free text of the ticket, which may name a person.
            req.requested_by = req.requested_by.as_ref().map(|_| "(masked)".to_owned());
        } else if caller.unmask {
            // Recorded before anything is shown.
            state
                .ctx
                .store
                .note(
                    &req.id,
                    &caller.name,
                    "identities shown unmasked to an auditor",
                    crate::clock::now(),
                )
                .await?;
        } else {
            return Err(Error::new(
                Code::Forbidden,
                format!(
                    "the token {:?} may not see identities unmasked (api.tokens.unmask)",
                    caller.name
                ),
            )
            .into());
        }
    }
    // (Other roles see identities anyway: `unmask` changes nothing for them.)
    let history = state.ctx.store.history(&req.id).await?;
    Ok(Json(json!({"request": req, "history": history})).into_response())
}

#[derive(Deserialize)]
struct VerifyBody {
    token: String,
}

async fn verify(
    AxState(state): AxState<Arc<AppState>>,
    peer: Peer,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    if let Err(wait) = verify_attempt(&state, &peer) {
        return Ok(retry_after(
            ApiError(rate_limited(wait)).into_response(),
            wait,
        ));
    }
    let bytes = body_bytes(&state, body)?;
    let v: VerifyBody = serde_json::from_slice(&bytes)
        .map_err(|e| Error::new(Code::Ticket, format!("request body: {e}")))?;
    let req = intake::verify_token(&state.ctx, &v.token, crate::clock::now()).await?;
    Ok(Json(json!({"id": req.id, "state": req.state})).into_response())
}

/// Serve until `shutdown` resolves: at most `max_connections` at once (the others wait in
/// the kernel's listen queue, holding no file of this process), each closed when it is
/// slower than `header_timeout` to send a request head.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Error> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower_service::Service;
    let limits = state.limits.clone();
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    let kind = e.kind();
                    if !matches!(
                        kind,
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionRefused
                    ) {
                        // Out of files, most likely: wait rather than spin.
                        tracing::warn!("cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { app.call(req.map(Body::new)).await }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection closed: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open 10 s after shutdown began: left behind");
        }
    }
    Ok(())
}
