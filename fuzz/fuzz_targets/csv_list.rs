//! Any bytes as a CSV exit list: parsed whole or refused, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = quietus::intake::inbox::parse_csv(data, "fuzz.csv", "f00", true);
});
