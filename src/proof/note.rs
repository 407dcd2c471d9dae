//! Signing keys and signed notes in the C2SP `signed-note` format, and checkpoints in the
//! C2SP `tlog-checkpoint` format, so that a checkpoint can be copied out to a witness and
//! checked with standard tools.
//!
//! Key text formats (as in the Go `note` package):
//! - verifier (public): `NAME+HASH+BASE64(0x01 || ed25519 public key)`
//! - signer (private): `PRIVATE+KEY+NAME+HASH+BASE64(0x01 || ed25519 seed)`
//!
//! where HASH is the first 4 bytes (8 hex digits) of SHA-256(NAME || "\n" || 0x01 || public key).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::{Code, Error, Result};

const ALG_ED25519: u8 = 0x01;

fn bad(msg: impl Into<String>) -> Error {
    Error::new(Code::Usage, msg)
}

fn key_hash(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('+')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A public (verifier) key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    pub hash: [u8; 4],
    pub key: VerifyingKey,
}

/// A private (signer) key.
#[derive(Clone)]
pub struct KeyPair {
    pub name: String,
    pub hash: [u8; 4],
    key: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({}+{})", self.name, hex::encode(self.hash))
    }
}

impl KeyPair {
    /// A new key from 32 random bytes.
    pub fn generate(name: &str) -> Result<KeyPair> {
        if !valid_name(name) {
            return Err(bad(format!(
                "key name {name:?} must be non-empty, without spaces or '+'"
            )));
        }
        use rand::Rng;
        let seed: [u8; 32] = rand::rng().random();
        let key = SigningKey::from_bytes(&seed);
        let hash = key_hash(name, key.verifying_key().as_bytes());
        Ok(KeyPair {
            name: name.to_owned(),
            hash,
            key,
        })
    }

    pub fn parse(text: &str) -> Result<KeyPair> {
        let t = text.trim();
        let rest = t
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("not a quietus/note private key (PRIVATE+KEY+...)"))?;
        // The key data is base64 and may itself hold '+': split off the name and hash only.
        let parts: Vec<&str> = rest.splitn(3, '+').collect();
        let [name, hash, data] = parts.as_slice() else {
            return Err(bad("malformed private key"));
        };
        let raw = B64
            .decode(data)
            .map_err(|_| bad("malformed private key (base64)"))?;
        let (alg, seed) = raw.split_first().ok_or_else(|| bad("empty private key"))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| bad("private key is not 32 bytes"))?;
        if *alg != ALG_ED25519 {
            return Err(bad("private key is not ed25519"));
        }
        let key = SigningKey::from_bytes(&seed);
        let h = key_hash(name, key.verifying_key().as_bytes());
        if hex::encode(h) != *hash {
            return Err(bad("private key hash does not match its key"));
        }
        Ok(KeyPair {
            name: (*name).to_owned(),
            hash: h,
            key,
        })
    }

    /// The private key text (a secret).
    pub fn to_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.hash),
            B64.encode(raw)
        )
    }

    pub fn verifier(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            hash: self.hash,
            key: self.key.verifying_key(),
        }
    }

    /// An ed25519 signature over `msg`.
    pub fn sign_bytes(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Sign a note: `text` (ending in a newline), a blank line, a signature line.
    pub fn sign_note(&self, text: &str) -> Result<String> {
        if !text.ends_with('\n') || text.contains("\n\n") {
            return Err(bad(
                "a note's text must end with a newline and contain no blank line",
            ));
        }
        let sig = self.sign_bytes(text.as_bytes());
        let mut blob = self.hash.to_vec();
        blob.extend_from_slice(&sig);
        Ok(format!(
            "{text}\n\u{2014} {} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey> {
        let t = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        let parts: Vec<&str> = t.splitn(3, '+').collect();
        let [name, hash, data] = parts.as_slice() else {
            return Err(bad("not a public key (NAME+HASH+KEY)"));
        };
        let raw = B64
            .decode(data)
            .map_err(|_| bad("malformed public key (base64)"))?;
        let (alg, key) = raw.split_first().ok_or_else(|| bad("empty public key"))?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| bad("public key is not 32 bytes"))?;
        if *alg != ALG_ED25519 {
            return Err(bad("public key is not ed25519"));
        }
        let h = key_hash(name, &key);
        if hex::encode(h) != *hash {
            return Err(bad("public key hash does not match its key"));
        }
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad("invalid ed25519 public key"))?;
        Ok(PublicKey {
            name: (*name).to_owned(),
            hash: h,
            key,
        })
    }

    pub fn to_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.hash),
            B64.encode(raw)
        )
    }

    /// `NAME+HASH`: how receipts name the key that signed them.
    pub fn id(&self) -> String {
        format!("{}+{}", self.name, hex::encode(self.hash))
    }

    pub fn verify_bytes(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(sig) else {
            return false;
        };
        self.key
            .verify(msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .is_ok()
    }

    /// Check a signed note; returns its text when this key signed it.
    pub fn open_note<'a>(&self, note: &'a str) -> std::result::Result<&'a str, String> {
        let Some(split) = note.find("\n\n") else {
            return Err("the note has no signature block".into());
        };
        let text = &note[..=split];
        let sigs = &note[split + 2..];
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(format!("malformed signature line {line:?}"));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return Err("malformed signature line".into());
            };
            if name != self.name {
                continue;
            }
            let blob = B64
                .decode(b64)
                .map_err(|_| "malformed signature (base64)".to_string())?;
            if blob.len() != 68 || blob[..4] != self.hash {
                continue;
            }
            return if self.verify_bytes(text.as_bytes(), &blob[4..]) {
                Ok(text)
            } else {
                Err(format!(
                    "the signature by {} does not match the note",
                    self.id()
                ))
            };
        }
        Err(format!("the note carries no signature by {}", self.id()))
    }
}

/// A checkpoint: the log's origin, size and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: [u8; 32],
}

impl Checkpoint {
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    pub fn parse_body(text: &str) -> std::result::Result<Checkpoint, String> {
        let mut lines = text.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or("the checkpoint has no origin")?;
        let size = lines
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or("the checkpoint size is not a number")?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or("the checkpoint root is not a base64 SHA-256 hash")?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Verify a signed checkpoint note with `key`.
    pub fn open(note: &str, key: &PublicKey) -> std::result::Result<Checkpoint, String> {
        let text = key.open_note(note)?;
        Checkpoint::parse_body(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_texts_round_trip_whatever_their_base64_holds() {
        // Base64 key data often holds '+'; parse must not split it.
        for _ in 0..200 {
            let k = KeyPair::generate("quietus/log").unwrap();
            assert_eq!(
                KeyPair::parse(&k.to_text()).unwrap().verifier(),
                k.verifier()
            );
            assert_eq!(
                PublicKey::parse(&k.verifier().to_text()).unwrap(),
                k.verifier()
            );
        }
    }

    #[test]
    fn keys_round_trip_and_notes_verify() {
        let k = KeyPair::generate("quietus.example/log").unwrap();
        let k2 = KeyPair::parse(&k.to_text()).unwrap();
        let v = PublicKey::parse(&k2.verifier().to_text()).unwrap();
        assert_eq!(v, k.verifier());
        let cp = Checkpoint {
            origin: "quietus.example/log".into(),
            size: 7,
            root: [9; 32],
        };
        let note = k.sign_note(&cp.body()).unwrap();
        assert!(note.contains("\n\n\u{2014} quietus.example/log "));
        assert_eq!(Checkpoint::open(&note, &v).unwrap(), cp);
        // Any change to the text or the signature is caught.
        let tampered = note.replacen("\n7\n", "\n8\n", 1);
        assert!(Checkpoint::open(&tampered, &v).is_err());
        let other = KeyPair::generate("quietus.example/log").unwrap().verifier();
        assert!(Checkpoint::open(&note, &other).is_err());
        assert!(PublicKey::parse("x+00000000+AAAA").is_err());
    }
}
