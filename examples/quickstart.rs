//! The README's first program: one session, its input written in place, a
//! hundred requests, the output read where the model wrote it. The body is
//! the README's code, line for line (keep them the same).
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```

use uminfer::session::ModeChoice;
use uminfer::{Runtime, SessionSpec};

fn main() -> anyhow::Result<()> {
    let rt = Runtime::new();                              // probes the machine once (the doctor's checks)
    let model = rt.model("models/tiny.pt")?;              // TorchScript .pt or AOTInductor .pt2
    let spec = SessionSpec::new().mode_choice(ModeChoice::Auto); // inputs as the model records them
    let mut s = rt.session(&model, spec)?;                // refused, with the doctor's reason, where a mode cannot run
    let x: Vec<f32> = (0..s.inputs()[0].numel()).map(|i| (i % 256) as f32 / 255.0).collect();
    for _ in 0..100 {
        s.input_mut::<f32>(0)?.copy_from_slice(&x);       // the region the model reads: no copy follows
        s.run()?;                                         // returns when the output is written
    }
    let y: &[f32] = s.output(0)?;                         // the region the model wrote its output into
    let p50 = s.timing().map(|t| t.host.p50_us).unwrap_or_default(); // also P90, P99, mean, std; device time on GPU
    println!("{} ({}): {} outputs, P50 {p50:.1} µs", s.mode(), s.note(), y.len());
    Ok(())
}
