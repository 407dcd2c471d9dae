//! Any bytes as a ticket: parsed or refused, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = quietus::intake::parse_ticket(data, "fuzz", true);
});
