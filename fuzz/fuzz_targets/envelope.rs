//! Envelope parsing: the header scanner against serde, the header against the full parse, and
//! the full parse's round trip (`micronets_message::fuzz::envelope`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| micronets_message::fuzz::envelope(data));
