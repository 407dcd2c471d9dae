//! The command line under faults (issue 9): unbounded inputs (item 10), an invalid
//! `QUIETUS_NOW` (item 11) and a closed standard output (item 13).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, ERASURE_TICKET, Env, StoreKind, ok};

/// Run `quietus ARGS` with this env's config, in a shell that caps its memory (3 GB of
/// address space, so that an unbounded read fails instead of filling the machine) and
/// kills it after 60 s.
fn run_capped(env: &Env, args: &[&str], extra_env: &[(&str, &str)]) -> (Output, Duration) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -v 3000000; exec timeout -s KILL 60 \"$@\"")
        .arg("sh")
        .arg(BIN)
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .env_remove("QUIETUS_CONFIG")
        .env_remove("QUIETUS_NOW")
        .env("QUIETUS_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let out = cmd.output().unwrap();
    (out, t.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_and_pipes_are_read_only_up_to_the_limit() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let fifo = env.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // A writer that never stops.
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg("exec timeout 60 cat /dev/zero > \"$0\"")
        .arg(&fifo)
        .spawn()
        .unwrap();
    let fifo_s = fifo.to_str().unwrap();
    let cases: [&[&str]; 6] = [
        &["submit", "/dev/zero"],
        &["submit", "/dev/urandom"],
        &["submit", fifo_s],
        &["verify", "/dev/zero"],
        &["verify", "/dev/urandom"],
        &["verify", "--checkpoint", "/dev/zero", "/dev/zero"],
    ];
    for args in cases {
        let (out, took) = run_capped(&env, args, &[]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {:?} {err}",
            out.status
        );
        assert!(err.contains("too_large"), "{args:?}: {err}");
        assert!(err.contains("bytes"), "{args:?}: {err}");
        assert!(
            err.contains(args[args.len() - 1]),
            "{args:?} names the file: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(took < Duration::from_secs(30), "{args:?} took {took:?}");
    }
    let _ = writer.kill();
    let _ = writer.wait();
    // A public key file that is a device.
    let (out, _) = run_capped(
        &env,
        &["verify", "--public-key", "/dev/zero", "/dev/null"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    // An ordinary ticket still goes in.
    let f = env.write("t.json", ERASURE_TICKET);
    ok(&env.run(&["submit", f.to_str().unwrap()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_quietus_now_is_an_error_before_anything_runs() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let f = env.write("t.json", ERASURE_TICKET);
    for bad in ["2026-13-01T00:00:00Z", "tomorrow", "2026-12-02", " x "] {
        let (out, _) = run_capped(
            &env,
            &["submit", f.to_str().unwrap()],
            &[("QUIETUS_NOW", bad)],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {err}");
        assert!(err.contains("QUIETUS_NOW"), "{bad:?}: {err}");
        assert!(err.contains("RFC 3339"), "{bad:?}: {err}");
        assert!(out.stdout.is_empty(), "{bad:?}: ran anyway");
    }
    // Nothing was submitted.
    let queue = ok(&env.run(&["queue", "--json"]));
    assert!(!queue.contains("T-1"), "{queue}");
    let (out, _) = run_capped(
        &env,
        &["submit", f.to_str().unwrap()],
        &[("QUIETUS_NOW", "2026-12-02T10:00:00Z")],
    );
    ok(&out);
}

/// `quietus show ID | head -c 10`: the reader goes away; quietus exits quietly.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_standard_output_is_a_quiet_exit() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let f = env.write("t.json", ERASURE_TICKET);
    let id = ok(&env.run(&["submit", f.to_str().unwrap(), "--json"]));
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    let id = id["id"].as_str().unwrap().to_owned();
    for args in [
        vec!["show", id.as_str()],
        vec!["show", id.as_str(), "--json"],
        vec!["queue"],
        vec!["plan", id.as_str()],
    ] {
        // The reader closes its end before quietus writes anything.
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&env.config)
            .args(&args)
            .env_remove("QUIETUS_CONFIG")
            .env_remove("QUIETUS_NOW")
            .env("QUIETUS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
    // Through a shell pipe, as a person types it.
    let out = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" --config \"$1\" show \"$2\" | head -c 10 >/dev/null")
        .arg(BIN)
        .arg(&env.config)
        .arg(&id)
        .env_remove("QUIETUS_NOW")
        .output()
        .unwrap();
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

/// Files quietus reads from its own folders are read only up to a limit too (issue 9,
/// item 10): a 4 GiB policy file (sparse: no disk used) is refused at once, naming the
/// file and the limit, instead of being read into memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_policy_file_is_refused_not_read() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let huge = env.path().join("policies/huge.toml");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(4 << 30).unwrap();
    drop(f);
    let (out, took) = run_capped(&env, &["policy", "check"], &[]);
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(e.contains("huge.toml") && e.contains("limit"), "{e}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// The config file, the SMTP password file and the signing key file are read only up to
/// a limit too (issue 9, item 10): each, as a 4 GiB sparse file, is refused at once,
/// naming the file and the limit, under a 3 GB address-space cap.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_config_password_or_key_file_is_refused_not_read() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let huge = env.path().join("huge.txt");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(4 << 30).unwrap();
    drop(f);
    let base = common::read_to_string(&env.config).unwrap();
    let with = |extra: &str| {
        let p = env.path().join(format!("quietus-{}.toml", extra.len()));
        std::fs::write(&p, format!("{base}\n{extra}\n")).unwrap();
        p
    };
    let cases: [(&str, std::path::PathBuf, &[&str]); 3] = [
        ("config", huge.clone(), &["doctor"]),
        (
            "password file",
            with(
                "[mail]\ntransport = \"smtp\"\n[mail.smtp]\nhost = \"127.0.0.1\"\npassword_file = \"huge.txt\"",
            ),
            &["run"],
        ),
        (
            "key file",
            with("[proof]\nkey_file = \"huge.txt\""),
            &["run"],
        ),
    ];
    for (what, config, args) in cases {
        let t = Instant::now();
        let out = Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 3000000; exec timeout -s KILL 60 \"$@\"")
            .arg("sh")
            .arg(BIN)
            .arg("--config")
            .arg(&config)
            .args(args)
            .current_dir(env.path())
            .env_remove("QUIETUS_CONFIG")
            .env_remove("QUIETUS_NOW")
            .env("QUIETUS_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let took = t.elapsed();
        let e = stderr(&out);
        assert!(!out.status.success(), "{what}: {e}");
        assert!(e.contains("huge.txt") && e.contains("limit"), "{what}: {e}");
        assert!(took < Duration::from_secs(20), "{what}: took {took:?}");
    }
}

/// A misspelled key in the config file is an error naming the file and the key (the
/// file is read within its limit, then parsed: the parse error still says which file).
#[tokio::test(flavor = "multi_thread")]
async fn a_misspelled_config_key_names_the_file_and_the_key() {
    let env = Env::new(&StoreKind::Sqlite).await;
    let base = common::read_to_string(&env.config).unwrap();
    let bad = env.path().join("misspelled.toml");
    std::fs::write(&bad, format!("{base}\n[server]\nlisen = \"127.0.0.1:1\"\n")).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("doctor")
        .env_remove("QUIETUS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(e.contains("misspelled.toml") && e.contains("lisen"), "{e}");
}
