//! `quietus log verify` compares the store's log with the checkpoints outside it: the
//! checkpoint file quietus writes and the witnesses' copies configured. A log rolled back
//! (its newest entries and their checkpoints deleted), rewritten (an entry changed, its
//! leaf hash recomputed, every stored checkpoint deleted), or holding entries but no
//! checkpoint anywhere does not hold; nor does an entry with any column altered.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::PathBuf;

use common::{Backend, Env, StoreKind};
use quietus::config::Config;
use quietus::proof::{keys, log, merkle};
use rstest::rstest;

/// The request each test entry is of (`None`: a sweep).
const RIDS: [Option<&str>; 5] = [Some("R-A"), Some("R-B"), None, Some("R-C"), Some("R-A")];

/// A receipt-like body of entry `i`, of request `rid`.
fn body(i: usize, rid: Option<&str>) -> String {
    let mut v =
        serde_json::json!({"quietus_receipt": 1, "id": format!("E{i}"), "tool": "quietus 0"});
    if let Some(r) = rid {
        v["request"] = serde_json::json!({ "id": r });
    }
    quietus::proof::receipt::canonical(&v).unwrap()
}

/// A state store whose log has 5 entries in 3 batches (checkpoints of 2, 3 and 5), each
/// batch's checkpoint published to the checkpoint file, as the prover does.
struct Logged {
    kind: StoreKind,
    env: Env,
    label: &'static str,
}

impl Logged {
    async fn new(backend: Backend, extra_config: &str) -> Logged {
        let kind = StoreKind::of(backend).await;
        let label = kind.label();
        let env = Env::new(&kind).await;
        if !extra_config.is_empty() {
            let mut text = common::read_to_string(&env.config).unwrap();
            text.push_str(extra_config);
            std::fs::write(&env.config, text).unwrap();
        }
        let l = Logged { kind, env, label };
        l.append(&[0, 1]).await;
        l.append(&[2]).await;
        l.append(&[3, 4]).await;
        l
    }

    fn config(&self) -> Config {
        Config::load(Some(&self.env.config)).unwrap()
    }

    fn checkpoint_file(&self) -> PathBuf {
        let c = self.config();
        c.path(&c.proof.checkpoint_file)
    }

    /// Append entries `idx` (of [`RIDS`]) as one batch and publish its checkpoint.
    async fn append(&self, idx: &[usize]) {
        let config = self.config();
        let key = keys::load_or_init(&config).unwrap();
        let file = config.path(&config.proof.checkpoint_file);
        let app = quietus::app::App::open(config.clone()).await.unwrap();
        let bodies: Vec<String> = idx.iter().map(|&i| body(i, RIDS[i % 5])).collect();
        let entries: Vec<log::Entry<'_>> = idx
            .iter()
            .zip(&bodies)
            .map(|(&i, b)| log::Entry {
                request_id: RIDS[i % 5],
                body: b,
            })
            .collect();
        let signing = log::Signing {
            key: &key,
            origin: &config.proof.origin,
            checkpoint_file: &file,
        };
        let a = log::append(
            &app.ctx.store,
            signing,
            &entries,
            None,
            quietus::clock::now(),
            |_| Ok(Vec::new()),
        )
        .await
        .unwrap()
        .unwrap();
        log::publish_checkpoint(&file, a.size, &a.note).unwrap();
        app.close().await;
    }

    /// Run statements on the state store directly, as someone with access to it would.
    async fn sql(&self, statements: &[&str]) {
        match &self.kind {
            StoreKind::Sqlite => {
                let db = self.env.path().join("var/quietus.db");
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                    .await
                    .unwrap();
                for s in statements {
                    sqlx::query(sqlx::AssertSqlSafe(*s))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                pool.close().await;
            }
            StoreKind::Postgres(db) => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                for s in statements {
                    sqlx::query(sqlx::AssertSqlSafe(*s))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                pool.close().await;
            }
        }
    }

    /// The stored checkpoint note of `size` entries.
    async fn note(&self, size: i64) -> String {
        let app = quietus::app::App::open(self.config()).await.unwrap();
        let cps = app.ctx.store.checkpoints().await.unwrap();
        app.close().await;
        cps.into_iter().find(|c| c.size == size).unwrap().note
    }

    /// `log verify`: (success, standard output).
    fn verify(&self) -> (bool, String) {
        let out = self.env.run(&["log", "verify"]);
        (out.status.success(), common::stdout(&out))
    }

    #[track_caller]
    fn holds(&self, what: &str) {
        let (ok, out) = self.verify();
        assert!(
            ok && out.contains("the log holds"),
            "{}: {what}: {out}",
            self.label
        );
    }

    /// `log verify` fails and says each of `reasons`; it names no request.
    #[track_caller]
    fn fails(&self, what: &str, reasons: &[&str]) {
        let (ok, out) = self.verify();
        assert!(
            !ok && out.contains("the log does NOT hold"),
            "{}: {what} must fail log verify: {out}",
            self.label
        );
        eprintln!("{}: {what}:\n{out}", self.label);
        for r in reasons {
            assert!(
                out.contains(r),
                "{}: {what}: the output says {r:?}: {out}",
                self.label
            );
        }
        for id in ["R-A", "R-B", "R-C", "R-X"] {
            assert!(
                !out.contains(id),
                "{}: {what}: names {id}: {out}",
                self.label
            );
        }
    }

    async fn cleanup(self) {
        drop(self.env);
        self.kind.cleanup().await;
    }
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_log_rolled_back_with_its_checkpoint_does_not_hold(#[case] backend: Backend) {
    let l = Logged::new(backend, "").await;
    l.holds("the log as written");
    // The newest entry and its checkpoint deleted: the store alone is consistent.
    l.sql(&[
        "DELETE FROM log_entries WHERE idx = 4",
        "DELETE FROM checkpoints WHERE size = 5",
    ])
    .await;
    l.fails(
        "a log rolled back",
        &["checkpoint file", "size 5", "4 entries", "rolled back"],
    );
    l.cleanup().await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_log_rewritten_with_its_leaf_recomputed_and_no_stored_checkpoint_does_not_hold(
    #[case] backend: Backend,
) {
    let l = Logged::new(backend, "").await;
    let forged = body(1, Some("R-B")).replace("quietus 0", "quietus 9");
    let leaf = hex::encode(merkle::leaf_hash(forged.as_bytes()));
    let update = format!(
        "UPDATE log_entries SET body = '{}', leaf_hash = '{leaf}' WHERE idx = 1",
        forged.replace('\'', "''")
    );
    l.sql(&[update.as_str(), "DELETE FROM checkpoints"]).await;
    l.fails(
        "a rewritten entry, its leaf recomputed, every stored checkpoint deleted",
        &["checkpoint file", "rewritten", "no checkpoint"],
    );
    l.cleanup().await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_log_with_entries_but_no_checkpoint_anywhere_does_not_hold(#[case] backend: Backend) {
    let l = Logged::new(backend, "").await;
    // The file alone gone: quietus writes it with every append.
    let file = l.checkpoint_file();
    let kept = common::read_to_string(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    l.fails("a missing checkpoint file", &["checkpoint file", "missing"]);
    std::fs::write(&file, &kept).unwrap();
    l.holds("the checkpoint file back");
    // Neither the file nor a stored checkpoint.
    std::fs::remove_file(&file).unwrap();
    l.sql(&["DELETE FROM checkpoints"]).await;
    l.fails(
        "entries without any checkpoint",
        &["5 entries", "no checkpoint"],
    );
    // A checkpoint file not signed by the key.
    std::fs::write(&file, kept.replacen("\n5\n", "\n6\n", 1)).unwrap();
    l.fails(
        "a forged checkpoint file",
        &["checkpoint file", "signature"],
    );
    l.cleanup().await;
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn every_column_of_an_entry_is_covered(#[case] backend: Backend) {
    let l = Logged::new(backend, "").await;
    for (what, sql, reasons) in [
        (
            "another request's id",
            "UPDATE log_entries SET request_id = 'R-X' WHERE idx = 3",
            ["entry 3", "request_id"],
        ),
        (
            "a request's id on a sweep",
            "UPDATE log_entries SET request_id = 'R-X' WHERE idx = 2",
            ["entry 2", "request_id"],
        ),
        (
            "no request's id",
            "UPDATE log_entries SET request_id = NULL WHERE idx = 0",
            ["entry 0", "request_id"],
        ),
        (
            "another kind",
            "UPDATE log_entries SET kind = 'event' WHERE idx = 1",
            ["entry 1", "kind"],
        ),
        (
            "another leaf hash",
            "UPDATE log_entries SET leaf_hash = 'ab' || substr(leaf_hash, 3) WHERE idx = 4",
            ["entry 4", "leaf_hash"],
        ),
    ] {
        l.sql(&[sql]).await;
        l.fails(what, &reasons);
        // A fresh log for the next column.
        rebuild(&l).await;
    }
    l.cleanup().await;
}

/// Rebuild the log as [`Logged::new`] makes it (the store's log emptied, the file removed).
async fn rebuild(l: &Logged) {
    l.sql(&["DELETE FROM log_entries", "DELETE FROM checkpoints"])
        .await;
    std::fs::remove_file(l.checkpoint_file()).unwrap();
    l.holds("an empty log");
    l.append(&[0, 1]).await;
    l.append(&[2]).await;
    l.append(&[3, 4]).await;
    l.holds("the log rebuilt");
}

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn a_witness_copy_catches_a_rollback_that_rewrote_the_checkpoint_file(
    #[case] backend: Backend,
) {
    let l = Logged::new(backend, "[proof]\nwitnesses = [\"witness/checkpoint\"]\n").await;
    let witness = l.env.path().join("witness/checkpoint");
    l.fails(
        "a witness copy configured but missing",
        &["witness", "missing"],
    );
    std::fs::create_dir_all(witness.parent().unwrap()).unwrap();
    std::fs::copy(l.checkpoint_file(), &witness).unwrap();
    l.holds("the witness holds the latest checkpoint");
    // The log grows; the witness's copy is older, and consistent.
    l.append(&[5]).await;
    l.holds("an older witness copy");
    // Entries 4 and 5 and their checkpoints deleted, the checkpoint file rewritten with
    // the stored checkpoint of 3 entries: only the witness knows.
    let three = l.note(3).await;
    l.sql(&[
        "DELETE FROM log_entries WHERE idx >= 4",
        "DELETE FROM checkpoints WHERE size > 3",
    ])
    .await;
    std::fs::write(l.checkpoint_file(), three).unwrap();
    l.fails(
        "a rollback behind the witness's back",
        &["witness", "size 5", "4 entries", "rolled back"],
    );
    l.cleanup().await;
}
