//! Decisions through the API: `POST /api/v1/requests/{id}/{decision}`, the DPO's approve,
//! reject, hold, release, cancel and extend, by the same code path as the CLI's
//! ([`Context::decide`](crate::lifecycle::Context::decide) and `extend`), recorded with the
//! token that took them (`api:NAME`).
//!
//! The body is optional JSON: `{"reason": "..."}`, and for an extension
//! `{"reason": "...", "by": "1 month"}` (`by` defaults to two months, as in the CLI). The
//! answer is `{"request": ...}` as it is after the decision.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State as AxState};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde::Deserialize;
use serde_json::json;

use super::{ApiResult, AppState, authenticate, body_bytes, require};
use crate::config::Role;
use crate::error::{Code, Error};
use crate::lifecycle::Decision;
use crate::policy::Period;

/// What a DPO may decide through the API (verification goes by the subject's link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiDecision {
    Approve,
    Reject,
    Hold,
    Release,
    Cancel,
    Extend,
}

impl ApiDecision {
    pub const ALL: [ApiDecision; 6] = [
        ApiDecision::Approve,
        ApiDecision::Reject,
        ApiDecision::Hold,
        ApiDecision::Release,
        ApiDecision::Cancel,
        ApiDecision::Extend,
    ];

    fn decision(self) -> Decision {
        match self {
            ApiDecision::Approve => Decision::Approve,
            ApiDecision::Reject => Decision::Reject,
            ApiDecision::Hold => Decision::Hold,
            ApiDecision::Release => Decision::Release,
            ApiDecision::Cancel => Decision::Cancel,
            ApiDecision::Extend => Decision::Extend,
        }
    }

    /// The route's path under `/api/v1`.
    pub fn path(self) -> String {
        format!("/requests/{{id}}/{}", self.decision().as_str())
    }

    /// The route's handler.
    pub fn route(self) -> MethodRouter<Arc<AppState>> {
        post(
            move |state: AxState<Arc<AppState>>,
                  headers: HeaderMap,
                  id: Result<Path<String>, PathRejection>,
                  body: Result<Bytes, BytesRejection>| {
                decide(self, state, headers, id, body)
            },
        )
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: Option<String>,
    /// An extension's length ("1 month", "10 working days").
    by: Option<String>,
}

fn parse_body(bytes: &[u8], d: ApiDecision) -> Result<DecisionBody, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecisionBody::default());
    }
    let body: DecisionBody = serde_json::from_slice(bytes)
        .map_err(|e| Error::new(Code::Usage, format!("request body: {e}")))?;
    if body.by.is_some() && d != ApiDecision::Extend {
        return Err(Error::new(
            Code::Usage,
            "request body: `by` is for an extension only",
        ));
    }
    Ok(body)
}

async fn decide(
    d: ApiDecision,
    AxState(state): AxState<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let caller = authenticate(&state, &headers)?;
    require(&caller, &[Role::Dpo])?;
    let Path(id) = id.map_err(|e| Error::new(Code::Usage, e.body_text()))?;
    let bytes = body_bytes(&state, body)?;
    let body = parse_body(&bytes, d)?;
    let ctx = &state.ctx;
    let actor = format!("api:{}", caller.name);
    let id = ctx.resolve(&id).await?;
    let now = crate::clock::now();
    let req = match d {
        ApiDecision::Extend => {
            let by: Period = body
                .by
                .as_deref()
                .unwrap_or("2 months")
                .parse()
                .map_err(|e: String| Error::new(Code::Usage, format!("by: {e}")))?;
            let reason = body.reason.as_deref().unwrap_or_default();
            ctx.extend(&id, by, reason, &actor, now).await?
        }
        ApiDecision::Approve
        | ApiDecision::Reject
        | ApiDecision::Hold
        | ApiDecision::Release
        | ApiDecision::Cancel => {
            ctx.decide(&id, d.decision(), &actor, body.reason.as_deref(), now)
                .await?
        }
    };
    Ok(Json(json!({ "request": req })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_optional_and_strict() {
        assert!(parse_body(b"", ApiDecision::Approve).is_ok());
        assert!(parse_body(b" \n", ApiDecision::Approve).is_ok());
        let b = parse_body(br#"{"reason":"ok"}"#, ApiDecision::Reject).unwrap();
        assert_eq!(b.reason.as_deref(), Some("ok"));
        let e = parse_body(br#"{"reasn":"ok"}"#, ApiDecision::Reject).unwrap_err();
        assert!(e.message.contains("reasn"), "{}", e.message);
        let e = parse_body(br#"{"by":"1 month"}"#, ApiDecision::Hold).unwrap_err();
        assert!(e.message.contains("extension"), "{}", e.message);
        assert!(parse_body(br#"{"by":"1 month"}"#, ApiDecision::Extend).is_ok());
    }

    #[test]
    fn every_decision_has_its_own_path() {
        let paths: std::collections::BTreeSet<String> =
            ApiDecision::ALL.iter().map(|d| d.path()).collect();
        assert_eq!(paths.len(), ApiDecision::ALL.len());
        assert!(paths.contains("/requests/{id}/approve"));
    }
}
