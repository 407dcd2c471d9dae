//! Errors with a stable code, a human message and the caller's location.
//!
//! Every error that reaches a user (CLI, HTTP, inbox `.error.txt`) carries a [`Code`]
//! whose string form never changes, so scripts and dashboards can match on it. Messages
//! name *what* and *where* (file, line, field) but never echo personal data beyond what
//! the caller already sent.

use std::fmt;
use std::panic::Location;

/// Stable error codes. The string form (`Code::as_str`) is part of the public interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The configuration file or an environment override is invalid.
    Config,
    /// A policy file does not parse or does not validate.
    Policy,
    /// A ticket is malformed, incomplete or too large.
    Ticket,
    /// A body or file over its size limit.
    TooLarge,
    /// The same external id was sent with a different ticket.
    Conflict,
    /// No request (or other object) with that id.
    NotFound,
    /// An id prefix matches more than one request.
    Ambiguous,
    /// A state transition that the lifecycle does not allow.
    IllegalTransition,
    /// A deadline extension that the law or the policy does not allow.
    Deadline,
    /// The plan cannot be made (uncovered category, missing successor, ...).
    PlanBlocked,
    /// A target system could not be reached or queried.
    Target,
    /// The state store failed.
    Store,
    /// Missing or insufficient credentials.
    Unauthorized,
    /// Authenticated, but the role may not do this.
    Forbidden,
    /// A file could not be read or written.
    Io,
    /// A command-line argument is invalid.
    Usage,
    /// A client too slow to send its request (HTTP 408).
    Timeout,
    /// Too many attempts from one address in a short time (HTTP 429).
    RateLimited,
    /// Anything else; a bug.
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Config => "config_invalid",
            Code::Policy => "policy_invalid",
            Code::Ticket => "ticket_invalid",
            Code::TooLarge => "too_large",
            Code::Conflict => "external_id_conflict",
            Code::NotFound => "not_found",
            Code::Ambiguous => "ambiguous_id",
            Code::IllegalTransition => "illegal_transition",
            Code::Deadline => "deadline_rule",
            Code::PlanBlocked => "plan_blocked",
            Code::Target => "target_failed",
            Code::Store => "store_failed",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::Io => "io_failed",
            Code::Usage => "usage",
            Code::Timeout => "timeout",
            Code::RateLimited => "rate_limited",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status an API answer with this code carries.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Ticket | Code::Usage | Code::Deadline => 400,
            Code::Unauthorized => 401,
            Code::Timeout => 408,
            Code::RateLimited => 429,
            Code::TooLarge => 413,
            Code::Forbidden => 403,
            Code::NotFound => 404,
            Code::Conflict | Code::IllegalTransition | Code::Ambiguous => 409,
            Code::PlanBlocked | Code::Policy => 422,
            Code::Target => 502,
            Code::Config | Code::Store | Code::Io | Code::Internal => 500,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The one error type of quietus.
#[derive(Debug, Clone)]
pub struct Error {
    pub code: Code,
    pub message: String,
    pub location: &'static Location<'static>,
    /// The state store could not be reached, or the connection to it was lost (see
    /// [`Error::store_unreachable`]): nothing about the work in hand failed, and it can be
    /// tried again as it is once the store answers.
    pub unreachable: bool,
}

impl Error {
    #[track_caller]
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            location: Location::caller(),
            unreachable: false,
        }
    }

    /// Whether this is the state store not answering (the server is down or restarting,
    /// the network or the connection is gone), not anything the work in hand did.
    pub fn store_unreachable(&self) -> bool {
        self.unreachable && self.code == Code::Store
    }

    /// Add context in front of the message ("while reading X: ...").
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.message, self.code)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand: `err(Code::Ticket, "...")`.
#[track_caller]
pub fn err<T>(code: Code, message: impl Into<String>) -> Result<T> {
    Err(Error::new(code, message))
}

impl From<sqlx::Error> for Error {
    #[track_caller]
    fn from(e: sqlx::Error) -> Self {
        // sqlx errors can quote values from the statement; database errors only carry the
        // server's message, which names constraints and columns, not bound values.
        if unreachable(&e) {
            let mut err = Error::new(
                Code::Store,
                format!("the state store cannot be reached: {e}"),
            );
            err.unreachable = true;
            return err;
        }
        Error::new(Code::Store, format!("database error: {e}"))
    }
}

/// A connection to the database could not be had or was lost: no connection within the
/// pool's wait, an I/O or TLS error, or the server ending the session (SQLSTATE class 08,
/// connection exception; 57P01 to 57P03, shut down or starting up). Any other error,
/// known or not, is not. (Of a target's database too: see `targets::exec`.)
pub(crate) fn unreachable(e: &sqlx::Error) -> bool {
    if let sqlx::Error::Database(d) = e {
        return d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03"));
    }
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

impl From<sqlx::migrate::MigrateError> for Error {
    #[track_caller]
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::new(Code::Store, format!("migration failed: {e}"))
    }
}

impl From<std::io::Error> for Error {
    #[track_caller]
    fn from(e: std::io::Error) -> Self {
        Error::new(Code::Io, e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    #[track_caller]
    fn from(e: serde_json::Error) -> Self {
        Error::new(Code::Internal, format!("JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_does_not_answer_is_told_apart_from_a_failing_statement() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for e in [sqlx::Error::PoolTimedOut, sqlx::Error::Io(refused)] {
            let e = Error::from(e);
            assert!(e.store_unreachable(), "{e}");
            assert_eq!(e.code, Code::Store);
            assert!(
                e.message.starts_with("the state store cannot be reached: "),
                "{e}"
            );
        }
        for e in [
            sqlx::Error::RowNotFound,
            sqlx::Error::Protocol("bad".into()),
        ] {
            let e = Error::from(e);
            assert!(!e.store_unreachable(), "{e}");
            assert!(e.message.starts_with("database error: "), "{e}");
        }
        assert!(!Error::new(Code::Store, "x").store_unreachable());
    }
}
