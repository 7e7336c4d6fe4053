//! A service embedding uminfer: one `SessionPool` shared by several request
//! threads, each checking results against the model's own eager output.
//!
//! ```sh
//! cargo run --release --example service -- [MODEL] [MODE] [SESSIONS] [THREADS] [REQUESTS]
//! cargo run --release --example service -- models/tiny.pt cpu 2 4 200
//! ```
//! MODE is `auto` by default (the fastest mode this machine can run).

use anyhow::{bail, Context};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use uminfer::session::ModeChoice;
use uminfer::{Runtime, SessionPool, SessionSpec};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let model_path = arg(0, "models/tiny.pt");
    let mode: ModeChoice = arg(1, "auto").parse().map_err(anyhow::Error::msg)?;
    let sessions: usize = arg(2, "2").parse().context("SESSIONS")?;
    let threads: usize = arg(3, "4").parse().context("THREADS")?;
    let requests: usize = arg(4, "200").parse().context("REQUESTS")?;

    let rt = Runtime::new();
    let model = rt.model(&model_path)?;
    let input_shape = [1i64, 3, 128, 128];
    let probe = model.forward_cpu(&tch::Tensor::zeros(input_shape, (tch::Kind::Float, tch::Device::Cpu)))?;
    let spec = SessionSpec::new(&input_shape, &probe.size()).mode_choice(mode).calibration_runs(10);
    let pool: SessionPool = SessionPool::new(&rt, &model, spec, sessions)?;
    {
        let s = pool.checkout();
        eprintln!("{} sessions in mode {}: {}", pool.size(), s.mode(), s.note());
    }
    let n_in: usize = input_shape.iter().product::<i64>() as usize;
    let n_out: usize = probe.numel();
    let mismatches = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|sc| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for t in 0..threads {
            let (pool, model, mismatches) = (&pool, &model, &mismatches);
            handles.push(sc.spawn(move || -> anyhow::Result<()> {
                let mut input = vec![0f32; n_in];
                let mut output = vec![0f32; n_out];
                for i in 0..requests {
                    let v = ((t * requests + i) % 97) as f32 / 97.0;
                    input.iter_mut().enumerate().for_each(|(j, x)| *x = v * ((j % 13) as f32 / 13.0));
                    pool.infer(&input, &mut output)?;
                    if i % 50 == 0 {
                        // Spot-check against an eager run on a copy.
                        let want = model.forward_cpu(&tch::Tensor::from_slice(&input).view(input_shape))?;
                        let want = Vec::<f32>::try_from(want.flatten(0, -1))?;
                        let scale = want.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
                        if output.iter().zip(&want).any(|(a, b)| (a - b).abs() / scale > 1e-3) {
                            mismatches.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a request thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = start.elapsed();
    let total = threads * requests;
    println!(
        "{total} requests from {threads} threads over {} sessions in {:.2} s: {:.0} requests/s",
        pool.size(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    if mismatches.load(Ordering::Relaxed) > 0 {
        bail!("{} spot checks disagreed with eager results", mismatches.load(Ordering::Relaxed));
    }
    Ok(())
}
