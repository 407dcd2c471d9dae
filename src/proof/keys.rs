//! The receipt signing key: created by `quietus keys init` (or on first use), kept in a
//! file only its owner can read; its public key is a file to hand out.

use std::path::Path;

use super::note::{KeyPair, PublicKey};
use crate::config::Config;
use crate::error::{Code, Error, Result};

fn write_private(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        crate::fsx::create_dir_private(d)?;
    }
    crate::fsx::publish_new_private(path, text).map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::AlreadyExists => Code::Usage,
            _ => Code::Io,
        };
        Error::new(code, format!("{}: {e}", path.display()))
    })
}

/// Create the signing key and its public key file. Refuses to replace an existing key
/// (see [`rotate`]).
pub fn init(config: &Config) -> Result<KeyPair> {
    let key_file = config.path(&config.proof.key_file);
    if key_file.exists() {
        return Err(Error::new(
            Code::Usage,
            format!(
                "{} exists; `quietus keys rotate` replaces it (old receipts stay verifiable with the old public key)",
                key_file.display()
            ),
        ));
    }
    let key = KeyPair::generate(&config.proof.origin)?;
    write_private(&key_file, &format!("{}\n", key.to_text()))?;
    let (pub_file, text) = public_file_of(config, &key)?;
    crate::fsx::write_private_synced(&pub_file, text)?;
    Ok(key)
}

/// Where the public key file of `key` goes (its folder made) and what it holds.
fn public_file_of(config: &Config, key: &KeyPair) -> Result<(std::path::PathBuf, String)> {
    let pub_file = config.path(&config.proof.public_key_file);
    if let Some(d) = pub_file.parent() {
        crate::fsx::create_dir_private(d)?;
    }
    Ok((pub_file, format!("{}\n", key.verifier().to_text())))
}

/// Replace the signing key: the old key files are kept beside it as `*.NAME+HASH.old`
/// (private) and `*.NAME+HASH` (public), so receipts signed before stay verifiable.
pub fn rotate(config: &Config) -> Result<KeyPair> {
    let key_file = config.path(&config.proof.key_file);
    let pub_file = config.path(&config.proof.public_key_file);
    let old = load(config)?;
    let tag = old.verifier().id().replace('/', "_");
    std::fs::rename(&key_file, key_file.with_extension(format!("key.{tag}.old")))?;
    if pub_file.exists() {
        std::fs::rename(&pub_file, pub_file.with_extension(format!("pub.{tag}")))?;
    }
    init(config)
}

/// The signing key.
pub fn load(config: &Config) -> Result<KeyPair> {
    let key_file = config.path(&config.proof.key_file);
    let text = crate::fsx::read_text_limited(&key_file, crate::fsx::limit::KEY).map_err(|e| {
        Error::new(
            e.code,
            format!("signing key {} (run `quietus keys init`)", e.message),
        )
    })?;
    KeyPair::parse(&text).map_err(|e| e.context(key_file.display()))
}

/// The signing key, created on first use (logged, with where its public key is).
pub fn load_or_init(config: &Config) -> Result<KeyPair> {
    let key_file = config.path(&config.proof.key_file);
    if key_file.exists() {
        return load_with_public(config);
    }
    let key = match init(config) {
        Ok(key) => key,
        // Another instance made it first (its file is whole: see `write_private`).
        Err(_) if key_file.exists() => return load_with_public(config),
        Err(e) => return Err(e),
    };
    tracing::warn!(
        public_key = %config.path(&config.proof.public_key_file).display(),
        "created a receipt signing key; back it up, and publish its public key"
    );
    Ok(key)
}

/// The signing key, and its public key file made again when it is missing (an instance
/// stopped between the two, or someone removed it): made whole or not at all, and left
/// alone when another instance made it meanwhile.
fn load_with_public(config: &Config) -> Result<KeyPair> {
    let key = load(config)?;
    if !config.path(&config.proof.public_key_file).exists() {
        let (pub_file, text) = public_file_of(config, &key)?;
        match crate::fsx::publish_new_private(&pub_file, text) {
            Ok(()) => {
                tracing::warn!(public_key = %pub_file.display(), "the public key file was missing: made again from the signing key")
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::new(Code::Io, format!("{}: {e}", pub_file.display()))),
        }
    }
    Ok(key)
}

/// A public key from a file (or the configured one).
pub fn public(config: &Config, file: Option<&Path>) -> Result<PublicKey> {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => config.path(&config.proof.public_key_file),
    };
    let text = crate::fsx::read_text_limited(&path, crate::fsx::limit::KEY)
        .map_err(|e| e.context("public key"))?;
    PublicKey::parse(&text).map_err(|e| e.context(path.display()))
}
