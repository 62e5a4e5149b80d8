//! Header-only parse vs full parse on 256 B, 4 KiB and 64 KiB envelopes, and the header parse
//! of envelopes whose body is one long string (as ws-bench sends them).
//!
//! Run with `cargo bench -p micronets-message --bench header`; the figures go in
//! `docs/performance.md`.

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use micronets_message::{Envelope, Header};
use serde_json::json;

/// A REST:REQUEST envelope of exactly `size` bytes, its body a JSON object of subnets.
fn envelope_of(size: usize) -> String {
    let mut subnets = Vec::new();
    let mut text = String::new();
    for i in 0.. {
        let envelope = json!({"message": {
            "messageId": 42, "messageType": "REST:REQUEST", "requiresResponse": true,
            "method": "POST", "path": "/micronets/v1/dhcp/subnets",
            "headers": [{"name": "Accept", "value": "*/*"}],
            "dataFormat": "application/json",
            "messageBody": {"subnets": subnets, "pad": ""},
        }});
        let candidate = envelope.to_string();
        if candidate.len() > size {
            break;
        }
        text = candidate;
        subnets.push(json!({"subnetId": format!("subnet-{i}"), "ipv4Network": {"network": "10.0.0.0", "mask": "255.255.255.0"}}));
    }
    let pad = size - text.len();
    text.replacen("\"pad\":\"\"", &format!("\"pad\":\"{}\"", "x".repeat(pad)), 1)
}

/// An EVENT envelope of exactly `size` bytes whose body is one string, like ws-bench's frames.
fn string_envelope_of(size: usize) -> String {
    let empty = r#"{"message":{"messageId":7,"messageType":"EVENT:bench","messageBody":""}}"#;
    empty.replacen("\"\"}", &format!("\"{}\"}}", "x".repeat(size - empty.len())), 1)
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for size in [256, 4 * 1024, 64 * 1024] {
        let frame = envelope_of(size);
        assert_eq!(frame.len(), size);
        assert!(Header::parse(&frame).is_ok());
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("header", size), &frame, |b, f| {
            b.iter(|| Header::parse(black_box(f)).map(|h| h.requires_response))
        });
        group.bench_with_input(BenchmarkId::new("full", size), &frame, |b, f| {
            b.iter(|| Envelope::parse(black_box(f)).map(|e| e.requires_response))
        });
        let frame = string_envelope_of(size);
        assert_eq!(frame.len(), size);
        assert!(Header::parse(&frame).is_ok());
        group.bench_with_input(BenchmarkId::new("header-string-body", size), &frame, |b, f| {
            b.iter(|| Header::parse(black_box(f)).map(|h| h.requires_response))
        });
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
