//! Build script: links libtorch so that every binary of this crate runs without
//! `LD_LIBRARY_PATH`, compiles the C++ shim (`src/shim/`), embeds the kernel
//! sources (`kernels/*.cu`), compiles the Open Inference Protocol service
//! (`proto/*.proto`, pure Rust: no `protoc` needed) and records build facts
//! for `uminfer doctor`.
//!
//! Why the link flags: torch-sys emits no usable rpath, and with the default
//! `--as-needed` the linker drops `libtorch_cuda.so` (nothing references it
//! directly), after which libtorch silently reports CUDA unavailable. We emit
//! `--no-as-needed` and name the CUDA libraries explicitly. `rustc-link-arg`
//! does not propagate to dependent crates: a downstream binary must repeat
//! these flags (it can read the library directory from
//! `DEP_UMINFER_SHIM_LIBTORCH_LIB`; see README "Embedding").

#[path = "src/torch_version.rs"]
mod torch_version;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::{env, fs};

const SETUP_HINT: &str = "run `bash ci/setup` in the repository root (it installs torch==2.11.0 into .venv and links .libtorch)";

fn main() {
    if let Err(e) = run() {
        // A clear, single message instead of a linker wall.
        eprintln!("\nerror: uminfer build: {e:#}\n  fix: {SETUP_HINT}\n");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/torch_version.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    // `.libtorch` is retargeted by ci/setup when the venv changes: the new
    // target's mtime differs, so the rpath is recomputed.
    if let Ok(l) = env::var("LIBTORCH") {
        println!("cargo:rerun-if-changed={l}");
        println!("cargo:rerun-if-changed={l}/lib/libtorch_cpu.so");
    }

    let lib = libtorch_lib_dir()?;
    let torch_dir = lib.parent().context("libtorch lib dir has no parent")?.to_path_buf();
    let cu13 = torch_dir.join("../nvidia/cu13");
    for (what, path) in [
        ("libtorch_cpu.so", lib.join("libtorch_cpu.so")),
        ("libtorch_cuda.so (the CUDA build of torch 2.11.0)", lib.join("libtorch_cuda.so")),
        ("torch headers", torch_dir.join("include/ATen/ATen.h")),
        ("CUDA runtime headers (pip nvidia-cuda-runtime)", cu13.join("include/cuda_runtime.h")),
        ("crt/host_config.h (pip nvidia-cuda-crt==13.0.88)", cu13.join("include/crt/host_config.h")),
        ("libcudart.so.13 (pip nvidia-cuda-runtime)", cu13.join("lib/libcudart.so.13")),
    ] {
        if !path.exists() {
            bail!("{what} not found at {}", path.display());
        }
    }
    let cu13 = cu13.canonicalize()?;

    let version = torch_version(&torch_dir)?;
    if !version.starts_with("2.11.0") {
        bail!("libtorch at {} is version {version}; tch 0.24.0 needs 2.11.0", torch_dir.display());
    }

    // Link: rpath to torch's lib and to the pip CUDA libraries; keep torch_cuda.
    let cu13_lib = cu13.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-search=native={}", cu13_lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", cu13_lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for l in ["torch_cuda", "c10_cuda", "torch", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-arg=-l{l}");
    }
    println!("cargo:rustc-link-arg=-l:libcudart.so.13");
    println!("cargo:libtorch_lib={}", lib.display());

    compile_shim(&manifest, &out, &torch_dir, &cu13)?;
    embed_kernels(&manifest, &out)?;
    #[cfg(feature = "grpc")]
    compile_protos(&manifest)?;

    println!("cargo:rustc-env=UMINFER_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-env=UMINFER_LIBTORCH_LIB={}", lib.display());
    println!("cargo:rustc-env=UMINFER_TORCH_CXX11_ABI=1");
    println!("cargo:rustc-env=UMINFER_GIT_COMMIT={}", git_commit(&manifest));
    Ok(())
}

/// The real (symlink-free) libtorch lib directory that torch-sys linked against.
fn libtorch_lib_dir() -> Result<PathBuf> {
    let raw = env::var("DEP_TCH_LIBTORCH_LIB")
        .context("torch-sys did not report its libtorch directory (DEP_TCH_LIBTORCH_LIB)")?;
    Path::new(&raw)
        .canonicalize()
        .with_context(|| format!("libtorch lib directory {raw} does not exist"))
}

/// `__version__` from the wheel's `torch/version.py` (the wheel has no `build-version`).
fn torch_version(torch_dir: &Path) -> Result<String> {
    let path = torch_dir.join("version.py");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    torch_version::parse_version_py(&text).with_context(|| format!("no __version__ in {}", path.display()))
}

fn git_commit(manifest: &Path) -> String {
    let git = manifest.join(".git");
    if git.is_dir() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Ok(head) = fs::read_to_string(git.join("HEAD")) {
            if let Some(r) = head.trim().strip_prefix("ref: ") {
                println!("cargo:rerun-if-changed=.git/{r}");
            }
        }
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(manifest)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Compile `src/shim/*.cpp` against libtorch and the pip CUDA headers. The
/// archive is reused when no source is newer (the build script reruns on every
/// commit for the git hash; recompiling torch headers takes a minute).
fn compile_shim(manifest: &Path, out: &Path, torch_dir: &Path, cu13: &Path) -> Result<()> {
    let dir = manifest.join("src/shim");
    let mut sources = Vec::new();
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
        if ext != "cpp" && ext != "h" {
            continue; // the Rust side of the shim lives here too
        }
        println!("cargo:rerun-if-changed={}", p.display());
        newest = newest.max(fs::metadata(&p)?.modified()?);
        if ext == "cpp" {
            sources.push(p);
        }
    }
    sources.sort();
    let archive = out.join("libuminfer_shim.a");
    let stamp = out.join("uminfer_shim.inputs");
    let inputs = format!("{}|{}", torch_dir.display(), cu13.display());
    let fresh = fs::metadata(&archive).and_then(|m| m.modified()).is_ok_and(|t| t >= newest)
        && fs::read_to_string(&stamp).is_ok_and(|s| s == inputs);
    if fresh {
        println!("cargo:rustc-link-search=native={}", out.display());
        println!("cargo:rustc-link-lib=static=uminfer_shim");
        return Ok(());
    }
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        .include(&dir)
        .include(torch_dir.join("include"))
        .include(torch_dir.join("include/torch/csrc/api/include"))
        .include(cu13.join("include"))
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .files(&sources)
        .try_compile("uminfer_shim")
        .context("compiling the C++ shim src/shim/*.cpp")?;
    fs::write(&stamp, inputs)?;
    Ok(())
}

/// Every `kernels/*.cu` becomes an entry of `KERNELS` (a `KernelSource`),
/// so that adding a kernel file is enough for NVRTC tests and the doctor to
/// see it. When `nvcc` is available (`$NVCC`, `$CUDA_HOME/bin/nvcc` or on
/// `PATH`) each kernel is also compiled to PTX here and embedded; otherwise
/// the runtime compiles it with NVRTC at first use.
fn embed_kernels(manifest: &Path, out: &Path) -> Result<()> {
    let dir = manifest.join("kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let mut kernels: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    kernels.sort();
    let nvcc = find_nvcc();
    let mut code = String::from("/// Every kernel in `kernels/`, sorted by file name.\npub const KERNELS: &[KernelSource] = &[\n");
    for k in &kernels {
        println!("cargo:rerun-if-changed={}", k.display());
        let stem = k.file_stem().and_then(|s| s.to_str()).context("kernel file name is not UTF-8")?;
        let ptx = match &nvcc {
            Some(nvcc) => {
                let ptx_path = out.join(format!("{stem}.ptx"));
                let status = std::process::Command::new(nvcc)
                    .args(["--ptx", "-arch=compute_75", "-o"])
                    .arg(&ptx_path)
                    .arg(k)
                    .status()
                    .with_context(|| format!("running {}", nvcc.display()))?;
                if !status.success() {
                    bail!("nvcc failed on {}", k.display());
                }
                format!("Some(include_str!({:?}))", ptx_path.display().to_string())
            }
            None => "None".to_string(),
        };
        code.push_str(&format!(
            "    KernelSource {{ name: {stem:?}, source: include_str!({:?}), prebuilt_ptx: {ptx} }},\n",
            k.display().to_string()
        ));
    }
    code.push_str("];\n");
    fs::write(out.join("kernel_sources.rs"), code)?;
    Ok(())
}

/// Compiles Triton's `proto/grpc_service.proto` (it imports `model_config.proto`)
/// into the tonic server of `src/oip/` and the client `uminfer bench` uses. `protox` parses the files in Rust, so
/// no system `protoc` is needed; `OUT_DIR/inference.rs` is the result.
#[cfg(feature = "grpc")]
fn compile_protos(manifest: &Path) -> Result<()> {
    let dir = manifest.join("proto");
    for f in ["grpc_service.proto", "model_config.proto"] {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    let fds = protox::compile(["grpc_service.proto"], [&dir]).context("parsing proto/grpc_service.proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .compile_fds(fds)
        .context("generating the gRPC service code from proto/grpc_service.proto")
}

fn find_nvcc() -> Option<PathBuf> {
    if let Ok(p) = env::var("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Ok(home) = env::var("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.exists() {
            return Some(p);
        }
    }
    env::var_os("PATH")
        .and_then(|paths| env::split_paths(&paths).map(|d| d.join("nvcc")).find(|p| p.is_file()))
}
