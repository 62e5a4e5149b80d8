//! What Redis sends a node's inbox: RESP values in arbitrary chunks, their payloads read as
//! packets and notes (`micronets_proxy::fuzz::inbox`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| micronets_proxy::fuzz::inbox(data));
