//! Output of a [`Report`]: human text (coloured only on a terminal) or JSON.

use super::{Report, Section, Status};
use crate::mode::Mode;
use std::fmt::Write;

/// JSON form: `schema_version`, `build`, `checks`, `modes`, `facts`.
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"serialising the report: {e}\"}}"))
}

/// Text form, grouped by section, then the verdict per mode.
pub fn text(report: &Report, color: bool) -> String {
    let paint = |s: &str, code: &str| if color { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() };
    let tag = |st: Status| match st {
        Status::Pass => paint("pass", "32"),
        Status::Warn => paint("warn", "33"),
        Status::Fail => paint("FAIL", "31;1"),
        Status::Skip => paint("skip", "2"),
    };
    let mut out = String::new();
    let mut current: Option<Section> = None;
    for c in &report.checks {
        if current != Some(c.section) {
            current = Some(c.section);
            let _ = writeln!(out, "\n{}", paint(c.section.title(), "1"));
        }
        let _ = writeln!(out, "  [{}] {:<28} {}", tag(c.status), c.id, c.message);
        if let Some(h) = &c.hint {
            let _ = writeln!(out, "         {:<28} fix: {h}", "");
        }
    }
    let _ = writeln!(out, "\n{}", paint("Execution modes", "1"));
    for m in Mode::ALL {
        if let Some(v) = report.modes.get(&m) {
            let flag = if v.usable { paint("usable    ", "32") } else { paint("unusable  ", "31") };
            let _ = writeln!(out, "  {:<18} {flag}{}", m.id(), v.reason);
        }
    }
    let verdict = match report.exit_code() {
        0 => "all checks passed",
        1 => "CPU modes usable; see warnings for what is missing",
        _ => "a check the CPU modes need failed",
    };
    let _ = writeln!(out, "\n{verdict} (exit code {})", report.exit_code());
    out
}
