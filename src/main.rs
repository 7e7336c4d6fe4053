//! The `uminfer` command line.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use uminfer::doctor::{self, probe::ProbeOptions, render};
use uminfer::session::ModeChoice;
use uminfer::{Runtime, Session, SessionSpec};

#[derive(Parser)]
#[command(name = "uminfer", version, about = "Zero-copy low-latency libtorch inference runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the driver, GPUs, libtorch and shared memory; say which modes work here.
    ///
    /// Exit code: 0 all checks pass, 1 warnings (e.g. no GPU), 2 the CPU modes cannot run.
    Doctor {
        /// Machine-readable output (schema_version 1).
        #[arg(long)]
        json: bool,
        /// Skip the GPU smoke tests (managed-memory round trip).
        #[arg(long)]
        no_smoke: bool,
    },
    /// Run a TorchScript model on a .npy input through a session; write the output as .npy.
    ///
    /// Shape and dtype come from the input file (float32) and are checked
    /// against the model. With --repeat N, prints the timing summary.
    Run {
        /// TorchScript model file.
        #[arg(long)]
        model: PathBuf,
        /// Input tensor (.npy, float32).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the output tensor (.npy).
        #[arg(long)]
        output: PathBuf,
        /// cpu, gpu-copy, gpu-pinned, gpu-managed, gpu-managed-graph or auto.
        #[arg(long, default_value = "cpu")]
        mode: ModeChoice,
        /// CUDA device ordinal for GPU modes.
        #[arg(long, default_value_t = 0)]
        device: usize,
        /// Requests to run (the output of the last is written).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Warm-up runs at build (at least 3).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Print the timing summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

struct RunArgs {
    model: PathBuf,
    input: PathBuf,
    output: PathBuf,
    mode: ModeChoice,
    device: usize,
    repeat: usize,
    warmup: usize,
    json: bool,
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let input = tch::Tensor::read_npy(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    if input.kind() != tch::Kind::Float {
        bail!("{}: dtype {:?}; `uminfer run` takes float32 .npy inputs", a.input.display(), input.kind());
    }
    let rt = Runtime::new();
    let model = rt.model(&a.model)?;
    // The model's output shape and dtype, from one eager CPU run on a copy.
    let probe = model.forward_cpu(&input)?;
    if probe.kind() != tch::Kind::Float {
        bail!("the model returns {:?}; `uminfer run` handles float32 outputs", probe.kind());
    }
    let spec = SessionSpec::new(&input.size(), &probe.size()).mode_choice(a.mode).device(a.device).warmup(a.warmup);
    let mut session: Session = rt.session(&model, spec)?;
    tracing::info!("mode {}: {}", session.mode(), session.note());
    let data = Vec::<f32>::try_from(input.flatten(0, -1)).context("reading the input values")?;
    session.input_mut().copy_from_slice(&data);
    for _ in 0..a.repeat.max(1) {
        session.run()?;
    }
    let out = tch::Tensor::from_slice(session.output()).view(probe.size().as_slice());
    out.write_npy(&a.output).with_context(|| format!("writing {}", a.output.display()))?;
    let timing = session.timing().context("no request was timed")?;
    if a.json {
        let v = serde_json::json!({ "mode": session.mode(), "note": session.note(), "output": a.output, "timing": timing });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("mode {} ({}), output {:?} written to {}", session.mode(), session.note(), probe.size(), a.output.display());
        let h = timing.host;
        println!("host   n={} p50={:.1}µs p90={:.1}µs p99={:.1}µs mean={:.1}µs std={:.1}µs", h.count, h.p50_us, h.p90_us, h.p99_us, h.mean_us, h.std_us);
        if let Some(d) = timing.device {
            println!("device n={} p50={:.1}µs p90={:.1}µs p99={:.1}µs mean={:.1}µs std={:.1}µs", d.count, d.p50_us, d.p90_us, d.p99_us, d.mean_us, d.std_us);
        }
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Doctor { json, no_smoke } => {
            let report = doctor::diagnose(ProbeOptions { smoke_tests: !no_smoke });
            if json {
                println!("{}", render::json(&report));
            } else {
                let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                print!("{}", render::text(&report, color));
            }
            report.exit_code()
        }
        Command::Run { model, input, output, mode, device, repeat, warmup, json } => {
            match run(RunArgs { model, input, output, mode, device, repeat, warmup, json }) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    2
                }
            }
        }
    };
    std::process::exit(code);
}
