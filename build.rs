//! Which test prerequisites this build has, as `cfg`s for the tests: a test that needs a
//! database server or a tool that is missing is compiled `#[ignore = "why"]`, so that
//! `cargo test` reports it as ignored, with the reason, and "passed" means tested.
//!
//! - `quietus_test_postgres`: `QUIETUS_TEST_POSTGRES_URL` is set;
//! - `quietus_test_mysql`: `QUIETUS_TEST_MYSQL_URL` is set;
//! - `quietus_test_age`: the `age` and `zstd` tools are on `PATH`;
//! - `quietus_test_smtp`: a Python with aiosmtpd (`QUIETUS_TEST_PYTHON`, else `python3`);
//! - `quietus_test_strace`: the `strace` tool is on `PATH` (tests/nodelay.rs);
//! - `quietus_test_mount`: this runs as root (effective uid 0, by `id -u`), so a test can
//!   mount a size-limited tmpfs, or bind-mount a folder read-only (tests/crash/outages.rs);
//! - `quietus_test_pg_cluster`: a PostgreSQL server's binaries
//!   (`/usr/lib/postgresql/*/bin/initdb`) and root, to run a private cluster as the
//!   `postgres` user and restart it (tests/crash/outages.rs).
//!
//! With `QUIETUS_TEST_REQUIRE_SERVERS=1` (CI) all are on: a missing one fails its tests.
//! Cargo runs this again when one of those variables changes; a tool installed later
//! needs `touch build.rs` (or any change of `PATH`) to be seen.

use std::process::{Command, Stdio};

fn main() {
    for var in [
        "QUIETUS_TEST_POSTGRES_URL",
        "QUIETUS_TEST_MYSQL_URL",
        "QUIETUS_TEST_REQUIRE_SERVERS",
        "QUIETUS_TEST_PYTHON",
        "PATH",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rerun-if-changed=build.rs");
    let required = std::env::var("QUIETUS_TEST_REQUIRE_SERVERS").is_ok_and(|v| v == "1");
    let set = |var: &str| std::env::var(var).is_ok_and(|v| !v.trim().is_empty());
    let root = effective_uid_is_root();
    let have = [
        ("quietus_test_postgres", set("QUIETUS_TEST_POSTGRES_URL")),
        ("quietus_test_mysql", set("QUIETUS_TEST_MYSQL_URL")),
        ("quietus_test_age", on_path("age") && on_path("zstd")),
        ("quietus_test_smtp", python_with_aiosmtpd()),
        ("quietus_test_strace", on_path("strace")),
        ("quietus_test_mount", root),
        ("quietus_test_pg_cluster", root && postgres_server()),
    ];
    for (cfg, present) in have {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if present || required {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join(tool).is_file()))
}

fn effective_uid_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A PostgreSQL server's `initdb` in the Debian layout (`/usr/lib/postgresql/VERSION/bin`).
fn postgres_server() -> bool {
    std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
        versions
            .filter_map(|v| v.ok())
            .any(|v| v.path().join("bin/initdb").is_file())
    })
}

fn python_with_aiosmtpd() -> bool {
    let mut candidates = vec!["python3".to_owned(), "/usr/bin/python3".to_owned()];
    if let Ok(p) = std::env::var("QUIETUS_TEST_PYTHON") {
        candidates.insert(0, p);
    }
    candidates.iter().any(|py| {
        Command::new(py)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}
