//! Request states, transitions with who and why, and deadlines.
//!
//! Every change of a request goes through [`decide`] or [`extend`]: the transition is
//! checked against the state machine ([`state::Decision::target`]), written with its
//! actor and reason in the same transaction as the new state, and refused when someone
//! else changed the request meanwhile.

pub mod calendar;
pub mod deadline;
pub mod notify;
pub mod state;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

pub use calendar::HolidayCalendar;
pub use state::{Decision, State};

use crate::error::{Code, Error, Result};
use crate::plan::{Plan, PlanInput};
use crate::policy::{ClockStart, Identities, Jurisdiction, Period, Policies, RequestKind};
use crate::store::{Changes, IdentityRow, NewPlan, RequestRow, Role, Store};

/// What the lifecycle needs: the store, the validated policies, the calendar, and the
/// target systems' pools (one per system for the process's life; every survey and task
/// goes through them).
pub struct Context {
    pub store: Store,
    pub policies: Policies,
    pub calendar: HolidayCalendar,
    pub targets: crate::targets::Pools,
    pub mail: notify::MailSettings,
    /// Plausibility bounds of exit dates (`[intake]`).
    pub intake: crate::config::IntakeConfig,
}

/// A request with its meaning.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: String,
    pub kind: RequestKind,
    pub external_id: Option<String>,
    pub state: State,
    pub held_from: Option<State>,
    pub jurisdiction: Jurisdiction,
    pub locale: String,
    pub source: String,
    pub requested_by: Option<String>,
    pub exit_date: Option<NaiveDate>,
    pub wants_copy: bool,
    pub received_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
    pub clock_start: Option<NaiveDate>,
    pub due_date: Option<NaiveDate>,
    pub original_due_date: Option<NaiveDate>,
    pub extended_at: Option<DateTime<Utc>>,
    pub extension_reason: Option<String>,
    pub subject: Identities,
    pub successor: Option<Identities>,
}

impl Request {
    /// A request from its stored row and identities. Every stored value is typed by the
    /// store (an unknown state, kind, jurisdiction or role fails to load, naming it).
    pub fn from_row(row: RequestRow, identities: &[IdentityRow]) -> Result<Request> {
        let (state, held_from, kind, jurisdiction) =
            (row.state, row.held_from, row.kind, row.jurisdiction);
        let mut subject = Identities::new();
        let mut successor = Identities::new();
        for i in identities {
            match i.role {
                Role::Subject => subject.insert(i.kind, i.value.clone()),
                Role::Successor => successor.insert(i.kind, i.value.clone()),
            };
        }
        Ok(Request {
            id: row.id,
            kind,
            external_id: row.external_id,
            state,
            held_from,
            jurisdiction,
            locale: row.locale,
            source: row.source,
            requested_by: row.requested_by,
            exit_date: row.exit_date,
            wants_copy: row.wants_copy,
            received_at: row.received_at,
            verified_at: row.verified_at,
            clock_start: row.clock_start,
            due_date: row.due_date,
            original_due_date: row.original_due_date,
            extended_at: row.extended_at,
            extension_reason: row.extension_reason,
            subject,
            successor: (!successor.is_empty()).then_some(successor),
        })
    }

    /// Days until the due date (negative when overdue); `None` while the clock has not
    /// started or once the request is answered.
    pub fn days_left(&self, today: NaiveDate) -> Option<i64> {
        if !self.state.deadline_runs() {
            return None;
        }
        self.due_date.map(|d| deadline::days_left(d, today))
    }

    pub fn is_overdue(&self, today: NaiveDate) -> bool {
        self.days_left(today).is_some_and(|d| d < 0)
    }

    pub fn plan_input(&self, policies: &Policies) -> PlanInput {
        PlanInput {
            request_id: self.id.clone(),
            kind: self.kind,
            jurisdiction: self.jurisdiction,
            request_date: deadline::local_date(self.received_at, policies.deadlines.timezone),
            exit_date: self.exit_date,
            has_successor: self.successor.is_some(),
            wants_copy: self.wants_copy,
        }
    }
}

impl Context {
    /// Close the state store and every target pool (at the end of a command or of
    /// `serve`).
    pub async fn close(&self) {
        self.targets.close().await;
        self.store.close().await;
    }

    /// "Today" where the policy counts days.
    pub fn today(&self, now: DateTime<Utc>) -> NaiveDate {
        deadline::local_date(now, self.policies.deadlines.timezone)
    }

    /// The zone every date shown to a person is in: the policy's.
    pub fn zone(&self) -> crate::clock::Zone {
        crate::clock::Zone(self.policies.deadlines.timezone)
    }

    /// The whole id of the request a person named on the command line or in the HTTP
    /// API (its whole id or a unique prefix): the one door from what is typed to an id.
    pub async fn resolve(&self, typed: &str) -> Result<String> {
        self.store
            .resolve(&crate::store::IdPrefix::parse(typed)?)
            .await
    }

    /// A request by its whole id (see [`Context::resolve`] for what a person types).
    pub async fn request(&self, id: &str) -> Result<Request> {
        let row = self.store.request(id).await?;
        let ids = self.store.identities(&row.id).await?;
        Request::from_row(row, &ids)
    }

    /// The response deadline of a request whose clock starts on `start`.
    pub fn initial_deadline(
        &self,
        j: Jurisdiction,
        start: NaiveDate,
    ) -> Result<deadline::Deadline> {
        deadline::initial(j, start, self.policies.deadlines.period(j), &self.calendar)
    }

    /// Survey the target systems and make the plan of a request, as of `now`.
    pub async fn plan(&self, req: &Request, now: DateTime<Utc>) -> Plan {
        let survey = crate::targets::survey(
            &self.targets,
            &self.policies.systems,
            &req.subject,
            req.successor.as_ref(),
        )
        .await;
        crate::plan::make(
            &req.plan_input(&self.policies),
            &self.policies,
            &survey,
            now,
        )
    }

    /// Take a decision on a request: verify, approve, reject, hold, release or cancel.
    /// Reject and hold need a reason. Approval needs a plan that is not blocked; the plan
    /// approved is saved with the decision.
    pub async fn decide(
        &self,
        id: &str,
        d: Decision,
        actor: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Request> {
        crate::text::printable("the actor", actor, false)?;
        if let Some(r) = reason {
            crate::text::printable("the reason", r, true)?;
        }
        let req = self.request(id).await?;
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if matches!(d, Decision::Reject | Decision::Hold) && reason.is_none() {
            return Err(Error::new(
                Code::Usage,
                format!("{} needs a reason (--reason)", d.as_str()),
            ));
        }
        if let Some(r) = reason
            && r.chars().count() > 2000
        {
            return Err(Error::new(
                Code::Usage,
                "a reason is at most 2000 characters",
            ));
        }
        let Some(to) = d.target(req.state, req.held_from) else {
            return Err(illegal(&req, d));
        };
        let mut changes = Changes::default();
        match d {
            Decision::Hold => changes.held_from = Some(Some(req.state)),
            Decision::Release => changes.held_from = Some(None),
            Decision::Verify => {
                changes.verified_at = Some(now);
                if self.policies.deadlines.clock_start == ClockStart::Verification
                    || req.due_date.is_none()
                {
                    let start = self.today(now);
                    let dl = self.initial_deadline(req.jurisdiction, start)?;
                    changes.clock_start = Some(start);
                    changes.due_date = Some(dl.due);
                    changes.original_due_date = Some(dl.due);
                }
            }
            Decision::Approve => {
                let plan = self.plan(&req, now).await;
                if plan.is_blocked() {
                    return Err(Error::new(
                        Code::PlanBlocked,
                        format!(
                            "request {} cannot be approved: its plan is blocked:\n- {}",
                            req.id,
                            plan.blocked.join("\n- ")
                        ),
                    ));
                }
                // Saved in the approval's own transaction: a lost race leaves no plan.
                changes.plan = Some(NewPlan {
                    policy_digest: plan.policy_digest.clone(),
                    body: serde_json::to_string(&plan)?,
                });
            }
            // A cancelled request's work never runs.
            Decision::Cancel => changes.cancel_open_tasks = true,
            Decision::Reject | Decision::Extend => {}
        }
        use crate::mail::vars::{self, Message};
        changes.mails = match d {
            Decision::Approve => self.mail.to_subject(
                &req,
                Message::Approval(vars::Approval {
                    request_id: req.id.clone(),
                    deadline: req.due_date.map(|d| self.zone().day(d)),
                }),
                Vec::new(),
            )?,
            Decision::Reject => self.mail.to_subject(
                &req,
                Message::Refusal(vars::Refusal {
                    request_id: req.id.clone(),
                    reasons: reason.unwrap_or_default().to_owned(),
                    jurisdiction: req.jurisdiction,
                }),
                Vec::new(),
            )?,
            Decision::Verify
            | Decision::Hold
            | Decision::Release
            | Decision::Cancel
            | Decision::Extend => Vec::new(),
        };
        self.store
            .transition(&req.id, req.state, to, actor, reason, now, &changes)
            .await?;
        self.request(&req.id).await
    }

    /// Extend the response deadline once, with a reason (sent to the subject).
    pub async fn extend(
        &self,
        id: &str,
        by: Period,
        reason: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Request> {
        crate::text::printable("the actor", actor, false)?;
        crate::text::printable("the reason", reason, true)?;
        let req = self.request(id).await?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(Error::new(
                Code::Usage,
                "extend needs a reason (--reason): it is sent to the subject",
            ));
        }
        if Decision::Extend.target(req.state, req.held_from).is_none() {
            return Err(illegal(&req, Decision::Extend));
        }
        let (Some(start), Some(original)) = (req.clock_start, req.original_due_date) else {
            return Err(Error::new(
                Code::Deadline,
                format!(
                    "request {}: its deadline has not started (it is not verified yet)",
                    req.id
                ),
            ));
        };
        let dl = deadline::extend(
            req.jurisdiction,
            start,
            original,
            req.extended_at.is_some(),
            by,
            self.today(now),
            &self.calendar,
        )?;
        let mails = self.mail.to_subject(
            &req,
            crate::mail::vars::Message::Extension(crate::mail::vars::Extension {
                request_id: req.id.clone(),
                deadline: self.zone().day(dl.due),
                reason: reason.to_owned(),
                original_deadline: self.zone().day(original),
                jurisdiction: req.jurisdiction,
            }),
            Vec::new(),
        )?;
        let changes = Changes {
            due_date: Some(dl.due),
            extended_at: Some(now),
            extension_reason: Some(reason.to_owned()),
            mails,
            ..Changes::default()
        };
        let why = format!(
            "deadline extended by {by} to {}: {reason}",
            self.zone().day(dl.due)
        );
        self.store
            .transition(
                &req.id,
                req.state,
                req.state,
                actor,
                Some(&why),
                now,
                &changes,
            )
            .await?;
        self.request(&req.id).await
    }
}

/// One line of the DPO's queue.
#[derive(Debug, Clone, Serialize)]
pub struct QueueItem {
    pub id: String,
    pub kind: RequestKind,
    pub state: State,
    pub jurisdiction: Jurisdiction,
    pub external_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub due_date: Option<NaiveDate>,
    pub days_left: Option<i64>,
    pub overdue: bool,
    pub extended: bool,
    /// For requests that need attention (or are retrying): the last task error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<String>,
    #[serde(skip)]
    pub request: Request,
}

impl Context {
    /// The queue: requests in `states` (all when empty), overdue first, then by days left;
    /// requests whose deadline does not run come last.
    pub async fn queue(
        &self,
        states: &[State],
        overdue_only: bool,
        today: NaiveDate,
    ) -> Result<Vec<QueueItem>> {
        let filter = crate::store::ListFilter {
            states: states.to_vec(),
            limit: None,
        };
        let rows = self.store.list_requests(&filter).await?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let identities = self.store.identities_of(&ids).await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let own = identities.get(&row.id).map(Vec::as_slice).unwrap_or(&[]);
            let req = Request::from_row(row.clone(), own)?;
            if overdue_only && !req.is_overdue(today) {
                continue;
            }
            items.push(QueueItem {
                id: req.id.clone(),
                kind: req.kind,
                state: req.state,
                jurisdiction: req.jurisdiction,
                external_id: req.external_id.clone(),
                received_at: req.received_at,
                due_date: req.due_date,
                days_left: req.days_left(today),
                overdue: req.is_overdue(today),
                extended: req.extended_at.is_some(),
                attention: None,
                request: req,
            });
        }
        for i in items
            .iter_mut()
            .filter(|i| matches!(i.state, State::NeedsAttention | State::Failed))
        {
            i.attention = self
                .store
                .tasks_of(&i.id)
                .await?
                .into_iter()
                .filter_map(|t| {
                    t.last_error
                        .map(|e| format!("task {} ({}): {e}", t.id, t.kind))
                })
                .next_back();
        }
        items.sort_by_key(|i| (i.days_left.unwrap_or(i64::MAX), i.received_at));
        Ok(items)
    }
}

fn illegal(req: &Request, d: Decision) -> Error {
    let hint = match (d, req.state) {
        (Decision::Extend, _) if req.extended_at.is_some() => {
            " (it was extended already)".to_owned()
        }
        (_, s) if s.is_terminal() => format!(" ({s} is final)"),
        (Decision::Approve, State::Unverified) => {
            " (the subject has not verified their identity yet)".to_owned()
        }
        _ => String::new(),
    };
    Error::new(
        Code::IllegalTransition,
        format!(
            "cannot {} request {}: it is {}{hint}",
            d.as_str(),
            req.id,
            req.state
        ),
    )
}
