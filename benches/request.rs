//! What reading a request body costs (issue 15, lever 7): `RequestFacts::parse`, the relay's
//! check of the whole body (UTF-8, JSON) that also extracts model, stream, max_tokens and
//! metadata, on the bodies `scripts/load.sh` sends — ~2 KB and a ~76 KB Claude Code turn —
//! beside its parts (the UTF-8 check alone, serde_json skipping the document) and beside the
//! same extraction with sonic-rs (SIMD), which checks the whole document as well.
//!
//! `cargo bench --bench request` (~1 min). The bodies come from `scripts/load_body.py`.

use std::hint::black_box;
use std::process::Command;

use cc_relay::proxy::RequestFacts;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::Deserialize;

fn body(args: &[&str]) -> Vec<u8> {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/load_body.py"))
        .args(args)
        .output()
        .expect("python3 runs scripts/load_body.py");
    assert!(out.status.success(), "load_body.py failed");
    out.stdout
}

/// The same fields as the relay's probe, read by sonic-rs.
#[derive(Deserialize)]
struct SonicProbe<'a> {
    #[serde(borrow, default)]
    model: Option<sonic_rs::LazyValue<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    metadata: Option<SonicMetadata>,
}

#[derive(Deserialize)]
struct SonicMetadata {
    #[serde(default)]
    user_id: Option<String>,
}

fn sonic_facts(body: &[u8]) -> Option<(String, bool, u64)> {
    let probe: SonicProbe<'_> = sonic_rs::from_slice(body).ok()?;
    let model: String = sonic_rs::from_str(probe.model?.as_raw_str()).ok()?;
    let _ = probe.metadata.and_then(|m| m.user_id);
    Some((
        model,
        probe.stream.unwrap_or(false),
        probe.max_tokens.unwrap_or(0),
    ))
}

fn parse(c: &mut Criterion) {
    let bodies = [
        ("2k", body(&["small"])),
        ("76k", body(&["claude-code", "--stream"])),
    ];
    let mut group = c.benchmark_group("request_body");
    for (name, body) in &bodies {
        assert!(RequestFacts::parse(body).is_ok());
        assert!(sonic_facts(body).is_some());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("facts_serde_json", name),
            body,
            |b, body| b.iter(|| RequestFacts::parse(black_box(body))),
        );
        group.bench_with_input(BenchmarkId::new("utf8_only", name), body, |b, body| {
            b.iter(|| std::str::from_utf8(black_box(body)).is_ok())
        });
        group.bench_with_input(
            BenchmarkId::new("serde_json_skip_only", name),
            body,
            |b, body| {
                b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).is_ok())
            },
        );
        group.bench_with_input(BenchmarkId::new("facts_sonic_rs", name), body, |b, body| {
            b.iter(|| sonic_facts(black_box(body)))
        });
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
