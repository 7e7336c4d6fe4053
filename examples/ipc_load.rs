//! A load-generating client process for `uminfer serve` (shared-memory
//! protocol v2, any model): draws a pool of distinct pseudo-random inputs
//! for the endpoint's signature (integers inside each input's recorded
//! range), computes the answer to each in this process with the same model
//! file on the CPU, then sends REQUESTS requests, each a pick from the pool,
//! and checks every response against its own input's answer (nothing lost,
//! duplicated or mixed up). Prints one JSON line of statistics. Exit code 1
//! on any mismatch or error.
//!
//! ```sh
//! cargo run --release --example ipc_load -- NAME REQUESTS SEED MODEL
//! ```

use std::time::{Duration, Instant};
use uminfer::doctor::{self, probe::ProbeOptions};
use uminfer::host_tensor::{fill_random, HostTensor};
use uminfer::ipc::{Client, NamedTensor};
use uminfer::Runtime;

/// Distinct inputs the requests pick from.
const POOL: u64 = 8;
/// Relative tolerance against the in-process answer (the server may use other thread counts).
const TOLERANCE: f64 = 1e-5;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, requests, seed, model] = args.as_slice() else {
        anyhow::bail!("usage: ipc_load NAME REQUESTS SEED MODEL");
    };
    let (requests, seed): (usize, u64) = (requests.parse()?, seed.parse()?);
    let mut client = Client::connect(name, Duration::from_secs(20))?;
    let rt = Runtime::from_report(doctor::diagnose(ProbeOptions { smoke_tests: false }));
    let model = rt.model(model)?;
    let mut pool: Vec<(Vec<HostTensor>, Vec<HostTensor>)> = Vec::new();
    for k in 0..POOL {
        let inputs = client
            .inputs()
            .iter()
            .zip(client.input_ranges())
            .enumerate()
            .map(|(i, (info, range))| {
                let mut bytes = vec![0u8; info.byte_len()];
                fill_random(info.dtype, *range, seed.wrapping_mul(1000).wrapping_add(k * 31 + i as u64), &mut bytes);
                HostTensor::new(&info.name, info.dtype, &info.shape, bytes)
            })
            .collect::<uminfer::Result<Vec<_>>>()?;
        let expected = model.run_cpu(&inputs)?;
        pool.push((inputs, expected));
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut latencies = Vec::with_capacity(requests);
    let (mut mismatches, mut errors) = (0usize, 0usize);
    let mut first_problem: Option<String> = None;
    let start = Instant::now();
    for _ in 0..requests {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (inputs, expected) = &pool[(x % POOL) as usize];
        let views = inputs.iter().map(NamedTensor::of).collect::<uminfer::Result<Vec<_>>>()?;
        let t = Instant::now();
        let verdict = client.infer_with(&views, |r| -> Result<(), String> {
            if r.len() != expected.len() {
                return Err(format!("{} outputs, expected {}", r.len(), expected.len()));
            }
            for (got, want) in r.tensors().zip(expected) {
                if got.name() != want.name {
                    return Err(format!("output `{}` where `{}` was expected", got.name(), want.name));
                }
                got.to_host().map_err(|e| e.to_string())?.check_close(want, TOLERANCE)?;
            }
            Ok(())
        });
        latencies.push(t.elapsed());
        let problem = match verdict {
            Ok(Ok(())) => None,
            Ok(Err(m)) => {
                mismatches += 1;
                Some(m)
            }
            Err(e) => {
                errors += 1;
                Some(e.to_string())
            }
        };
        if first_problem.is_none() {
            first_problem = problem;
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    println!(
        "{}",
        serde_json::json!({
            "seed": seed, "requests": requests, "mismatches": mismatches, "errors": errors, "first_problem": first_problem,
            "throughput_per_s": requests as f64 / elapsed.as_secs_f64(),
            "p50_us": pct(0.5), "p99_us": pct(0.99),
        })
    );
    if mismatches + errors > 0 {
        anyhow::bail!("{mismatches} responses did not match their request's answer, {errors} requests failed");
    }
    Ok(())
}
