//! Tickets in: parse, validate, normalise identities, dedupe by external id, store.
//!
//! Every door (CLI, HTTP, inbox) goes through [`parse_ticket`] and [`submit`], so a
//! ticket means the same wherever it comes from. A ticket that fails validation changes
//! nothing.

pub mod identity;
pub mod inbox;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use identity::{Identities, normalize};

use crate::error::{Code, Error, Result};
use crate::lifecycle::{Context, State};
use crate::policy::{ClockStart, IdentityKind, Jurisdiction, RequestKind};
use crate::store::{IdentityRow, Inserted, NewRequest, Role};

/// The largest ticket accepted by any door, in bytes (the HTTP limit is configurable
/// below this).
pub const MAX_TICKET_BYTES: usize = 1024 * 1024;

/// A ticket as it arrives (JSON). Unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTicket {
    kind: String,
    #[serde(default)]
    external_id: Option<String>,
    subject: UniqueMap,
    #[serde(default)]
    exit_date: Option<String>,
    #[serde(default)]
    successor: Option<UniqueMap>,
    #[serde(default)]
    jurisdiction: Option<String>,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    requested_by: Option<String>,
    #[serde(default)]
    note: Option<String>,
    /// Exits: the leaver asked for a copy of their own data.
    #[serde(default)]
    copy: bool,
}

/// An object whose keys are each given once: `{"email":"a@…","email":"b@…"}` is an
/// error, not the last address winning.
#[derive(Debug, Clone, Default)]
struct UniqueMap(BTreeMap<String, serde_json::Value>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<UniqueMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: serde_json::Value = map.next_value()?;
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format_args!(
                            "{TWICE_PREFIX}{k}` is given twice"
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// How [`UniqueMap`]'s error begins (so that [`shape_error`] knows it for its own).
const TWICE_PREFIX: &str = "the key `";

/// What is wrong with the shape of a ticket, and where: the path of the field and the type
/// expected, never the value given (serde's own messages quote it).
fn shape_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner();
    if inner.classify() != serde_json::error::Category::Data {
        // Syntax and end-of-input messages name a position, never the text.
        return format!("malformed ticket: {inner}");
    }
    let text = inner.to_string();
    let at = format!(" at line {} column {}", inner.line(), inner.column());
    let msg = text.strip_suffix(&at).unwrap_or(&text);
    let what = if let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    {
        match rest.rsplit_once(", expected ") {
            Some((given, expected)) => {
                format!("{} where {expected} was expected", given_kind(given))
            }
            None => "a value of the wrong type".to_owned(),
        }
    } else if let Some(rest) = msg.strip_prefix("unknown variant ") {
        match rest.rsplit_once(", expected ") {
            Some((_, expected)) => format!("an unknown value where {expected} was expected"),
            None => "an unknown value".to_owned(),
        }
    } else if let Some(field) = msg
        .strip_prefix("duplicate field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        format!("`{field}` is given twice")
    } else if msg.starts_with("missing field `")
        || msg.starts_with("unknown field `")
        || msg.starts_with("invalid length ")
        || msg.starts_with(TWICE_PREFIX)
    {
        msg.to_owned()
    } else {
        "a value of the wrong form".to_owned()
    };
    let path = e.path().to_string();
    if path == "." {
        format!(
            "malformed ticket: {what} (line {}, column {})",
            inner.line(),
            inner.column()
        )
    } else {
        format!(
            "malformed ticket: {path}: {what} (line {}, column {})",
            inner.line(),
            inner.column()
        )
    }
}

/// What kind of value serde found, from its description (`string "…"`, `integer `5``):
/// the kind without the value.
fn given_kind(given: &str) -> &'static str {
    const KINDS: [(&str, &str); 11] = [
        ("string", "a string"),
        ("integer", "a number"),
        ("floating point", "a number"),
        ("boolean", "a boolean"),
        ("character", "a character"),
        ("unit value", "null"),
        ("map", "an object"),
        ("sequence", "a list"),
        ("byte array", "bytes"),
        ("Option value", "an optional value"),
        ("enum", "an enum"),
    ];
    KINDS
        .iter()
        .find(|(prefix, _)| given.starts_with(prefix))
        .map_or("a value of another type", |(_, kind)| kind)
}

/// The languages quietus writes to people in.
pub const LOCALES: [&str; 2] = ["en", "zh-CN"];

/// A validated, normalised ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ticket {
    pub kind: RequestKind,
    pub external_id: Option<String>,
    pub subject: Identities,
    pub exit_date: Option<NaiveDate>,
    pub successor: Option<Identities>,
    pub jurisdiction: Option<Jurisdiction>,
    pub locale: String,
    pub requested_by: Option<String>,
    pub note: Option<String>,
    /// Exits: send the leaver a copy of their own data (an export).
    pub copy: bool,
}

impl Ticket {
    /// SHA-256 of the normalised ticket: the same request written twice has the same digest.
    pub fn digest(&self) -> String {
        // Serialising a struct with fixed field order and BTreeMaps is deterministic.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }
}

fn ticket_err(origin: &str, msg: impl std::fmt::Display) -> Error {
    Error::new(Code::Ticket, format!("{origin}: {msg}"))
}

fn text_field(origin: &str, name: &str, v: Option<String>, max: usize) -> Result<Option<String>> {
    let Some(v) = v else { return Ok(None) };
    let t = v.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars().count() > max {
        return Err(ticket_err(
            origin,
            format!("{name} is longer than {max} characters"),
        ));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ticket_err(
            origin,
            format!("{name} contains control characters"),
        ));
    }
    Ok(Some(t.to_owned()))
}

fn identities(
    origin: &str,
    field: &str,
    raw: BTreeMap<String, serde_json::Value>,
) -> Result<Identities> {
    let mut out = Identities::new();
    for (k, v) in raw {
        let kind: IdentityKind = k
            .parse()
            .map_err(|e| ticket_err(origin, format!("{field}.{k}: {e}")))?;
        let s = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err(ticket_err(origin, format!("{field}.{k} must be a string"))),
        };
        let n = normalize(kind, &s).map_err(|e| ticket_err(origin, format!("{field}.{k} {e}")))?;
        out.insert(kind, n);
    }
    if out.is_empty() {
        return Err(ticket_err(
            origin,
            format!("{field} names no identity (email, phone, employee_id or customer_id)"),
        ));
    }
    Ok(out)
}

fn date(origin: &str, field: &str, s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| ticket_err(origin, format!("{field} is not a date (YYYY-MM-DD)")))
}

/// Parse and validate a JSON ticket. `origin` names where it came from (a file path, "the
/// request body") and starts every error message. `handover_required`: exits must name a
/// successor.
pub fn parse_ticket(bytes: &[u8], origin: &str, handover_required: bool) -> Result<Ticket> {
    if bytes.len() > MAX_TICKET_BYTES {
        return Err(Error::new(
            Code::TooLarge,
            format!(
                "{origin}: ticket is {} bytes; the limit is {MAX_TICKET_BYTES}",
                bytes.len()
            ),
        ));
    }
    let raw: RawTicket = {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| ticket_err(origin, shape_error(&e)))?;
        de.end()
            .map_err(|e| ticket_err(origin, format!("malformed ticket: {e}")))?;
        raw
    };
    let kind: RequestKind = raw.kind.parse().map_err(|_| {
        ticket_err(
            origin,
            "kind: not a request kind (expected erasure, exit or access)",
        )
    })?;
    let external_id = text_field(origin, "external_id", raw.external_id, 128)?;
    if external_id
        .as_deref()
        .is_some_and(|e| e.contains('\n') || e.contains('\t'))
    {
        return Err(ticket_err(origin, "external_id must be one line"));
    }
    let subject = identities(origin, "subject", raw.subject.0)?;
    let jurisdiction = raw
        .jurisdiction
        .map(|j| {
            j.parse::<Jurisdiction>().map_err(|_| {
                ticket_err(
                    origin,
                    "jurisdiction: not a jurisdiction (expected GDPR or PIPL)",
                )
            })
        })
        .transpose()?;
    let locale = match raw.locale.as_deref().map(str::trim) {
        None | Some("") => "en".to_owned(),
        Some(l) => LOCALES
            .iter()
            .find(|x| x.eq_ignore_ascii_case(l) || (l.eq_ignore_ascii_case("zh") && **x == "zh-CN"))
            .map(|x| (*x).to_owned())
            .ok_or_else(|| ticket_err(origin, "locale: not a supported language (en or zh-CN)"))?,
    };
    let exit_date = raw
        .exit_date
        .as_deref()
        .map(|s| date(origin, "exit_date", s))
        .transpose()?;
    let successor = raw
        .successor
        .map(|s| identities(origin, "successor", s.0))
        .transpose()?;
    match kind {
        RequestKind::Exit => {
            if exit_date.is_none() {
                return Err(ticket_err(
                    origin,
                    "an exit ticket needs exit_date (YYYY-MM-DD)",
                ));
            }
            if handover_required && successor.is_none() {
                return Err(ticket_err(
                    origin,
                    "an exit ticket needs a successor (the policies hand over customers and open deals)",
                ));
            }
            if let Some(s) = &successor
                && s.iter().any(|(k, v)| subject.get(k) == Some(v))
            {
                return Err(ticket_err(origin, "the successor cannot be the leaver"));
            }
        }
        RequestKind::Erasure | RequestKind::Access => {
            if exit_date.is_some() || successor.is_some() || raw.copy {
                return Err(ticket_err(
                    origin,
                    format!("exit_date, successor and copy only go with kind exit, not {kind}"),
                ));
            }
        }
    }
    Ok(Ticket {
        kind,
        external_id,
        subject,
        exit_date,
        successor,
        jurisdiction,
        locale,
        requested_by: text_field(origin, "requested_by", raw.requested_by, 200)?,
        note: text_field(origin, "note", raw.note, 2000)?,
        copy: raw.copy,
    })
}

/// The door a ticket came through (stored as the request's `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Door {
    Cli,
    Api,
    Inbox,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Cli => "cli",
            Door::Api => "api",
            Door::Inbox => "inbox",
        }
    }
}

impl std::fmt::Display for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Which door a ticket came through, and whether its identity is trusted.
#[derive(Debug, Clone)]
pub struct Source {
    pub door: Door,
    /// Who submitted it (recorded in the history).
    pub actor: String,
    /// HR systems and DPO entry are trusted; self-service must verify by email.
    pub trusted: bool,
}

/// What a submission did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Submitted {
    pub id: String,
    pub created: bool,
    pub state: State,
    /// For an untrusted submission that created a request: the token of its verification
    /// link (shown once; only its hash is stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_token: Option<String>,
}

/// Store a ticket as a request (or find the request it already is). Committed together
/// with the tickets other callers submit at the same moment (`Store::insert_request`);
/// its answer is its own.
pub async fn submit(
    ctx: &Context,
    ticket: &Ticket,
    raw_body: &str,
    source: &Source,
    now: DateTime<Utc>,
) -> Result<Submitted> {
    let (new, verify_token) = prepare(ctx, ticket, raw_body, source, now)?;
    let (kind, state) = (new.kind, new.state);
    let inserted = ctx.store.insert_request(new).await?;
    submitted(ctx, inserted, kind, state, verify_token, source).await
}

/// A ticket of a list, with its raw body and where it came from (`"list.csv: line 3"`),
/// which every error about it names.
pub type Listed<'a> = (&'a Ticket, &'a str, Option<String>);

/// Store several tickets in one transaction, whole or not at all (a CSV exit list): one
/// that fails (an implausible exit date, an external id already naming another ticket)
/// stores none of them, and the error names its origin.
pub async fn submit_all(
    ctx: &Context,
    tickets: &[Listed<'_>],
    source: &Source,
    now: DateTime<Utc>,
) -> Result<Vec<Submitted>> {
    let named = |origin: &Option<String>, e: Error| match origin {
        Some(o) => Error::new(e.code, format!("{o}: {}", e.message)),
        None => e,
    };
    let mut prepared = Vec::with_capacity(tickets.len());
    for (ticket, raw, origin) in tickets {
        prepared.push(prepare(ctx, ticket, raw, source, now).map_err(|e| named(origin, e))?);
    }
    let news: Vec<&NewRequest> = prepared.iter().map(|(n, _)| n).collect();
    let inserted = ctx.store.insert_requests(&news).await.map_err(|(i, e)| {
        match i.and_then(|i| tickets.get(i)) {
            Some((_, _, origin)) => named(origin, e),
            None => e,
        }
    })?;
    let mut out = Vec::with_capacity(inserted.len());
    for ((new, verify_token), ins) in prepared.into_iter().zip(inserted) {
        out.push(submitted(ctx, ins, new.kind, new.state, verify_token, source).await?);
    }
    Ok(out)
}

/// What the submitter is told of a ticket the store took.
async fn submitted(
    ctx: &Context,
    inserted: Inserted,
    kind: RequestKind,
    state: State,
    verify_token: Option<String>,
    source: &Source,
) -> Result<Submitted> {
    Ok(match inserted {
        Inserted::Created(id) => {
            tracing::info!(request = %id, kind = %kind, door = %source.door, "request received");
            Submitted {
                id,
                created: true,
                state,
                verify_token,
            }
        }
        Inserted::Existing(id) => {
            let row = ctx.store.request(&id).await?;
            Submitted {
                id,
                created: false,
                state: row.state,
                verify_token: None,
            }
        }
    })
}

/// The request a ticket makes (with its acknowledgement), and the token of its
/// verification link for an untrusted door.
fn prepare(
    ctx: &Context,
    ticket: &Ticket,
    raw_body: &str,
    source: &Source,
    now: DateTime<Utc>,
) -> Result<(NewRequest, Option<String>)> {
    if let Some(exit) = ticket.exit_date {
        let today = ctx.today(now);
        let (past, future) = (&ctx.intake.exit_date_past, &ctx.intake.exit_date_future);
        let earliest = past.sub_calendar(today).unwrap_or(NaiveDate::MIN);
        let latest = future.add_calendar(today).unwrap_or(NaiveDate::MAX);
        if exit < earliest || exit > latest {
            return Err(Error::new(
                Code::Ticket,
                format!(
                    "exit_date {exit} is not plausible: it must lie between {earliest} and {latest} \
                     (at most {past} before and {future} after the day of receipt; [intake] in the configuration)"
                ),
            ));
        }
    }
    let jurisdiction = ticket
        .jurisdiction
        .unwrap_or(ctx.policies.deadlines.default);
    let state = if source.trusted {
        State::PendingReview
    } else {
        State::Unverified
    };
    let today = ctx.today(now);
    let clock_runs = ctx.policies.deadlines.clock_start == ClockStart::Receipt || source.trusted;
    let (clock_start, due) = if clock_runs {
        let dl = ctx.initial_deadline(jurisdiction, today)?;
        (Some(today), Some(dl.due))
    } else {
        (None, None)
    };
    let verify_token = (!source.trusted).then(|| {
        use rand::Rng;
        let bytes: [u8; 24] = rand::rng().random();
        hex::encode(bytes)
    });
    let mut ids: Vec<IdentityRow> = ticket
        .subject
        .iter()
        .map(|(k, v)| IdentityRow {
            role: Role::Subject,
            kind: *k,
            value: v.clone(),
        })
        .collect();
    if let Some(s) = &ticket.successor {
        ids.extend(s.iter().map(|(k, v)| IdentityRow {
            role: Role::Successor,
            kind: *k,
            value: v.clone(),
        }));
    }
    let mut new = NewRequest {
        id: crate::store::new_id(),
        kind: ticket.kind,
        external_id: ticket.external_id.clone(),
        ticket_digest: ticket.digest(),
        ticket_body: raw_body.to_owned(),
        state,
        jurisdiction,
        locale: ticket.locale.clone(),
        source: source.door.as_str().to_owned(),
        requested_by: ticket.requested_by.clone(),
        exit_date: ticket.exit_date,
        wants_copy: ticket.copy,
        received_at: now,
        verified_at: source.trusted.then_some(now),
        clock_start,
        due_date: due,
        verify_token_sha256: verify_token
            .as_ref()
            .map(|t| hex::encode(Sha256::digest(t.as_bytes()))),
        identities: ids,
        actor: source.actor.clone(),
        mails: Vec::new(),
    };
    // The acknowledgement (and verification link) are written with the request itself.
    new.mails = ctx
        .mail
        .received(&new, &ticket.subject, verify_token.as_deref(), ctx.zone())?;
    Ok((new, verify_token))
}

/// Confirm a self-service request's identity by the token of its verification link.
pub async fn verify_token(
    ctx: &Context,
    token: &str,
    now: DateTime<Utc>,
) -> Result<crate::lifecycle::Request> {
    let hash = hex::encode(Sha256::digest(token.trim().as_bytes()));
    let row = ctx
        .store
        .request_by_verify_token(&hash)
        .await?
        .ok_or_else(|| Error::new(Code::NotFound, "this verification link is not valid"))?;
    if row.state != State::Unverified {
        return ctx.request(&row.id).await;
    }
    ctx.decide(
        &row.id,
        crate::lifecycle::Decision::Verify,
        "subject (email link)",
        None,
        now,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Ticket> {
        parse_ticket(s.as_bytes(), "t.json", true)
    }

    #[test]
    fn shape_errors_say_where_and_what_was_expected() {
        let cases = [
            (
                r#"{"kind":"erasure","subject":"a@b.example"}"#,
                "t.json: malformed ticket: subject: a string where a map was expected (line 1, column 41)",
            ),
            (
                r#"{"kind":"erasure","subject":{"email":"a@b.example","email":"c@d.example"}}"#,
                "t.json: malformed ticket: subject: the key `email` is given twice (line 1, column 73)",
            ),
            (
                r#"{"kind":"erasure","kind":"exit","subject":{}}"#,
                "t.json: malformed ticket: `kind` is given twice (line 1, column 24)",
            ),
            (
                r#"{"kind":"erasure","subject":{}} trailing"#,
                "t.json: malformed ticket: trailing characters at line 1 column 33",
            ),
        ];
        for (ticket, want) in cases {
            assert_eq!(parse(ticket).unwrap_err().message, want, "{ticket}");
        }
    }

    #[test]
    fn parses_the_issue_examples() {
        let t =
            parse(r#"{"kind":"erasure","external_id":"T-1","subject":{"email":"a@b.example"}}"#)
                .unwrap();
        assert_eq!(t.kind, RequestKind::Erasure);
        let t = parse(r#"{"kind":"exit","external_id":"HR-7","subject":{"email":"x@corp.example","employee_id":"E100"},"exit_date":"2026-12-31","successor":{"employee_id":"E200"}}"#).unwrap();
        assert_eq!(t.exit_date, NaiveDate::from_ymd_opt(2026, 12, 31));
        assert_eq!(t.successor.unwrap()[&IdentityKind::EmployeeId], "E200");
    }

    #[test]
    fn the_same_ticket_written_differently_has_one_digest() {
        let a =
            parse(r#"{"kind":"erasure","external_id":"T-1","subject":{"email":"A@B.example"}}"#)
                .unwrap();
        let b = parse(
            r#"{ "subject": {"email": " a@b.example"}, "external_id": "T-1", "kind": "erasure" }"#,
        )
        .unwrap();
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn bad_tickets_say_what_and_where() {
        let cases = [
            (
                r#"{"kind":"erasure","subject":{"email":"a@b.example"}"#,
                "malformed",
            ),
            (
                r#"{"kind":"erase","subject":{"email":"a@b.example"}}"#,
                "not a request kind",
            ),
            (
                r#"{"kind":"erasure","subject":{"email":"nope"}}"#,
                "subject.email is not a valid email",
            ),
            (r#"{"kind":"erasure","subject":{}}"#, "names no identity"),
            (
                r#"{"kind":"erasure","subject":{"passport":"X1"}}"#,
                "unknown identity kind",
            ),
            (
                r#"{"kind":"erasure","subject":{"email":"a@b.example"},"colour":"red"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"kind":"exit","subject":{"employee_id":"E1"},"exit_date":"2026-02-30","successor":{"employee_id":"E2"}}"#,
                "exit_date",
            ),
            (
                r#"{"kind":"exit","subject":{"employee_id":"E1"},"exit_date":"2026-02-03"}"#,
                "needs a successor",
            ),
            (
                r#"{"kind":"exit","subject":{"employee_id":"E1"},"exit_date":"2026-02-03","successor":{"employee_id":"E1"}}"#,
                "cannot be the leaver",
            ),
            (
                r#"{"kind":"erasure","subject":{"email":"a@b.example"},"exit_date":"2026-02-03"}"#,
                "only go with kind exit",
            ),
            (
                r#"{"kind":"erasure","subject":{"email":"a@b.example"},"jurisdiction":"CCPA"}"#,
                "jurisdiction",
            ),
            (
                r#"{"kind":"erasure","subject":{"email":"a@b.example"},"locale":"fr"}"#,
                "locale",
            ),
            (r#"[1,2]"#, "malformed"),
        ];
        for (body, want) in cases {
            let e = parse(body).unwrap_err();
            assert_eq!(e.code, Code::Ticket, "{body}");
            assert!(e.message.starts_with("t.json: "), "{}", e.message);
            assert!(
                e.message.contains(want),
                "{body}: {} lacks {want:?}",
                e.message
            );
        }
    }

    #[test]
    fn oversized_tickets_are_refused_before_parsing() {
        let big = vec![b' '; MAX_TICKET_BYTES + 1];
        let e = parse_ticket(&big, "body", false).unwrap_err();
        assert!(e.message.contains("limit"));
    }
}
