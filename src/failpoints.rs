//! Failpoints: named places in the deleting paths where a test (or an operator rehearsing
//! a disaster) can make the process die or wait, deterministically, in a build with the
//! `failpoints` feature. The tests build with it (a dev-dependency of the crate on
//! itself); `cargo build` and `cargo install` do not, and there [`hit`] is nothing and
//! setting `QUIETUS_FAILPOINTS` is an error, so a release binary cannot be made to crash
//! by its environment.
//!
//! `QUIETUS_FAILPOINTS="point=actions;point=actions"`, where `actions` is the `fail`
//! crate's syntax (`[p%][count*]task[(arg)]`, joined by `->`), e.g.
//! `after_backup=return(kill)`, `in_batch=2*off->return(stop)`, `collect=sleep(3000)`.
//! A `return` is quietus's: `return` or `return(kill)` prints `quietus-failpoint: POINT`
//! and SIGKILLs the process; `return(stop)` prints `quietus-test-stop: POINT` and waits
//! for ever (for a test that kills it from outside). The points, in the order of the
//! flow, are [`Point`]; an unknown point or action is an error naming the entry.

use std::borrow::Cow;

use crate::error::{Code, Error, Result};

/// Where a failpoint can fire, in the order of the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A task begins collecting what it will change (nothing written yet).
    Collect,
    /// Rows are in the archive file, which is not finished (not yet renamed into place).
    WritingArchive,
    /// The archive is finished; it has not been read back yet.
    ReadBack,
    /// The archive was read back and verifies; it is not recorded yet.
    BeforeRecord,
    /// The backup is recorded (the task is `backed_up`); nothing is changed yet.
    AfterBackup,
    /// Inside the target's transaction, after the first statement of a batch.
    InBatch,
    /// The `n`th batch of changes committed (1-based).
    AfterBatch(u64),
    /// Every batch committed; the re-check has not run.
    AfterApply,
    /// The re-check of what was changed is running.
    Recheck,
    /// Receipts are about to be issued (nothing of them written).
    Receipt,
    /// Inside the store transaction that appends receipts to the log.
    LogAppend,
    /// The receipts and log entries committed; the receipt files and the checkpoint file
    /// are not written yet.
    Checkpoint,
    /// The transport delivered a message; the outbox does not know yet.
    OutboxSend,
}

impl Point {
    /// Every point without an argument, in the order of the flow (and `after_batch_1`).
    pub const ALL: [Point; 13] = [
        Point::Collect,
        Point::WritingArchive,
        Point::ReadBack,
        Point::BeforeRecord,
        Point::AfterBackup,
        Point::InBatch,
        Point::AfterBatch(1),
        Point::AfterApply,
        Point::Recheck,
        Point::Receipt,
        Point::LogAppend,
        Point::Checkpoint,
        Point::OutboxSend,
    ];

    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Point::Collect => "collect",
            Point::WritingArchive => "writing_archive",
            Point::ReadBack => "read_back",
            Point::BeforeRecord => "before_record",
            Point::AfterBackup => "after_backup",
            Point::InBatch => "in_batch",
            Point::AfterBatch(n) => return Cow::Owned(format!("after_batch_{n}")),
            Point::AfterApply => "after_apply",
            Point::Recheck => "recheck",
            Point::Receipt => "receipt",
            Point::LogAppend => "log_append",
            Point::Checkpoint => "checkpoint",
            Point::OutboxSend => "outbox_send",
        })
    }

    /// The point a name means; `None` for a name that is none.
    pub fn parse(name: &str) -> Option<Point> {
        if let Some(n) = name.strip_prefix("after_batch_") {
            // Digits only, no leading zero: one spelling per point.
            let digits = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
            if !digits || n.starts_with('0') {
                return None;
            }
            return n.parse::<u64>().ok().map(Point::AfterBatch);
        }
        Point::ALL
            .into_iter()
            .filter(|p| !matches!(p, Point::AfterBatch(_)))
            .find(|p| p.name() == name)
    }
}

/// What a `return` does at a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// SIGKILL the process (as `kill -9` would, at exactly this place).
    Kill,
    /// Say so on stderr and wait to be killed from outside.
    Stop,
}

impl Return {
    fn parse(arg: Option<&str>) -> Option<Return> {
        match arg {
            None | Some("kill") => Some(Return::Kill),
            Some("stop") => Some(Return::Stop),
            Some(_) => None,
        }
    }
}

/// One entry of `QUIETUS_FAILPOINTS`: a point and its actions, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub point: Point,
    pub actions: String,
}

/// The `fail` crate's tasks (what an action does), as its syntax names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Off,
    Return,
    Sleep,
    Panic,
    Print,
    Pause,
    Yield,
    Delay,
}

impl Task {
    const ALL: [Task; 8] = [
        Task::Off,
        Task::Return,
        Task::Sleep,
        Task::Panic,
        Task::Print,
        Task::Pause,
        Task::Yield,
        Task::Delay,
    ];

    fn name(self) -> &'static str {
        match self {
            Task::Off => "off",
            Task::Return => "return",
            Task::Sleep => "sleep",
            Task::Panic => "panic",
            Task::Print => "print",
            Task::Pause => "pause",
            Task::Yield => "yield",
            Task::Delay => "delay",
        }
    }
}

/// Parse `QUIETUS_FAILPOINTS`'s value: entries separated by `;`, each `point=actions`.
pub fn parse(spec: &str) -> Result<Vec<Entry>> {
    let bad = |entry: &str, why: String| {
        Error::new(
            Code::Config,
            format!("QUIETUS_FAILPOINTS: entry {entry:?}: {why}"),
        )
    };
    let mut out = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, actions)) = entry.split_once('=') else {
            return Err(bad(entry, "expected point=actions".into()));
        };
        let point = Point::parse(name.trim()).ok_or_else(|| {
            let known: Vec<String> = Point::ALL.iter().map(|p| p.name().into_owned()).collect();
            bad(
                entry,
                format!(
                    "no such point; the points are {} (after_batch_N for any N ≥ 1)",
                    known.join(", ")
                ),
            )
        })?;
        for action in actions.split("->") {
            check_action(action.trim()).map_err(|why| bad(entry, why))?;
        }
        out.push(Entry {
            point,
            actions: actions.trim().to_owned(),
        });
    }
    Ok(out)
}

/// One action of the `fail` crate's syntax, `[p%][count*]task[(arg)]`, with quietus's
/// meaning of `return`'s argument.
fn check_action(action: &str) -> std::result::Result<(), String> {
    let mut rest = action;
    if let Some((p, r)) = rest.split_once('%') {
        let ok = p
            .trim()
            .parse::<f32>()
            .is_ok_and(|p| (0.0..=100.0).contains(&p));
        if !ok {
            return Err(format!("{p:?} is not a percentage"));
        }
        rest = r;
    }
    if let Some((n, r)) = rest.split_once('*') {
        if n.trim().parse::<u64>().is_err() {
            return Err(format!("{n:?} is not a count"));
        }
        rest = r;
    }
    let (task, arg) = match rest.split_once('(') {
        Some((t, a)) => match a.strip_suffix(')') {
            Some(a) => (t.trim(), Some(a.trim())),
            None => return Err(format!("{action:?}: an unclosed parenthesis")),
        },
        None => (rest.trim(), None),
    };
    let Some(task) = Task::ALL.into_iter().find(|t| t.name() == task) else {
        let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
        return Err(format!(
            "{task:?} is not an action; expected one of {}",
            names.join(", ")
        ));
    };
    match task {
        Task::Return if Return::parse(arg).is_none() => Err(format!(
            "return({}): expected return, return(kill) or return(stop)",
            arg.unwrap_or_default()
        )),
        Task::Sleep | Task::Delay if arg.is_none_or(|a| a.parse::<u64>().is_err()) => {
            let name = task.name();
            Err(format!("{name} needs milliseconds, e.g. {name}(1000)"))
        }
        Task::Return
        | Task::Sleep
        | Task::Delay
        | Task::Off
        | Task::Panic
        | Task::Print
        | Task::Pause
        | Task::Yield => Ok(()),
    }
}

/// Read `QUIETUS_FAILPOINTS` once, at process start. Without the `failpoints` feature a
/// set value is an error (this binary cannot honour it, and must not pretend to).
pub fn init() -> Result<()> {
    let spec = match std::env::var("QUIETUS_FAILPOINTS") {
        Ok(s) if !s.trim().is_empty() => s,
        Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(()),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(Error::new(
                Code::Config,
                "QUIETUS_FAILPOINTS is not valid UTF-8",
            ));
        }
    };
    configure(&spec)
}

#[cfg(feature = "failpoints")]
fn configure(spec: &str) -> Result<()> {
    for e in parse(spec)? {
        fail::cfg(e.point.name(), &e.actions).map_err(|why| {
            Error::new(
                Code::Config,
                format!("QUIETUS_FAILPOINTS: {}: {why}", e.point.name()),
            )
        })?;
    }
    Ok(())
}

/// Without the feature, any value is refused before it is read: whatever it says, this
/// binary cannot honour it.
#[cfg(not(feature = "failpoints"))]
fn configure(_spec: &str) -> Result<()> {
    Err(Error::new(
        Code::Config,
        "QUIETUS_FAILPOINTS is set, but this binary was built without the `failpoints` feature; unset it (or build with --features failpoints)",
    ))
}

/// A failpoint: nothing unless `QUIETUS_FAILPOINTS` configured this point.
#[cfg(feature = "failpoints")]
pub fn hit(point: Point) {
    let name = point.name();
    let ret = fail::eval(&name, |arg| Return::parse(arg.as_deref()));
    match ret.flatten() {
        None => {}
        Some(Return::Stop) => {
            eprintln!("quietus-test-stop: {name}");
            let forever = || loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            };
            // Only this task stops: on a multi-threaded runtime the worker's other tasks
            // (another lane's lease transaction, a connection's I/O) are handed to another
            // thread first. A worker thread that simply slept kept the task in its LIFO
            // slot, which no other worker may take, and left that transaction open for
            // good: another process then waited on its lock forever.
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                    tokio::task::block_in_place(forever)
                }
                Ok(_) | Err(_) => forever(),
            }
        }
        Some(Return::Kill) => {
            eprintln!("quietus-failpoint: {name}");
            // The stock `kill`: a real SIGKILL, without unsafe code.
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(std::process::id().to_string())
                .status();
            // SIGKILL is not caught; should `kill` be missing, die as abruptly.
            std::process::abort();
        }
    }
}

/// A failpoint: this build has none.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: Point) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_parses_back_from_its_name() {
        for p in Point::ALL {
            assert_eq!(Point::parse(&p.name()), Some(p));
        }
        assert_eq!(Point::parse("after_batch_12"), Some(Point::AfterBatch(12)));
        for bad in [
            "after_batch_0",
            "after_batch_",
            "after_batch_+1",
            "after_batch_01",
            "collect ",
            "nope",
        ] {
            assert_eq!(Point::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn entries_are_checked_and_errors_name_the_entry() {
        let ok = parse("collect=return(kill); in_batch=2*off->return(stop);read_back=50%sleep(10)")
            .unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[1].point, Point::InBatch);
        assert_eq!(ok[1].actions, "2*off->return(stop)");
        for (spec, says) in [
            ("colect=return", "no such point"),
            ("collect", "expected point=actions"),
            ("collect=return(boom)", "expected return, return(kill)"),
            ("collect=explode", "is not an action"),
            ("collect=sleep", "needs milliseconds"),
            ("collect=x*return", "is not a count"),
            ("collect=200%return", "is not a percentage"),
            ("collect=return(kill", "unclosed parenthesis"),
        ] {
            let e = parse(spec).unwrap_err();
            assert_eq!(e.code, Code::Config);
            assert!(e.message.contains(says), "{spec}: {}", e.message);
            assert!(e.message.contains("QUIETUS_FAILPOINTS"), "{}", e.message);
        }
    }

    /// A stop holds its own task only: the runtime's other tasks go on (issue 8's
    /// test run: a `run` stopped in a batch kept another lane's lease transaction open on
    /// its sleeping worker thread, and a second `run` waited on that lock for good).
    /// With one worker thread, a task spawned after the stop must still run.
    #[cfg(feature = "failpoints")]
    #[test]
    fn a_stopped_task_leaves_the_runtime_to_the_other_tasks() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // No unit test runs a task's re-check: this stop is this test's alone. (The
        // waits are the test thread's own: a stopped worker drives no runtime timer.)
        configure("recheck=return(stop)").unwrap();
        let wait = std::time::Duration::from_secs(10);
        let (started, stopped) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = started.send(());
            hit(Point::Recheck);
        });
        stopped.recv_timeout(wait).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        fail::remove("recheck");
        let (sent, ran) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = sent.send(7);
        });
        let got = ran.recv_timeout(wait);
        rt.shutdown_background();
        assert_eq!(got, Ok(7), "a task spawned after the stop did not run");
    }
}
