//! Link flags for crates that depend on [uminfer](https://crates.io/crates/uminfer).
//!
//! cargo does not pass a dependency's `cargo:rustc-link-arg` lines on to the
//! crates that depend on it, so every binary, test and example that links
//! uminfer needs these in its own `build.rs`: an rpath to libtorch and to
//! the pip CUDA libraries beside it (no `LD_LIBRARY_PATH` at run time), and
//! `--no-as-needed` with the CUDA libraries named (without it the linker
//! drops `libtorch_cuda`, and libtorch silently reports CUDA unavailable).
//!
//! ```no_run
//! // build.rs of a crate with `uminfer` in [dependencies] and
//! // `uminfer-build` in [build-dependencies]
//! fn main() {
//!     uminfer_build::link();
//! }
//! ```
//!
//! libtorch is found by the first of these that names one:
//! 1. `DEP_UMINFER_SHIM_LIBTORCH_LIB`, which uminfer's own build script
//!    exports to the crates depending on it directly: the library it was
//!    linked against;
//! 2. the `LIBTORCH` variable (the `torch` directory of a Python
//!    environment, as torch-sys takes it);
//! 3. a `.venv` in the dependent crate's directory or one above it;
//! 4. `python3 -c 'import torch'`.
//!
//! This helper cannot point torch-sys (tch's build script, which runs
//! before it) at libtorch: the dependent crate sets `LIBTORCH` itself, in
//! its environment or its `.cargo/config.toml` (see uminfer's
//! `docs/embedding.md`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The libraries linked with `--no-as-needed`, in link order.
const LIBRARIES: [&str; 5] = ["torch_cuda", "c10_cuda", "torch", "torch_cpu", "c10"];

/// Where libtorch was found, and by which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Libtorch {
    /// The directory holding `libtorch_cpu.so` (`.../site-packages/torch/lib`).
    pub lib: PathBuf,
    /// The directory holding `libcudart.so.13` (`.../site-packages/nvidia/cu13/lib`).
    pub cuda_lib: PathBuf,
    /// Which rule found it, for messages.
    pub found_by: &'static str,
}

impl Libtorch {
    /// The `cargo:` lines that link a binary against this libtorch.
    pub fn link_lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("cargo:rustc-link-search=native={}", self.lib.display()),
            format!("cargo:rustc-link-search=native={}", self.cuda_lib.display()),
            format!("cargo:rustc-link-arg=-Wl,-rpath,{}", self.lib.display()),
            format!("cargo:rustc-link-arg=-Wl,-rpath,{}", self.cuda_lib.display()),
            "cargo:rustc-link-arg=-Wl,--no-as-needed".to_string(),
        ];
        lines.extend(LIBRARIES.iter().map(|l| format!("cargo:rustc-link-arg=-l{l}")));
        lines.push("cargo:rustc-link-arg=-l:libcudart.so.13".to_string());
        lines
    }
}

/// Emits the link flags for every binary, test, bench and example of the
/// calling package; on failure prints one sentence saying what is missing
/// and how to fix it, and exits the build script with status 1.
pub fn link() {
    for var in ["DEP_UMINFER_SHIM_LIBTORCH_LIB", "LIBTORCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest = env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_default();
    match find(&Sources::from_env(&manifest)) {
        Ok(found) => {
            for line in found.link_lines() {
                println!("{line}");
            }
        }
        Err(why) => {
            eprintln!("\nerror: uminfer-build: {why}\n");
            std::process::exit(1);
        }
    }
}

/// What the search looks at (the environment of a build script, or a test's).
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `DEP_UMINFER_SHIM_LIBTORCH_LIB`: a `torch/lib` directory.
    pub dep_lib: Option<PathBuf>,
    /// `LIBTORCH`: a `torch` directory.
    pub libtorch: Option<PathBuf>,
    /// The dependent crate's directory (searched upwards for `.venv`).
    pub manifest_dir: PathBuf,
    /// Whether to ask `python3` as the last resort.
    pub ask_python: bool,
}

impl Sources {
    /// The build script's environment.
    pub fn from_env(manifest_dir: &Path) -> Self {
        Sources {
            dep_lib: env::var_os("DEP_UMINFER_SHIM_LIBTORCH_LIB").map(PathBuf::from),
            libtorch: env::var_os("LIBTORCH").map(PathBuf::from).map(|p| absolute(manifest_dir, p)),
            manifest_dir: manifest_dir.to_path_buf(),
            ask_python: true,
        }
    }
}

/// Finds libtorch by the rules of the crate documentation.
pub fn find(src: &Sources) -> Result<Libtorch, String> {
    if let Some(lib) = &src.dep_lib {
        return checked(lib.clone(), "DEP_UMINFER_SHIM_LIBTORCH_LIB (the libtorch uminfer linked)");
    }
    if let Some(torch) = &src.libtorch {
        return checked(torch.join("lib"), "LIBTORCH");
    }
    for dir in src.manifest_dir.ancestors() {
        if let Some(torch) = venv_torch(&dir.join(".venv")) {
            return checked(torch.join("lib"), "a .venv above the crate");
        }
    }
    if src.ask_python {
        if let Some(torch) = python_torch() {
            return checked(torch.join("lib"), "python3 -c 'import torch'");
        }
    }
    Err("libtorch not found: set LIBTORCH to the torch directory of a Python environment with torch==2.11.0 \
         (e.g. `export LIBTORCH=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')`), \
         or create one with `bash ci/setup` in a uminfer checkout and set LIBTORCH to its .libtorch"
        .to_string())
}

/// `lib` if it holds libtorch and the pip CUDA runtime sits beside it.
fn checked(lib: PathBuf, found_by: &'static str) -> Result<Libtorch, String> {
    let lib = lib.canonicalize().map_err(|e| format!("libtorch directory {} (from {found_by}) cannot be opened: {e}", lib.display()))?;
    if !lib.join("libtorch_cpu.so").exists() {
        return Err(format!("{} (from {found_by}) holds no libtorch_cpu.so: point it at the torch package of torch==2.11.0", lib.display()));
    }
    if !lib.join("libtorch_cuda.so").exists() {
        return Err(format!(
            "{} (from {found_by}) holds no libtorch_cuda.so: uminfer needs the CUDA build of torch==2.11.0 (the default PyPI wheel)",
            lib.display()
        ));
    }
    let cuda_lib = lib.join("../../nvidia/cu13/lib");
    let cuda_lib = cuda_lib
        .canonicalize()
        .ok()
        .filter(|d| d.join("libcudart.so.13").exists())
        .ok_or_else(|| format!("no nvidia/cu13/lib/libcudart.so.13 beside {} (from {found_by}): install torch==2.11.0 with pip, which brings it", lib.display()))?;
    Ok(Libtorch { lib, cuda_lib, found_by })
}

/// `VENV/lib/python3.*/site-packages/torch`, if it exists.
fn venv_torch(venv: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("site-packages/torch")))
        .filter(|t| t.join("lib/libtorch_cpu.so").exists())
        .collect();
    found.sort();
    found.pop()
}

/// The `torch` package directory `python3` imports, if any.
fn python_torch() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import os, torch; print(os.path.dirname(torch.__file__))"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// A relative `LIBTORCH` is relative to the crate, as in a cargo `[env]` table with `relative = true`.
fn absolute(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake pip layout: `ROOT/site-packages/{torch/lib, nvidia/cu13/lib}`.
    fn fake_site(root: &Path, cuda: bool, cuda_runtime: bool) -> PathBuf {
        let torch = root.join("site-packages/torch");
        fs::create_dir_all(torch.join("lib")).unwrap();
        fs::write(torch.join("lib/libtorch_cpu.so"), b"").unwrap();
        if cuda {
            fs::write(torch.join("lib/libtorch_cuda.so"), b"").unwrap();
        }
        let cu13 = root.join("site-packages/nvidia/cu13/lib");
        fs::create_dir_all(&cu13).unwrap();
        if cuda_runtime {
            fs::write(cu13.join("libcudart.so.13"), b"").unwrap();
        }
        torch
    }

    fn scratch(name: &str) -> PathBuf {
        let d = env::temp_dir().join(format!("uminfer-build-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn libtorch_variable_gives_rpaths_and_no_as_needed() {
        let d = scratch("var");
        let torch = fake_site(&d, true, true);
        let found = find(&Sources { libtorch: Some(torch.clone()), manifest_dir: d.clone(), ..Default::default() }).unwrap();
        assert_eq!(found.found_by, "LIBTORCH");
        let lib = torch.join("lib").canonicalize().unwrap();
        let lines = found.link_lines();
        assert!(lines.contains(&format!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display())), "{lines:?}");
        let cu = d.join("site-packages/nvidia/cu13/lib").canonicalize().unwrap();
        assert!(lines.contains(&format!("cargo:rustc-link-arg=-Wl,-rpath,{}", cu.display())), "{lines:?}");
        let no_as_needed = lines.iter().position(|l| l.ends_with("--no-as-needed")).unwrap();
        let torch_cuda = lines.iter().position(|l| l.ends_with("-ltorch_cuda")).unwrap();
        assert!(no_as_needed < torch_cuda, "--no-as-needed must come before the libraries it keeps: {lines:?}");
    }

    #[test]
    fn uminfer_s_own_libtorch_wins_over_the_variable() {
        let (a, b) = (scratch("dep-a"), scratch("dep-b"));
        let ta = fake_site(&a, true, true);
        let tb = fake_site(&b, true, true);
        let found = find(&Sources { dep_lib: Some(ta.join("lib")), libtorch: Some(tb), manifest_dir: a.clone(), ..Default::default() }).unwrap();
        assert_eq!(found.lib, ta.join("lib").canonicalize().unwrap());
    }

    #[test]
    fn a_venv_above_the_crate_is_found() {
        let d = scratch("venv");
        let site = d.join(".venv/lib/python3.11");
        fake_site(&site, true, true);
        let krate = d.join("work/mycrate");
        fs::create_dir_all(&krate).unwrap();
        let found = find(&Sources { manifest_dir: krate, ..Default::default() }).unwrap();
        assert_eq!(found.found_by, "a .venv above the crate");
        assert_eq!(found.lib, site.join("site-packages/torch/lib").canonicalize().unwrap());
    }

    #[test]
    fn missing_pieces_are_named_in_one_sentence() {
        let d = scratch("missing");
        let none = find(&Sources { manifest_dir: d.clone(), ..Default::default() }).unwrap_err();
        assert!(none.starts_with("libtorch not found: set LIBTORCH"), "{none}");
        let cpu_only = fake_site(&d.join("cpu"), false, true);
        let e = find(&Sources { libtorch: Some(cpu_only), manifest_dir: d.clone(), ..Default::default() }).unwrap_err();
        assert!(e.contains("no libtorch_cuda.so") && e.contains("CUDA build"), "{e}");
        let no_rt = fake_site(&d.join("nort"), true, false);
        let e = find(&Sources { libtorch: Some(no_rt), manifest_dir: d.clone(), ..Default::default() }).unwrap_err();
        assert!(e.contains("libcudart.so.13"), "{e}");
        let e = find(&Sources { libtorch: Some(d.join("nowhere")), manifest_dir: d, ..Default::default() }).unwrap_err();
        assert!(e.contains("cannot be opened") && e.contains("LIBTORCH"), "{e}");
    }
}
