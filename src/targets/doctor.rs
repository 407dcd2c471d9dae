//! `quietus doctor`: checks each target system against its data map — it answers, every
//! mapped table and column exists, and every column quietus looks rows up by leads an
//! index (without one, an erasure's cost grows with the size of the table).

use serde::Serialize;

use super::Target;
use super::sql;
use crate::policy::datamap::split_target;
use crate::policy::{Driver, System};

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub system: String,
    /// ok | warning | error
    pub level: &'static str,
    pub message: String,
}

/// The columns each table is searched by: identities, references, owners, sweep dates,
/// and the targets of references (which are matched by `IN (SELECT ...)`).
fn lookup_columns(sys: &System) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in &sys.tables {
        out.extend(t.identity.values().map(|c| (t.name.clone(), c.clone())));
        out.extend(
            t.references
                .iter()
                .map(|r| (t.name.clone(), r.column.clone())),
        );
        if let Some(o) = &t.owner {
            out.push((t.name.clone(), o.column.clone()));
        }
        if let Some(s) = &t.sweep {
            out.push((t.name.clone(), s.date.clone()));
        }
        for target in t
            .references
            .iter()
            .map(|r| &r.to)
            .chain(t.owner.iter().map(|o| &o.references))
        {
            if let Some((tt, tc)) = split_target(target) {
                out.push((tt.to_owned(), tc.to_owned()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Examine every system.
pub async fn check(systems: &[System], base_dir: &std::path::Path) -> Vec<Finding> {
    let mut out = Vec::new();
    for sys in systems {
        let f = |level, message: String| Finding {
            system: sys.name.clone(),
            level,
            message,
        };
        if sys.driver == Driver::Manual {
            out.push(f(
                "ok",
                "manual system: tasks are confirmed by its owner".into(),
            ));
            continue;
        }
        let target = match Target::connect(sys, base_dir).await {
            Ok(t) => t,
            Err(e) => {
                out.push(f("error", e.message));
                continue;
            }
        };
        out.push(f("ok", format!("connected ({})", sys.driver.as_str())));
        let mut missing_tables = Vec::new();
        for t in &sys.tables {
            match target.columns(&t.name).await {
                Ok(cols) => {
                    for c in t.known_columns() {
                        if !cols.iter().any(|x| x.name == c) {
                            out.push(f("error", format!("{}.{c}: the data map names a column the database does not have", t.name)));
                        }
                    }
                }
                Err(e) => {
                    missing_tables.push(t.name.clone());
                    out.push(f("error", e.message));
                }
            }
        }
        for (table, column) in lookup_columns(sys) {
            if missing_tables.contains(&table) {
                continue;
            }
            match target
                .fetch_text(&sql::leading_index_columns(target.dialect(), &table))
                .await
            {
                Ok(rows) => {
                    let indexed = rows
                        .iter()
                        .any(|r| r.first().cloned().flatten().as_deref() == Some(column.as_str()));
                    if indexed {
                        out.push(f("ok", format!("{table}.{column} is indexed")));
                    } else {
                        out.push(f("warning", format!(
                            "{table}.{column} leads no index: looking rows up by it reads the whole table \
                             (CREATE INDEX ON {table} ({column}))"
                        )));
                    }
                }
                Err(e) => out.push(f("error", e.message)),
            }
        }
        target.close().await;
    }
    out
}
