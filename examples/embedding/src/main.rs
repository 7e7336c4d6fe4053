//! Runs a model with uminfer from a crate of its own and checks the answer
//! against the outputs PyTorch gave for the same inputs.
//!
//! ```sh
//! cargo run --release -- MODEL INPUTS.npz EXPECTED.npz
//! cargo run --release -- ../../models/encoder.pt ../../models/encoder.inputs.npz ../../models/encoder.expected.npz
//! ```

use anyhow::{bail, Context};
use uminfer::host_tensor::read_npz;
use uminfer::session::ModeChoice;
use uminfer::{Runtime, SessionSpec};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, inputs, expected] = &args[..] else {
        bail!("usage: embedding MODEL INPUTS.npz EXPECTED.npz");
    };
    let rt = Runtime::new(); // probes the machine once: which modes can run here
    let model = rt.model(model)?; // TorchScript .pt or AOTInductor .pt2
    let mut s = rt.session(&model, SessionSpec::new().mode_choice(ModeChoice::Auto))?;
    for x in read_npz(inputs.as_ref()).context("reading the inputs")? {
        s.write_input(&x)?; // by name, into the memory the model reads
    }
    s.run()?;
    for want in read_npz(expected.as_ref()).context("reading the expected outputs")? {
        let got = s.read_output(want.name.as_str())?;
        got.check_close(&want, 1e-4).map_err(anyhow::Error::msg)?;
        println!("{}: {:?} {} matches PyTorch", want.name, got.shape, got.dtype);
    }
    println!("{} ({}): ok", s.mode(), s.note());
    Ok(())
}
