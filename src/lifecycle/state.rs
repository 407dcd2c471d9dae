//! Request states and the transitions between them: the decisions people take and the
//! events the worker reports. This module is a leaf (it imports nothing of the crate), so
//! that the state store can store [`State`] typed and apply [`Event`]s inside its
//! transactions while the rules stay here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a request is in its life (DESIGN.md section 7).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum State {
    /// Self-service request waiting for the subject to confirm their identity.
    Unverified,
    /// Waiting for a DPO.
    PendingReview,
    Approved,
    Scheduled,
    Running,
    Completed,
    /// Refused, with reasons sent.
    Rejected,
    /// Legal hold: nothing destructive happens.
    OnHold,
    Cancelled,
    /// A task failed; retrying.
    Failed,
    /// The retry budget ran out; a person must look.
    NeedsAttention,
    /// A restore put back what the request changed; its pending tasks are cancelled.
    Restored,
}

impl State {
    pub const ALL: [State; 12] = [
        State::Unverified,
        State::PendingReview,
        State::Approved,
        State::Scheduled,
        State::Running,
        State::Completed,
        State::Rejected,
        State::OnHold,
        State::Cancelled,
        State::Failed,
        State::NeedsAttention,
        State::Restored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Unverified => "unverified",
            State::PendingReview => "pending_review",
            State::Approved => "approved",
            State::Scheduled => "scheduled",
            State::Running => "running",
            State::Completed => "completed",
            State::Rejected => "rejected",
            State::OnHold => "on_hold",
            State::Cancelled => "cancelled",
            State::Failed => "failed",
            State::NeedsAttention => "needs_attention",
            State::Restored => "restored",
        }
    }

    /// No further transitions.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Completed | State::Rejected | State::Cancelled | State::Restored
        )
    }

    /// Whether the response deadline still runs (the request is not answered yet).
    pub fn deadline_runs(self) -> bool {
        !self.is_terminal()
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state {s:?} (one of {})", all.join(", "))
            })
    }
}

/// A decision a person (or a system) takes on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Verify,
    Approve,
    Reject,
    Hold,
    Release,
    Cancel,
    Extend,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Verify => "verify",
            Decision::Approve => "approve",
            Decision::Reject => "reject",
            Decision::Hold => "hold",
            Decision::Release => "release",
            Decision::Cancel => "cancel",
            Decision::Extend => "extend",
        }
    }

    /// The state a decision leads to from `from`, or `None` when it is not allowed.
    /// `held_from` is the state a held request returns to on release.
    pub fn target(self, from: State, held_from: Option<State>) -> Option<State> {
        use State::*;
        match (self, from) {
            (Decision::Verify, Unverified) => Some(PendingReview),
            (Decision::Approve, PendingReview) => Some(Approved),
            (Decision::Reject, Unverified | PendingReview | OnHold | NeedsAttention) => {
                Some(Rejected)
            }
            (Decision::Hold, s) if !s.is_terminal() && s != OnHold && s != Running => Some(OnHold),
            (Decision::Release, OnHold) => Some(held_from.unwrap_or(PendingReview)),
            (Decision::Cancel, s) if !s.is_terminal() && s != Running => Some(Cancelled),
            // An extension changes the deadline, not the state.
            (Decision::Extend, s) if !s.is_terminal() => Some(s),
            _ => None,
        }
    }
}

/// What the worker (or a restore) reports about a request's work. The lifecycle's rules
/// say what each does to a request; the store applies them in the transaction that records
/// the task outcome, so a task's state and its request's state never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The approved plan became tasks.
    Schedule,
    /// The first task of the request started.
    Start,
    /// A task failed and will be retried.
    TaskFailed,
    /// A task's retry budget is spent.
    GiveUp,
    /// A person gave a task that needed attention a fresh budget.
    Retry,
    /// Every task that answers the request (all but the retention follow-ups) is done.
    Complete,
    /// A restore put back what the request changed.
    Restore,
    /// The policies changed the approved plan before it was carried out: the DPO decides
    /// again.
    PlanChanged,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Schedule => "schedule",
            Event::Start => "start",
            Event::TaskFailed => "task_failed",
            Event::GiveUp => "give_up",
            Event::Retry => "retry",
            Event::Complete => "complete",
            Event::Restore => "restore",
            Event::PlanChanged => "plan_changed",
        }
    }

    /// The state an event leads to from `from`; `None` when it changes nothing (a held,
    /// cancelled or finished request is not moved by its work).
    pub fn target(self, from: State) -> Option<State> {
        use State::*;
        match (self, from) {
            (Event::Schedule, Approved) => Some(Scheduled),
            (Event::Start, Scheduled) => Some(Running),
            (Event::TaskFailed, Scheduled | Running) => Some(Failed),
            (Event::GiveUp, Scheduled | Running | Failed) => Some(NeedsAttention),
            (Event::Retry, NeedsAttention) => Some(Failed),
            (Event::Complete, Scheduled | Running | Failed) => Some(Completed),
            // A restore undoes what a request's tasks changed, wherever the request stands
            // (held, cancelled or sent back to review after some of its work ran, too):
            // its pending tasks are cancelled with it.
            (
                Event::Restore,
                Approved | Scheduled | Running | Failed | NeedsAttention | Completed | OnHold
                | Cancelled | PendingReview,
            ) => Some(Restored),
            (Event::PlanChanged, Scheduled | Running | Failed | NeedsAttention) => {
                Some(PendingReview)
            }
            (
                Event::Schedule
                | Event::Start
                | Event::TaskFailed
                | Event::GiveUp
                | Event::Retry
                | Event::Complete
                | Event::Restore
                | Event::PlanChanged,
                Unverified | PendingReview | Approved | Scheduled | Running | Completed | Rejected
                | OnHold | Cancelled | Failed | NeedsAttention | Restored,
            ) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
        }
    }

    #[test]
    fn terminal_states_allow_nothing() {
        for s in [
            State::Completed,
            State::Rejected,
            State::Cancelled,
            State::Restored,
        ] {
            for d in [
                Decision::Verify,
                Decision::Approve,
                Decision::Reject,
                Decision::Hold,
                Decision::Release,
                Decision::Cancel,
                Decision::Extend,
            ] {
                assert_eq!(d.target(s, None), None, "{} from {s}", d.as_str());
            }
        }
    }

    #[test]
    fn work_never_moves_a_held_or_finished_request() {
        let all = [
            Event::Schedule,
            Event::Start,
            Event::TaskFailed,
            Event::GiveUp,
            Event::Retry,
            Event::Complete,
        ];
        for s in [
            State::OnHold,
            State::Cancelled,
            State::Rejected,
            State::Completed,
            State::Restored,
        ] {
            for e in all {
                assert_eq!(e.target(s), None, "{} from {s}", e.as_str());
            }
        }
        assert_eq!(
            Event::Restore.target(State::Completed),
            Some(State::Restored)
        );
        assert_eq!(Event::Restore.target(State::OnHold), Some(State::Restored));
        assert_eq!(Event::Restore.target(State::Restored), None);
        assert_eq!(Event::Restore.target(State::Unverified), None);
    }

    #[test]
    fn hold_and_release_return_to_where_it_was() {
        assert_eq!(
            Decision::Hold.target(State::Approved, None),
            Some(State::OnHold)
        );
        assert_eq!(
            Decision::Release.target(State::OnHold, Some(State::Approved)),
            Some(State::Approved)
        );
        assert_eq!(Decision::Approve.target(State::OnHold, None), None);
        assert_eq!(Decision::Approve.target(State::Rejected, None), None);
    }
}
