//! Output of a [`Report`], alone or with one model's [`ModelReport`]: human
//! text (coloured only on a terminal) or JSON.

use super::model::ModelReport;
use super::{Report, Section, Status};
use crate::mode::Mode;
use crate::model::{ModelInput, TensorInfo};
use serde::Serialize;
use std::fmt::Write;

/// JSON form: `schema_version`, `build`, `checks`, `modes`, `facts`.
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"serialising the report: {e}\"}}"))
}

/// JSON form of `uminfer doctor --model M`: the machine's report ([`json`],
/// same keys, `schema_version` 1) with one more top-level key, `model`:
/// [`ModelReport`] (`schema_version`, `facts`, `notes`, `modes`).
pub fn model_json(report: &Report, model: &ModelReport) -> String {
    #[derive(Serialize)]
    struct WithModel<'a> {
        #[serde(flatten)]
        report: &'a Report,
        model: &'a ModelReport,
    }
    serde_json::to_string_pretty(&WithModel { report, model }).unwrap_or_else(|e| format!("{{\"error\": \"serialising the report: {e}\"}}"))
}

fn paint(s: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// `usable` / `unusable`, padded, coloured.
fn flag(usable: bool, color: bool) -> String {
    if usable {
        paint("usable    ", "32", color)
    } else {
        paint("unusable  ", "31", color)
    }
}

/// The checks by section, then the verdict per mode (no final line).
fn machine_sections(report: &Report, color: bool) -> String {
    let tag = |st: Status| match st {
        Status::Pass => paint("pass", "32", color),
        Status::Warn => paint("warn", "33", color),
        Status::Fail => paint("FAIL", "31;1", color),
        Status::Skip => paint("skip", "2", color),
    };
    let mut out = String::new();
    let mut current: Option<Section> = None;
    for c in &report.checks {
        if current != Some(c.section) {
            current = Some(c.section);
            let _ = writeln!(out, "\n{}", paint(c.section.title(), "1", color));
        }
        let _ = writeln!(out, "  [{}] {:<28} {}", tag(c.status), c.id, c.message);
        if let Some(h) = &c.hint {
            let _ = writeln!(out, "         {:<28} fix: {h}", "");
        }
    }
    let _ = writeln!(out, "\n{}", paint("Execution modes", "1", color));
    for m in Mode::ALL {
        if let Some(v) = report.modes.get(&m) {
            let _ = writeln!(out, "  {:<18} {}{}", m.id(), flag(v.usable, color), v.reason);
        }
    }
    out
}

/// The machine's closing sentence, without the exit code.
fn machine_verdict(report: &Report) -> &'static str {
    match report.exit_code() {
        0 => "all checks passed",
        1 => "CPU modes usable; see warnings for what is missing",
        _ => "a check the CPU modes need failed",
    }
}

/// Text form, grouped by section, then the verdict per mode.
pub fn text(report: &Report, color: bool) -> String {
    let mut out = machine_sections(report, color);
    let _ = writeln!(out, "\n{} (exit code {})", machine_verdict(report), report.exit_code());
    out
}

/// `f32 [1, 3, 128, 128]`.
fn tensor(t: &TensorInfo) -> String {
    format!("{} {:?}", t.dtype, t.shape)
}

/// What the model records of one input.
fn recorded(i: &ModelInput) -> String {
    let mut s = match (&i.dtype, &i.shape) {
        (Some(d), Some(shape)) => format!("{d} {shape:?}"),
        (Some(d), None) => format!("{d}, shape not recorded (declare with --input-spec {}=DTYPE:DIMS)", i.name),
        (None, Some(shape)) => format!("{shape:?}, dtype not recorded (declare with --input-spec {}=DTYPE:DIMS)", i.name),
        (None, None) => format!("dtype and shape not recorded (declare with --input-spec {}=DTYPE:DIMS)", i.name),
    };
    if let Some((lo, hi)) = i.range {
        let _ = write!(s, ", values in [{lo}, {hi})");
    }
    s
}

/// The model section: signature, whether it loads, notes, verdict per mode.
fn model_section(model: &ModelReport, color: bool) -> String {
    let f = &model.facts;
    let mut out = String::new();
    // Keys as wide as the longest `input NAME` / `output NAME`, at least as the modes'.
    let names = f.recorded_inputs().iter().map(|i| i.name.len() + "input ".len()).chain(f.outputs().unwrap_or_default().iter().map(|o| o.name.len() + "output ".len()));
    let width = names.max().unwrap_or(0).max(18);
    let row = |out: &mut String, key: &str, value: &str| {
        let _ = writeln!(out, "  {key:<width$} {value}");
    };
    let _ = writeln!(out, "\n{}", paint(&format!("Model {}", f.path.display()), "1", color));
    if let Some(e) = &f.open_error {
        row(&mut out, "loads", &format!("{} {e}", paint("no:", "31;1", color)));
    } else {
        if let Some(format) = f.format {
            row(&mut out, "format", &format.to_string());
        }
        if let Some(p) = &f.package {
            let mut s = p.device.clone();
            if let Some(cc) = &p.compute_capability {
                let _ = write!(s, ", compute capability sm_{cc}");
            }
            if !p.cpu_isa.is_empty() {
                let _ = write!(s, ", {}", p.cpu_isa.join(" "));
            }
            if let Some(cpu) = p.cpu_model.as_ref().filter(|_| p.is_cpu()) {
                let _ = write!(s, " (exported on {cpu})");
            }
            if let (Some(os), Some(arch)) = (&p.platform, &p.machine) {
                let _ = write!(s, ", {os}/{arch}");
            }
            if let Some(v) = p.hint.as_ref().and_then(|h| h.torch_version.as_ref()) {
                let _ = write!(s, ", torch {v}");
            }
            row(&mut out, "package", &s);
        }
        let runs_on_cpu = f.package.as_ref().is_none_or(|p| p.is_cpu());
        let on_gpu = f.gpu_sessions.values().find(|t| t.outcome.is_ok()).map(|t| t.device);
        let loads = match (runs_on_cpu, on_gpu) {
            (true, _) => "yes (on the CPU)".to_string(),
            (false, Some(d)) => format!("yes (on GPU {d})"),
            (false, None) => "opens (metadata only: a GPU package is loaded onto a GPU by its sessions)".to_string(),
        };
        row(&mut out, "loads", &loads);
        match &f.inputs {
            Some(Ok(inputs)) if inputs.is_empty() => row(&mut out, "inputs", "none"),
            Some(Ok(inputs)) => {
                for i in inputs {
                    row(&mut out, &format!("input {}", i.name), &recorded(i));
                }
            }
            Some(Err(e)) => row(&mut out, "inputs", &format!("not readable here: {e}")),
            None => {}
        }
        match (f.outputs(), &f.cpu_run) {
            (Some(outputs), _) => {
                for o in outputs {
                    row(&mut out, &format!("output {}", o.name), &tensor(o));
                }
            }
            (None, Some(Err(e))) => row(&mut out, "outputs", &format!("not found: the CPU run failed: {e}")),
            (None, _) => row(&mut out, "outputs", "not found (outputs are found by running the model)"),
        }
        for n in &model.notes {
            let _ = writeln!(out, "  {}{} {n}", paint("note", "33", color), " ".repeat(width - "note".len()));
        }
    }
    let _ = writeln!(out, "\n{}", paint("Execution modes for this model", "1", color));
    for m in Mode::ALL {
        if let Some(v) = model.modes.get(&m) {
            // Every mode's reason is then the load error, printed once above.
            let reason = if f.open_error.is_some() { "does not load (see above)" } else { &v.reason };
            let _ = writeln!(out, "  {:<18} {}{reason}", m.id(), flag(v.usable, color));
        }
    }
    out
}

/// Text form of `uminfer doctor --model M`: the machine's report ([`text`]
/// without its closing line), then the model's signature and its verdict
/// per mode, then both closing sentences and the exit code
/// ([`ModelReport::exit_code`]).
pub fn model_text(report: &Report, model: &ModelReport, color: bool) -> String {
    let mut out = machine_sections(report, color);
    out.push_str(&model_section(model, color));
    let code = model.exit_code(report);
    let usable = model.usable_modes();
    let path = model.facts.path.display();
    let verdict = if model.facts.open_error.is_some() {
        format!("{path} does not load")
    } else if usable.is_empty() {
        format!("no mode runs {path} on this machine")
    } else {
        format!("{path} runs here in {}", usable.iter().map(|m| m.id()).collect::<Vec<_>>().join(", "))
    };
    let _ = writeln!(out, "\nmachine: {}\nmodel: {verdict} (exit code {code})", machine_verdict(report));
    out
}
