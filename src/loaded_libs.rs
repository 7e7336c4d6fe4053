//! Which shared libraries this process has loaded, and from where: read from
//! `/proc/self/maps` (the kernel resolves symlinks, so these are real paths).

use std::collections::BTreeSet;
use std::path::PathBuf;

/// Real paths of every mapped shared object, deduplicated and sorted.
pub fn all() -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return Vec::new() };
    parse_maps(&maps)
}

/// Paths of mapped shared objects in a `/proc/<pid>/maps` text.
pub fn parse_maps(maps: &str) -> Vec<PathBuf> {
    let set: BTreeSet<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .map(PathBuf::from)
        .collect();
    set.into_iter().collect()
}

/// The first loaded library whose file name starts with `prefix` (e.g. `libnvrtc.so`).
pub fn find(prefix: &str) -> Option<PathBuf> {
    all().into_iter().find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
}

/// Loaded libraries whose file names start with any of `prefixes`.
pub fn matching(prefixes: &[&str]) -> Vec<PathBuf> {
    all()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            prefixes.iter().any(|pre| name.starts_with(pre))
        })
        .collect()
}

/// The dynamic loader's last error message (`dlerror`).
pub fn dlerror() -> String {
    // SAFETY: dlerror has no preconditions; it returns NULL or a NUL-terminated
    // thread-local string valid until the next dl* call on this thread, which
    // we copy immediately.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        return "unknown dlopen error".into();
    }
    // SAFETY: non-null and NUL-terminated (see above).
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_of_shared_objects_only() {
        let maps = "7f00-7f01 r-xp 00000000 08:01 123 /opt/torch/lib/libtorch_cpu.so\n\
                    7f01-7f02 r--p 00000000 08:01 123 /opt/torch/lib/libtorch_cpu.so\n\
                    7f02-7f03 rw-p 00000000 00:00 0 [heap]\n\
                    7f03-7f04 r-xp 00000000 08:01 9 /usr/bin/uminfer\n\
                    7f04-7f05 r-xp 00000000 08:01 7 /usr/lib/x86_64-linux-gnu/libcuda.so.580.82.07\n";
        assert_eq!(
            parse_maps(maps),
            vec![PathBuf::from("/opt/torch/lib/libtorch_cpu.so"), PathBuf::from("/usr/lib/x86_64-linux-gnu/libcuda.so.580.82.07")]
        );
    }

    #[test]
    fn this_process_has_libtorch_loaded() {
        // Forces libtorch to be used, then finds it in our own maps.
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        assert!(find("libtorch_cpu.so").is_some(), "libtorch_cpu.so not in /proc/self/maps: {:?}", all());
    }
}
