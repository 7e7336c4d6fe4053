//! A load-generating client process for `uminfer serve` with the identity
//! model: sends REQUESTS requests with distinct pseudo-random inputs, checks
//! every response is its own input back (nothing lost, duplicated or mixed
//! up), and prints one JSON line of statistics. Exit code 1 on any mismatch.
//!
//! ```sh
//! cargo run --release --example ipc_load -- NAME REQUESTS SEED
//! ```

use std::time::{Duration, Instant};
use uminfer::ipc::Client;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().cloned().unwrap_or_else(|| "load".into());
    let requests: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let seed: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let shape = [1i64, 3, 128, 128];
    let n = 3 * 128 * 128;
    let mut client = Client::connect(&name, Duration::from_secs(20))?;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut input = vec![0f32; n];
    let mut latencies = Vec::with_capacity(requests);
    let mut mismatches = 0usize;
    let start = Instant::now();
    for _ in 0..requests {
        for v in input.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *v = (x >> 40) as f32;
        }
        let t = Instant::now();
        let ok = client.infer_in_place(&shape, |buf| buf.copy_from_slice(&input), |r| r.shape == shape && r.data == input.as_slice())?;
        latencies.push(t.elapsed());
        if !ok {
            mismatches += 1;
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    println!(
        "{}",
        serde_json::json!({
            "seed": seed, "requests": requests, "mismatches": mismatches,
            "throughput_per_s": requests as f64 / elapsed.as_secs_f64(),
            "p50_us": pct(0.5), "p99_us": pct(0.99),
        })
    );
    if mismatches > 0 {
        anyhow::bail!("{mismatches} responses did not echo their request");
    }
    Ok(())
}
