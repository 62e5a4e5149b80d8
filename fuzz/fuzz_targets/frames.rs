//! The proxy's WebSocket frame reader over arbitrary bytes in arbitrary chunks
//! (`micronets_proxy::fuzz::frames`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| micronets_proxy::fuzz::frames(data));
