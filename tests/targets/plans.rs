//! The statements that find a subject's rows are answered through indexes on every
//! server dialect (issue 8, "flat as the CRM grows"): a table reached by several
//! references (a follow-up written by the employee or about the customer) was selected
//! with `a IN (SELECT …) OR b IN (SELECT …)`, which PostgreSQL and MariaDB can only answer
//! by reading the whole table (a hashed sub-plan per row): 13–30 ms a statement on 100 000
//! rows, ten times that on a million, in every survey and every task.

use super::*;

/// A subject with every identity kind the demo map knows, so that every identity column
/// and reference takes part in the predicates.
fn everyone() -> Identities {
    ids(&[
        (IdentityKind::Email, "jianguo.zhou@corp.example"),
        (IdentityKind::Phone, "+86 137 0057 4763"),
        (IdentityKind::EmployeeId, "E100"),
        (IdentityKind::CustomerId, "C-1042"),
    ])
}

/// The full-table reads in `EXPLAIN` of `st` on `pool` (PostgreSQL, with sequential scans
/// priced out: one that is left had no index to use instead): the tables read whole.
async fn pg_full_scans(conn: &mut sqlx::PgConnection, st: &Statement) -> Vec<String> {
    let mut q = sqlx::query_scalar::<_, serde_json::Value>(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) {}",
        st.sql
    )));
    for b in &st.binds {
        q = q.bind(b.as_str());
    }
    let plan = q.fetch_one(&mut *conn).await.unwrap();
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(o) = v.as_object() {
            if o.get("Node Type").and_then(|t| t.as_str()) == Some("Seq Scan") {
                out.push(o["Relation Name"].as_str().unwrap_or("?").to_owned());
            }
            o.values().for_each(|c| walk(c, out));
        } else if let Some(a) = v.as_array() {
            a.iter().for_each(|c| walk(c, out));
        }
    }
    walk(&plan, &mut out);
    out
}

/// The same on MariaDB: `EXPLAIN` rows of access type `ALL` (the table read whole).
async fn mysql_full_scans(pool: &sqlx::MySqlPool, st: &Statement) -> Vec<String> {
    use sqlx::Row as _;
    let mut q = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {}", st.sql)));
    for b in &st.binds {
        q = q.bind(b.as_str());
    }
    let rows = q.fetch_all(pool).await.unwrap();
    rows.iter()
        .filter(|r| {
            r.try_get::<Option<String>, _>("type")
                .ok()
                .flatten()
                .as_deref()
                == Some("ALL")
        })
        .map(|r| {
            r.try_get::<Option<String>, _>("table")
                .ok()
                .flatten()
                .unwrap_or_default()
        })
        // Derived and materialised tables are the statement's own, not the CRM's.
        .filter(|t| !t.starts_with('<'))
        .collect()
}

#[rstest]
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[case::postgres(Backend::Postgres)]
#[cfg_attr(
    not(quietus_test_mysql),
    ignore = "needs MariaDB/MySQL: set QUIETUS_TEST_MYSQL_URL"
)]
#[case::mysql(Backend::Mysql)]
#[tokio::test(flavor = "multi_thread")]
async fn a_subjects_rows_are_found_through_indexes(#[case] backend: Backend) {
    let crm = load(backend).await;
    let db = crm.db.as_ref().unwrap();
    let sys = &crm.system;
    let subject = everyone();
    let mut statements = Vec::new();
    for t in &sys.tables {
        let d = match backend {
            Backend::Postgres => quietus::targets::Dialect::Postgres,
            Backend::Mysql => quietus::targets::Dialect::Mysql,
            Backend::Sqlite => unreachable!(),
        };
        use quietus::targets::sql;
        if let Some(st) = sql::count_subject_rows(d, sys, t, &subject).unwrap() {
            statements.push((format!("count {}", t.name), st));
        }
        if let Some(st) = sql::count_owned_rows(d, sys, t, &subject).unwrap() {
            statements.push((format!("count owned {}", t.name), st));
        }
        if let Some(st) = sql::select_page(
            d,
            sys,
            t,
            sql::Which::Subject(&subject),
            "bigint",
            &[],
            None,
            500,
        )
        .unwrap()
        {
            statements.push((format!("select {}", t.name), st));
        }
    }
    {
        let d = match backend {
            Backend::Postgres => quietus::targets::Dialect::Postgres,
            Backend::Mysql => quietus::targets::Dialect::Mysql,
            Backend::Sqlite => unreachable!(),
        };
        // The survey's one statement of every count.
        let counts = quietus::targets::sql::count_tables(d, sys, &subject)
            .unwrap()
            .unwrap();
        statements.push(("count every table".to_owned(), counts.statement));
    }
    assert!(statements.len() >= sys.tables.len());
    let mut scans = Vec::new();
    match backend {
        Backend::Postgres => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query("ANALYZE").execute(&mut conn).await.unwrap();
            sqlx::query("SET enable_seqscan = off")
                .execute(&mut conn)
                .await
                .unwrap();
            for (what, st) in &statements {
                for t in pg_full_scans(&mut conn, st).await {
                    scans.push(format!("{what}: reads {t} whole\n  {}", st.sql));
                }
            }
            conn.close().await.unwrap();
        }
        Backend::Mysql => {
            let pool = sqlx::MySqlPool::connect(&db.url).await.unwrap();
            sqlx::query("ANALYZE TABLE follow_ups, call_notes, customers, employees, contacts, deals, invoices")
                .execute(&pool)
                .await
                .unwrap();
            for (what, st) in &statements {
                for t in mysql_full_scans(&pool, st).await {
                    scans.push(format!("{what}: reads {t} whole\n  {}", st.sql));
                }
            }
            pool.close().await;
        }
        Backend::Sqlite => unreachable!(),
    }
    drop_all(vec![crm]).await;
    assert!(
        scans.is_empty(),
        "statements that read a table whole:\n{}",
        scans.join("\n")
    );
}

/// The target's catalog on PostgreSQL is read from `pg_catalog` (the
/// `information_schema.columns` view took 3–25 ms a statement, once per survey and task):
/// it names every column and type as the view does, for every kind of type a CRM uses.
#[cfg_attr(
    not(quietus_test_postgres),
    ignore = "needs PostgreSQL: set QUIETUS_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_catalog_names_types_as_information_schema_does() {
    let db = Db::postgres().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE DOMAIN short_text AS varchar(20);
         CREATE DOMAIN feeling AS mood;
         CREATE DOMAIN tags AS text[];
         CREATE TABLE \"Kunden\" (\"Id\" bigint PRIMARY KEY, \"E-Mail\" varchar(100), n numeric(10, 2),
             born date, seen timestamptz, at timestamp, flags int[], names text[], doc jsonb, j json,
             u uuid, b boolean, s short_text, f feeling, m mood, t tags, c char(3), r real, d double precision,
             i smallint, x bytea, ip inet, dropped text);
         ALTER TABLE \"Kunden\" DROP COLUMN dropped;
         CREATE TABLE notes (id serial PRIMARY KEY, body text);
         CREATE VIEW v AS SELECT id, body FROM notes;
         CREATE TABLE other (id int);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let tables = ["Kunden", "notes", "v", "absent"];
    let st = quietus::targets::sql::column_types(quietus::targets::Dialect::Postgres, &tables);
    let mut q = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(st.sql.clone()));
    for b in &st.binds {
        q = q.bind(b.as_str());
    }
    let ours = q.fetch_all(&pool).await.unwrap();
    let view: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, \
         CASE WHEN data_type IN ('USER-DEFINED', 'ARRAY') THEN udt_name::text ELSE data_type::text END \
         FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ANY($1) \
         ORDER BY table_name, ordinal_position",
    )
    .bind(tables.map(str::to_owned).to_vec())
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    db.drop_now().await;
    assert_eq!(ours.len(), 22 + 2 + 2, "{ours:#?}");
    assert_eq!(ours, view);
}
