//! The proxy's upgrade request reader over arbitrary bytes
//! (`micronets_proxy::fuzz::upgrade_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| micronets_proxy::fuzz::upgrade_request(data));
