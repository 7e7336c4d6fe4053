//! A service embedding uminfer: one `SessionPool` shared by several request
//! threads, each checking results against the model's own eager output.
//! Any model whose inputs are recorded (the reference models are) works:
//! the inputs are drawn per dtype, inside each input's recorded value range.
//!
//! ```sh
//! cargo run --release --example service -- [MODEL] [MODE] [SESSIONS] [THREADS] [REQUESTS]
//! cargo run --release --example service -- models/encoder.pt cpu 2 4 200
//! ```
//! MODE is `auto` by default (the fastest mode this machine can run).

use anyhow::{bail, Context};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use uminfer::host_tensor::{fill_random, HostTensor};
use uminfer::session::{ModeChoice, TensorMut, TensorRef};
use uminfer::{Runtime, SessionSpec};

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
    // The outputs (names, dtypes, shapes) are found when the sessions are built.
    let pool = rt.session_pool(&model, SessionSpec::new().mode_choice(mode).calibration_runs(10), sessions)?;
    {
        let s = pool.checkout();
        eprintln!("{} sessions in mode {}: {}", pool.size(), s.mode(), s.note());
    }
    let ranges: Vec<Option<(i64, i64)>> = model.inputs()?.iter().map(|i| i.range).collect();
    let mismatches = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|sc| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for t in 0..threads {
            let (pool, model, ranges, mismatches) = (&pool, &model, &ranges, &mismatches);
            handles.push(sc.spawn(move || -> anyhow::Result<()> {
                // This thread's request and response memory, reused.
                let mut inputs = pool.inputs().iter().map(|i| HostTensor::zeros(&i.name, i.dtype, &i.shape)).collect::<uminfer::Result<Vec<_>>>()?;
                let mut outputs: Vec<Vec<u8>> = pool.outputs().iter().map(|o| vec![0u8; o.byte_len()]).collect();
                for i in 0..requests {
                    for (k, x) in inputs.iter_mut().enumerate() {
                        let mut bytes = x.bytes().to_vec();
                        fill_random(x.dtype, ranges[k], (t * requests + i) as u64, &mut bytes);
                        *x = HostTensor::new(&x.name, x.dtype, &x.shape, bytes)?;
                    }
                    let ins: Vec<TensorRef> = inputs.iter().map(|x| TensorRef::from_bytes(x.dtype, x.bytes())).collect::<uminfer::Result<_>>()?;
                    let mut outs: Vec<TensorMut> = outputs
                        .iter_mut()
                        .zip(pool.outputs())
                        // SAFETY: a Vec<u8> is initialised, and viewing initialised bytes as
                        // MaybeUninit claims nothing more.
                        .map(|(o, info)| TensorMut::from_bytes(info.dtype, unsafe { &mut *(o.as_mut_slice() as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) }))
                        .collect::<uminfer::Result<_>>()?;
                    pool.infer(&ins, &mut outs)?;
                    drop(outs);
                    if i % 50 == 0 {
                        // Spot-check against an eager run on a copy.
                        for (got, want) in outputs.iter().zip(model.run_cpu(&inputs)?) {
                            let got = HostTensor::new(&want.name, want.dtype, &want.shape, got.clone())?;
                            if got.check_close(&want, 1e-3).is_err() {
                                mismatches.fetch_add(1, Ordering::Relaxed);
                            }
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
