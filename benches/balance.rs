//! `pick()` per algorithm over 10 backends, and Maglev table / hash ring builds.
//! Run: `cargo bench --bench balance -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use uringlb::balance::{
    build_with, hash_client, table_size_for, BuildOptions, HashRing, MaglevTable, Member, Pool,
    Request,
};
use uringlb::config::{Algorithm, HashKey};

/// A pool as the worker will have it: plain arrays, everything eligible, some load.
struct BenchPool {
    weights: Vec<u32>,
    active: Vec<u64>,
    latency: Vec<f64>,
}

impl Pool for BenchPool {
    fn len(&self) -> usize {
        self.weights.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn eligible(&self, _i: usize) -> bool {
        true
    }
    fn active(&self, i: usize) -> u64 {
        self.active[i]
    }
    fn latency_ns(&self, i: usize, _now_ns: u64) -> f64 {
        self.latency[i]
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250))
        .collect()
}

fn members(names: &[String]) -> Vec<Member<'_>> {
    names
        .iter()
        .enumerate()
        .map(|(i, key)| Member {
            key,
            weight: 1 + (i % 3) as u32,
        })
        .collect()
}

fn picks(c: &mut Criterion) {
    let n = names(10);
    let m = members(&n);
    let pool = BenchPool {
        weights: m.iter().map(|m| m.weight).collect(),
        active: (0..10).map(|i| (i * 7 % 5) as u64).collect(),
        latency: (0..10).map(|i| 1e5 * (1 + i % 4) as f64).collect(),
    };
    let mut group = c.benchmark_group("pick/10");
    for (name, algorithm) in Algorithm::ALL {
        for factor in [None, Some(125)] {
            let hashing = matches!(
                algorithm,
                Algorithm::SourceHash | Algorithm::Maglev | Algorithm::RingHash
            );
            if factor.is_some() && !hashing {
                continue;
            }
            let opts = BuildOptions {
                hash_balance_factor: factor,
                ..BuildOptions::default()
            };
            let mut sel = build_with(algorithm, &m, 0, &opts);
            let id = match factor {
                Some(f) => format!("{name}+bounded{f}"),
                None => name.to_string(),
            };
            let mut key = 0u64;
            group.bench_function(id, |b| {
                b.iter(|| {
                    // A different client each time, so table reads are not all one line.
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let req = Request {
                        key,
                        now_ns: 1_000_000,
                        retry: false,
                    };
                    black_box(sel.pick(&pool, black_box(&req)))
                })
            });
        }
    }
    group.finish();

    let addr = "192.0.2.7:43210".parse().expect("literal address");
    c.bench_function("hash_client/ip+port", |b| {
        b.iter(|| hash_client(black_box(&addr), HashKey::SourceIpPort))
    });
}

fn tables(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for count in [10usize, 100, 1000] {
        let n = names(count);
        let m: Vec<Member<'_>> = n.iter().map(|key| Member { key, weight: 1 }).collect();
        let size = table_size_for(65537, count);
        group.bench_with_input(BenchmarkId::new("maglev", count), &m, |b, m| {
            b.iter(|| MaglevTable::new(black_box(m), size))
        });
        group.bench_with_input(BenchmarkId::new("ring", count), &m, |b, m| {
            b.iter(|| HashRing::new(black_box(m)))
        });
    }
    group.finish();
}

criterion_group!(benches, picks, tables);
criterion_main!(benches);
