//! The `uminfer` command line.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use uminfer::doctor::{self, probe::ProbeOptions, render};

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
    };
    std::process::exit(code);
}
