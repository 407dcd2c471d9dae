//! Any bytes as a receipt: refused, or verified (against a key that signed none of them:
//! every signature check fails), never a panic.
#![no_main]
use std::sync::OnceLock;

static KEY: OnceLock<quietus::proof::note::PublicKey> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = KEY.get_or_init(|| {
        quietus::proof::note::KeyPair::generate("fuzz.example")
            .map(|k| k.verifier())
            .unwrap_or_else(|e| panic!("a key: {e}"))
    });
    if let Ok(r) = serde_json::from_slice::<quietus::proof::receipt::Receipt>(data) {
        let checks = quietus::proof::receipt::verify(&r, key, None);
        assert!(!checks.iter().all(|c| c.ok), "a receipt no key signed verified");
    }
});
