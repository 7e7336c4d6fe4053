//! Reading `torch.__version__` from a torch package's `version.py` (the pip
//! wheel has no `build-version` file). Shared by `build.rs` (which includes
//! this file with `#[path]`) and the doctor.

/// The `__version__` value in the text of a `version.py`, quotes removed.
pub fn parse_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("__version__ = ")).map(|v| v.trim().trim_matches(['\'', '"']).to_string())
}
