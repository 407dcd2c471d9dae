//! `quietus approve` of many ids decides several at once (issue 8: a hundred approvals
//! one after another took 4.4 s of surveys): each request is approved once, the results
//! are reported in the order given, and an id named twice, or not at all, is refused on
//! its own without stopping the rest.

use super::*;

#[rstest]
#[case::sqlite(Backend::Sqlite)]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[tokio::test(flavor = "multi_thread")]
async fn many_approvals_at_once_each_once_in_the_order_given(#[case] backend: Backend) {
    let kind = StoreKind::of(backend).await;
    let env = Env::new(&kind).await;
    let now = Some("2026-03-02T09:00:00Z");
    let mut ids = Vec::new();
    for n in 0..12 {
        let ticket = ERASURE_TICKET
            .replace("T-1", &format!("T-{n}"))
            .replace("olivia.chen@", &format!("olivia.chen+{n}@"));
        let f = env.write(&format!("t{n}.json"), &ticket);
        ids.push(
            ok(&env.run_at(&["submit", f.to_str().unwrap()], now, None))
                .trim()
                .to_owned(),
        );
    }
    // The fourth named again by a prefix, and an id that names nothing, among them.
    let mut args = vec!["approve"];
    args.extend(ids[..6].iter().map(String::as_str));
    args.push(&ids[3][..8]);
    args.push("zzzzzzzz");
    args.extend(ids[6..].iter().map(String::as_str));
    let out = env.run_at(&args, now, None);
    let err = fails(&out);
    let said: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = ids
        .iter()
        .map(|id| format!("request {id} is now approved"))
        .collect();
    assert_eq!(said, expected, "stderr: {err}");
    assert!(
        err.contains(&format!("error: {}:", &ids[3][..8])) && err.contains("illegal_transition"),
        "{err}"
    );
    assert!(
        err.contains("error: zzzzzzzz:") && err.contains("not_found"),
        "{err}"
    );
    assert!(err.contains("2 of 14 request(s) not approved"), "{err}");
    for id in &ids {
        let shown = json(&ok(&env.run_at(&["show", id, "--json"], now, None)));
        assert_eq!(shown["request"]["state"], "approved", "{id}");
        let approvals = shown["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["to_state"] == "approved")
            .count();
        assert_eq!(approvals, 1, "{id}: {shown}");
    }
    kind.cleanup().await;
}
