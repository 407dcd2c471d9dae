//! `quietus policy check` and `quietus token`.

use std::path::Path;
use std::process::ExitCode;

use sha2::{Digest, Sha256};

use crate::config::Role;
use crate::error::Result;
use crate::policy::Policies;

pub fn check(dir: &Path, json: bool) -> Result<ExitCode> {
    match Policies::load(dir) {
        Ok(p) => {
            if json {
                let v = serde_json::json!({
                    "ok": true, "dir": dir, "files": p.files, "digest": p.digest,
                    "rules": p.rules.len(), "systems": p.systems.iter().map(|s| &s.name).collect::<Vec<_>>(),
                });
                crate::outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let tables: usize = p.systems.iter().map(|s| s.tables.len()).sum();
                crate::outln!(
                    "{}: ok ({} files, {} rules, {} systems, {} tables; digest {})",
                    dir.display(),
                    p.files.len(),
                    p.rules.len(),
                    p.systems.len(),
                    tables,
                    &p.digest[..16]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            if json {
                let v = serde_json::json!({"ok": false, "dir": dir, "problems": problems.0});
                crate::outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for p in &problems.0 {
                    eprintln!("{}/{p}", dir.display());
                }
                eprintln!("{}: {} problem(s)", dir.display(), problems.0.len());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn token(name: &str, role: &str) -> Result<ExitCode> {
    let role: Role =
        serde_json::from_value(serde_json::Value::String(role.to_owned())).map_err(|_| {
            super::usage(format!(
                "unknown role {role:?} (submitter, hr, dpo, auditor or admin)"
            ))
        })?;
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    let token = format!("qt_{}", hex::encode(bytes));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    crate::outln!("token (shown once; give it to {name}): {token}");
    crate::outln!();
    crate::outln!("add to quietus.toml:");
    crate::outln!(
        "[[api.tokens]]\nname = {name:?}\nrole = \"{}\"\nsha256 = \"{hash}\"",
        role.as_str()
    );
    Ok(ExitCode::SUCCESS)
}
