//! Any text as a signed checkpoint: parsed and opened, or refused, never a panic; none
//! opens under a key that signed nothing.
#![no_main]
use std::sync::OnceLock;

static KEY: OnceLock<quietus::proof::note::PublicKey> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = KEY.get_or_init(|| {
        quietus::proof::note::KeyPair::generate("fuzz.example")
            .map(|k| k.verifier())
            .unwrap_or_else(|e| panic!("a key: {e}"))
    });
    let _ = quietus::proof::note::Checkpoint::parse_body(text);
    assert!(
        quietus::proof::note::Checkpoint::open(text, key).is_err(),
        "a checkpoint no key signed opened"
    );
});
