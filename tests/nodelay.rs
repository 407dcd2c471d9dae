//! Every TCP connection quietus opens to a database server has `TCP_NODELAY` set
//! (issue 8, item 1; vendor/README.md): the state store on PostgreSQL and target systems
//! on PostgreSQL and MariaDB. Without it, the PostgreSQL TLS handshake and MySQL's
//! multi-packet commands wait for the server's delayed ACK, ~40 ms each time.
//!
//! The real binary runs under `strace -f`, doing real work (submit, approve, run an
//! erasure across two target systems); every `connect()` to port 5432 or 3306 must be
//! followed by `setsockopt(fd, SOL_TCP, TCP_NODELAY, [1])` on the same socket before
//! it is closed. strace is a prerequisite like a server: without it (and without
//! `QUIETUS_TEST_REQUIRE_SERVERS=1`) `build.rs` compiles this test ignored; with it
//! required and missing, the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{BIN, Backend, CrmKind, ERASURE_TICKET, Env, StoreKind, ok};

/// When the ticket is submitted, approved and carried out.
const NOW: &str = "2026-03-02T09:00:00Z";

/// The database ports whose connections must have `TCP_NODELAY`.
const PORTS: [u16; 2] = [5432, 3306];

/// Run the binary with the env's config under `strace`, tracing connections, socket
/// options and closes (of every thread) into `log`.
fn traced(env: &Env, args: &[&str], log: &Path) -> Output {
    let spawned = Command::new("strace")
        .args(["-f", "-qq", "-e", "signal=none"])
        .args(["-e", "trace=connect,setsockopt,close", "-o"])
        .arg(log)
        .arg(BIN)
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .env_remove("QUIETUS_CONFIG")
        .env("QUIETUS_LOG", "warn")
        .env("QUIETUS_NOW", NOW)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    match spawned {
        Ok(child) => child.wait_with_output().expect("strace runs"),
        Err(e) => panic!(
            "cannot run strace ({e}): install it (apt-get install strace; .ci/run does), \
             or build without QUIETUS_TEST_REQUIRE_SERVERS=1 to have this test ignored"
        ),
    }
}

/// What a trace shows of the database connections.
#[derive(Debug, Default)]
struct Connections {
    /// Connections per server port.
    per_port: BTreeMap<u16, usize>,
    /// Connections without `TCP_NODELAY`: (port, the strace line of their connect).
    without_nodelay: Vec<(u16, String)>,
}

/// Read an `strace -f` log: each `connect()` of a socket to one of [`PORTS`] must be
/// followed by `TCP_NODELAY` set to 1 on the same descriptor before it is closed (or
/// connected again, or the process ends).
fn connections(log: &str) -> Connections {
    let connect = regex::Regex::new(
        r"^\d+\s+connect\((\d+), \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\)",
    )
    .unwrap();
    let nodelay =
        regex::Regex::new(r"^\d+\s+setsockopt\((\d+), (?:SOL_TCP|IPPROTO_TCP), TCP_NODELAY, \[1\], \d+(?:\) = 0| <unfinished)")
            .unwrap();
    let close = regex::Regex::new(r"^\d+\s+close\((\d+)").unwrap();
    let mut out = Connections::default();
    // Open connections by descriptor: (port, connect line, TCP_NODELAY seen).
    let mut open: BTreeMap<u32, (u16, String, bool)> = BTreeMap::new();
    let settle = |out: &mut Connections, conn: Option<(u16, String, bool)>| {
        if let Some((port, line, false)) = conn {
            out.without_nodelay.push((port, line));
        }
    };
    for line in log.lines() {
        if let Some(c) = connect.captures(line) {
            let fd: u32 = c[1].parse().unwrap();
            let port: u16 = c[2].parse().unwrap();
            if PORTS.contains(&port) {
                *out.per_port.entry(port).or_default() += 1;
                let before = open.insert(fd, (port, line.to_owned(), false));
                settle(&mut out, before);
            } else {
                let before = open.remove(&fd);
                settle(&mut out, before);
            }
        } else if let Some(c) = nodelay.captures(line) {
            if let Some(conn) = open.get_mut(&c[1].parse::<u32>().unwrap()) {
                conn.2 = true;
            }
        } else if let Some(c) = close.captures(line) {
            let before = open.remove(&c[1].parse::<u32>().unwrap());
            settle(&mut out, before);
        }
    }
    for (_, conn) in std::mem::take(&mut open) {
        settle(&mut out, Some(conn));
    }
    out
}

/// The parser itself: a connection with `TCP_NODELAY` passes, one without (or with it
/// set on another socket, or only after the close) is named.
#[test]
fn the_trace_reader_names_each_connection_without_nodelay() {
    let log = r#"100 connect(9, {sa_family=AF_INET, sin_port=htons(5432), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 EINPROGRESS (Operation now in progress)
101 setsockopt(9, SOL_TCP, TCP_NODELAY, [1], 4) = 0
100 connect(10, {sa_family=AF_INET, sin_port=htons(3306), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 EINPROGRESS (Operation now in progress)
100 setsockopt(11, SOL_TCP, TCP_NODELAY, [1], 4) = 0
100 close(10) = 0
100 setsockopt(10, SOL_TCP, TCP_NODELAY, [1], 4) = 0
100 connect(12, {sa_family=AF_UNIX, sun_path="/run/x"}, 110) = 0
100 connect(13, {sa_family=AF_INET, sin_port=htons(5432), sin_addr=inet_addr("127.0.0.1")}, 16 <unfinished ...>
101 setsockopt(13, SOL_TCP, TCP_NODELAY, [0], 4) = 0
100 <... connect resumed>) = -1 EINPROGRESS (Operation now in progress)
"#;
    let c = connections(log);
    assert_eq!(c.per_port, BTreeMap::from([(3306, 1), (5432, 2)]));
    let ports: Vec<u16> = c.without_nodelay.iter().map(|(p, _)| *p).collect();
    assert_eq!(ports, [3306, 5432], "{:#?}", c.without_nodelay);
}

/// A PostgreSQL state store, and an erasure carried out on two target systems, one on
/// PostgreSQL and one on MariaDB: every connection the binary opens to either server
/// has `TCP_NODELAY`.
// One attribute: several `ignore`s on one test are refused by rustc.
#[cfg_attr(
    not(all(quietus_test_postgres, quietus_test_mysql, quietus_test_strace)),
    ignore = "needs PostgreSQL, MariaDB and strace: set QUIETUS_TEST_POSTGRES_URL and QUIETUS_TEST_MYSQL_URL, apt-get install strace"
)]
#[tokio::test(flavor = "multi_thread")]
async fn every_database_connection_has_tcp_nodelay() {
    let store = StoreKind::of(Backend::Postgres).await;
    let env = Env::new(&store).await;
    let crm_pg = CrmKind::of(Backend::Postgres).await;
    env.use_crm(&crm_pg).await;
    // A second target: the same data map, on MariaDB.
    let crm_my = CrmKind::of(Backend::Mysql).await;
    crm_my.load().await;
    let (_, my_url) = crm_my.driver_url();
    let map = common::read_to_string(env.path().join("policies/systems/crm.toml")).unwrap();
    let mut named = false;
    let map: Vec<String> = map
        .lines()
        .map(|l| {
            // The system's name is the first `name`; the tables' names follow.
            if l.starts_with("name = ") && !named {
                named = true;
                "name = \"crm_mariadb\"".to_owned()
            } else if l.starts_with("driver = ") {
                "driver = \"mysql\"".to_owned()
            } else if l.starts_with("url = ") {
                format!("url = {my_url:?}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    env.write("policies/systems/crm_mariadb.toml", &map.join("\n"));

    let ticket = env.write("erasure.json", ERASURE_TICKET);
    let mut total = Connections::default();
    let mut id = String::new();
    for (step, args) in [
        ("submit", vec!["submit", ticket.to_str().unwrap()]),
        ("approve", vec!["approve"]),
        ("run", vec!["run", "--json"]),
    ] {
        let mut args = args;
        if step == "approve" {
            args.push(&id);
        }
        let log = env.path().join(format!("strace-{step}.log"));
        let out = ok(&traced(&env, &args, &log));
        if step == "submit" {
            id = out.trim().to_owned();
        }
        if step == "run" {
            let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                summary["completed_requests"],
                serde_json::json!([id]),
                "the erasure is carried out on both systems: {summary}"
            );
        }
        let c = connections(&common::read_to_string(&log).unwrap());
        for (port, n) in c.per_port {
            *total.per_port.entry(port).or_default() += n;
        }
        total.without_nodelay.extend(
            c.without_nodelay
                .into_iter()
                .map(|(port, line)| (port, format!("{step}: {line}"))),
        );
    }
    // Not vacuous: the store and the PostgreSQL target, and the MariaDB target, were
    // connected to.
    assert!(
        total.per_port.get(&5432).is_some_and(|n| *n >= 2),
        "connections to PostgreSQL: {:?}",
        total.per_port
    );
    assert!(
        total.per_port.get(&3306).is_some_and(|n| *n >= 1),
        "connections to MariaDB: {:?}",
        total.per_port
    );
    assert!(
        total.without_nodelay.is_empty(),
        "{} of {} connection(s) have no TCP_NODELAY:\n{}",
        total.without_nodelay.len(),
        total.per_port.values().sum::<usize>(),
        total
            .without_nodelay
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    crm_my.cleanup().await;
    crm_pg.cleanup().await;
    store.cleanup().await;
}
