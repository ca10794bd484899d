//! Where the NCCL process group's headers are, for `build.rs` (and its
//! test, `tests/build_nccl.rs`): `nccl.h`, and CUDA's runtime, `crt/` and
//! `nv/target` headers, from the wheels beside torch (CUDA 13's
//! `nvidia/cu13`, CUDA 12's `nvidia/cuda_runtime`, `cuda_nvcc`,
//! `cuda_cccl`), or from a CUDA toolkit (`$CUDA_HOME`, `/usr/local/cuda`)
//! and `/usr/include` (Debian's `libnccl-dev`).

use std::path::{Path, PathBuf};

/// The headers the NCCL translation unit includes, relative to an include
/// folder.
pub const NEEDED: [&str; 4] = [
    "nccl.h",
    "cuda_runtime_api.h",
    "crt/host_config.h",
    "nv/target",
];

/// The include folders to search, in order: the wheels in `site` (torch's
/// `site-packages`), then `cuda_home`'s, then the system's.
pub fn candidates(site: &Path, cuda_home: Option<&Path>) -> Vec<PathBuf> {
    let nvidia = site.join("nvidia");
    let mut dirs: Vec<PathBuf> = [
        "nccl/include",
        "cu13/include",
        "cu13/include/cccl",
        "cuda_runtime/include",
        "cuda_nvcc/include",
        "cuda_cccl/include",
        "cuda_crt/include",
    ]
    .iter()
    .map(|d| nvidia.join(d))
    .collect();
    for home in cuda_home.into_iter().chain([Path::new("/usr/local/cuda")]) {
        dirs.push(home.join("include"));
        dirs.push(home.join("targets/x86_64-linux/include"));
    }
    dirs.push(PathBuf::from("/usr/include"));
    dirs
}

/// For each needed header, the first candidate folder that has it; the
/// folders (without repeats), or the headers that none has.
pub fn find(candidates: &[PathBuf]) -> Result<Vec<PathBuf>, Vec<&'static str>> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut missing = Vec::new();
    for header in NEEDED {
        match candidates.iter().find(|d| d.join(header).exists()) {
            Some(d) if !found.contains(d) => found.push(d.clone()),
            Some(_) => {}
            None => missing.push(header),
        }
    }
    match missing.is_empty() {
        true => Ok(found),
        false => Err(missing),
    }
}
