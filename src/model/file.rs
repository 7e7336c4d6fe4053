//! What a model file is, read without running it: its [`Format`] (from the
//! records of the zip archive both formats are) and, for an AOTInductor
//! package, what it was compiled for ([`PackageFacts`]); and whether a
//! target can run such a package ([`check_target`], pure: unit-tested over
//! synthetic packages and machines).

use super::signature::Hint;
use crate::shim::Format;
use std::collections::BTreeMap;

/// The format of an archive with these records, or what it is instead.
pub fn classify(records: &[String]) -> Result<Format, String> {
    let has = |name: &str| records.iter().any(|r| r == name);
    let under = |dir: &str| records.iter().any(|r| r.starts_with(dir));
    if has("constants.pkl") && under("code/") {
        return Ok(Format::TorchScript);
    }
    if under("data/aotinductor/") {
        return Ok(Format::Aoti);
    }
    if has("archive_format") && under("models/") {
        return Err("an ExportedProgram saved with torch.export.save, not compiled: compile it into a package with torch._inductor.aoti_compile_and_package(ep, package_path=...)".into());
    }
    if has("data.pkl") {
        return Err("a pickled object saved with torch.save (a state_dict or a whole nn.Module), not a model uminfer can run: save it with torch.jit.save(torch.jit.script(model), path), or export it with torch.export and compile it with AOTInductor".into());
    }
    Err("a zip archive that is neither a TorchScript file nor an AOTInductor package".into())
}

/// What an AOTInductor package was compiled for, from its metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackageFacts {
    /// `AOTI_DEVICE_KEY`: `cpu`, `cuda`, ...
    pub device: String,
    /// `AOTI_COMPUTE_CAPABILITY` of a CUDA package (`90` = 9.0).
    pub compute_capability: Option<String>,
    /// `AOTI_CPU_ISA` of a CPU package (`AVX512 AVX512_VNNI AMX_TILE`).
    pub cpu_isa: Vec<String>,
    /// `AOTI_PLATFORM`, `AOTI_MACHINE`.
    pub platform: Option<String>,
    pub machine: Option<String>,
    /// The signature the exporter recorded (`uminfer.signature`).
    pub hint: Option<Hint>,
    /// The exporting machine's CPU (`uminfer.cpu_model`): CPU packages are
    /// compiled with `-march=native` for it.
    pub cpu_model: Option<String>,
}

impl PackageFacts {
    /// Reads the facts from a package's metadata.
    pub fn from_metadata(m: &BTreeMap<String, String>) -> Result<Self, String> {
        let get = |k: &str| m.get(k).filter(|v| !v.is_empty()).cloned();
        let device = get("AOTI_DEVICE_KEY").ok_or("the package's metadata has no AOTI_DEVICE_KEY: not an AOTInductor package of torch 2.x")?;
        let hint = get("uminfer.signature").map(|h| Hint::parse(&h)).transpose()?;
        Ok(Self {
            device,
            compute_capability: get("AOTI_COMPUTE_CAPABILITY"),
            cpu_isa: get("AOTI_CPU_ISA").map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default(),
            platform: get("AOTI_PLATFORM"),
            machine: get("AOTI_MACHINE"),
            hint,
            cpu_model: get("uminfer.cpu_model"),
        })
    }

    /// Whether the package runs on the CPU (else on a GPU).
    pub fn is_cpu(&self) -> bool {
        self.device == "cpu"
    }
}

/// Where a package is asked to run.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// This machine's CPU, with these `/proc/cpuinfo` flags.
    Cpu { flags: &'a [String] },
    /// A GPU of this compute capability.
    Cuda { ordinal: usize, capability: (i32, i32) },
}

/// The `/proc/cpuinfo` flags each `AOTI_CPU_ISA` word compiles for
/// (Inductor's `cpu_vec_isa.py` arch flags).
fn isa_flags(isa: &str) -> &'static [&'static str] {
    match isa {
        "AVX2" => &["avx2", "fma", "f16c"],
        "AVX512" => &["avx512f", "avx512dq", "avx512vl", "avx512bw", "fma"],
        "AVX512_VNNI" => &["avx512_vnni"],
        "AMX_TILE" => &["amx_tile", "amx_bf16", "amx_int8"],
        _ => &[],
    }
}

/// `Ok` when the package can run on `target` with libtorch `torch_version`,
/// else why not and what to do.
pub fn check_target(p: &PackageFacts, target: Target<'_>, torch_version: &str) -> Result<(), String> {
    if let Some(v) = p.hint.as_ref().and_then(|h| h.torch_version.as_deref()) {
        let runtime = torch_version.split('+').next().unwrap_or(torch_version);
        if v != runtime {
            return Err(format!("exported with torch {v}; this runtime is libtorch {runtime}: export it again with torch {runtime}"));
        }
    }
    if p.platform.as_deref().is_some_and(|x| x != "linux") || p.machine.as_deref().is_some_and(|m| m != std::env::consts::ARCH) {
        return Err(format!(
            "compiled for {}/{}; this is linux/{}",
            p.platform.as_deref().unwrap_or("?"),
            p.machine.as_deref().unwrap_or("?"),
            std::env::consts::ARCH
        ));
    }
    match (target, p.device.as_str()) {
        (Target::Cpu { flags }, "cpu") => {
            let missing: Vec<&str> = p.cpu_isa.iter().flat_map(|i| isa_flags(i)).filter(|f| !flags.iter().any(|x| x == *f)).copied().collect();
            if !missing.is_empty() {
                return Err(format!(
                    "compiled for {} ({}); this CPU lacks {}: it would stop with an illegal instruction. Export it on this machine",
                    p.cpu_isa.join(" "),
                    p.cpu_model.as_deref().unwrap_or("the exporting machine's CPU"),
                    missing.join(", ")
                ));
            }
            Ok(())
        }
        (Target::Cpu { .. }, "cuda") => Err("compiled for CUDA: it runs in the GPU modes only; for mode cpu export it with the model and inputs on the CPU".into()),
        (Target::Cuda { .. }, "cpu") => Err("compiled for the CPU: it runs in mode cpu only; for the GPU modes export it on a GPU with the model and inputs on cuda".into()),
        (Target::Cuda { ordinal, capability }, "cuda") => match &p.compute_capability {
            Some(cc) if *cc != format!("{}{}", capability.0, capability.1) => Err(format!(
                "compiled for compute capability {} (sm_{cc}); GPU {ordinal} has {}.{}: export it again on a GPU like this one",
                cc_dotted(cc),
                capability.0,
                capability.1
            )),
            _ => Ok(()),
        },
        (_, other) => Err(format!("compiled for device type {other}, which uminfer does not run (it runs cpu and cuda packages)")),
    }
}

/// `90` → `9.0`, `100` → `10.0`.
fn cc_dotted(cc: &str) -> String {
    match cc.len() {
        0 | 1 => cc.to_string(),
        n => format!("{}.{}", &cc[..n - 1], &cc[n - 1..]),
    }
}

/// This machine's CPU flags (`/proc/cpuinfo`), read once.
pub fn cpu_flags() -> &'static [String] {
    static FLAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("flags").map(|v| v.trim_start_matches([' ', '\t', ':']).split_whitespace().map(str::to_string).collect())))
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn archives_are_told_apart_by_their_records() {
        assert_eq!(classify(&records(&["data.pkl", "constants.pkl", "code/__torch__.py", "version"])), Ok(Format::TorchScript));
        assert_eq!(classify(&records(&["archive_format", "data/aotinductor/model/x.wrapper.so"])), Ok(Format::Aoti));
        assert!(classify(&records(&["archive_format", "models/model.json"])).unwrap_err().contains("aoti_compile_and_package"));
        assert!(classify(&records(&["data.pkl", "data/0", "version"])).unwrap_err().contains("torch.save"));
        assert!(classify(&records(&["foo.txt"])).is_err());
    }

    fn package(device: &str) -> PackageFacts {
        PackageFacts {
            device: device.into(),
            compute_capability: (device == "cuda").then(|| "90".into()),
            cpu_isa: if device == "cpu" { vec!["AVX512".into(), "AVX512_VNNI".into(), "AMX_TILE".into()] } else { vec![] },
            platform: Some("linux".into()),
            machine: Some(std::env::consts::ARCH.into()),
            hint: None,
            cpu_model: Some("Intel Xeon Platinum 8480+".into()),
        }
    }

    fn flags(f: &str) -> Vec<String> {
        f.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn a_cpu_package_needs_every_instruction_set_it_was_compiled_for() {
        let amx = flags("fma avx2 f16c avx512f avx512dq avx512vl avx512bw avx512_vnni amx_tile amx_bf16 amx_int8");
        assert_eq!(check_target(&package("cpu"), Target::Cpu { flags: &amx }, "2.11.0"), Ok(()));
        let zen3 = flags("fma avx2 f16c");
        let e = check_target(&package("cpu"), Target::Cpu { flags: &zen3 }, "2.11.0").unwrap_err();
        assert!(e.contains("lacks avx512f, avx512dq") && e.contains("amx_tile") && e.contains("Xeon Platinum 8480+"), "{e}");
        assert!(e.contains("illegal instruction"), "{e}");
    }

    #[test]
    fn packages_run_only_on_the_device_type_and_gpu_they_were_compiled_for() {
        let h100 = Target::Cuda { ordinal: 0, capability: (9, 0) };
        assert_eq!(check_target(&package("cuda"), h100, "2.11.0+cu130"), Ok(()));
        let e = check_target(&package("cuda"), Target::Cuda { ordinal: 1, capability: (8, 9) }, "2.11.0").unwrap_err();
        assert!(e.contains("compute capability 9.0 (sm_90); GPU 1 has 8.9"), "{e}");
        assert!(check_target(&package("cuda"), Target::Cpu { flags: &[] }, "2.11.0").unwrap_err().contains("GPU modes only"));
        assert!(check_target(&package("cpu"), h100, "2.11.0").unwrap_err().contains("mode cpu only"));
        assert!(check_target(&package("xpu"), h100, "2.11.0").unwrap_err().contains("device type xpu"));
    }

    #[test]
    fn a_package_of_another_torch_version_or_platform_is_refused() {
        let mut p = package("cuda");
        p.hint = Some(Hint { inputs: vec![], torch_version: Some("2.10.0".into()) });
        let e = check_target(&p, Target::Cuda { ordinal: 0, capability: (9, 0) }, "2.11.0+cu130").unwrap_err();
        assert_eq!(e, "exported with torch 2.10.0; this runtime is libtorch 2.11.0: export it again with torch 2.11.0");
        let mut p = package("cuda");
        p.machine = Some("aarch64-not-this".into());
        assert!(check_target(&p, Target::Cuda { ordinal: 0, capability: (9, 0) }, "2.11.0").unwrap_err().contains("compiled for linux/aarch64-not-this"));
    }

    #[test]
    fn metadata_becomes_facts() {
        let m: BTreeMap<String, String> = [("AOTI_DEVICE_KEY", "cpu"), ("AOTI_CPU_ISA", "AVX2"), ("AOTI_COMPUTE_CAPABILITY", ""), ("AOTI_PLATFORM", "linux")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let f = PackageFacts::from_metadata(&m).unwrap();
        assert!(f.is_cpu() && f.compute_capability.is_none() && f.cpu_isa == ["AVX2"] && f.hint.is_none());
        assert!(PackageFacts::from_metadata(&BTreeMap::new()).is_err());
    }
}
