//! build.rs's search for the NCCL process group's headers
//! (`build_support/nccl.rs`), on folders laid out as the wheels and
//! toolkits lay them out: CUDA 13's wheels, CUDA 12's wheels, a toolkit at
//! `$CUDA_HOME`; and a layout that lacks headers, named. (The CUDA 13 layout
//! is also the one this project's venv builds against: scripts/setup.sh.)

#[path = "../build_support/nccl.rs"]
mod nccl;

use std::path::{Path, PathBuf};

/// Creates each of `files` (an empty file; `nv/target` a folder) under `root`.
fn lay_out(root: &Path, files: &[&str]) {
    for f in files {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if f.ends_with("nv/target") {
            std::fs::create_dir_all(&p).unwrap();
        } else {
            std::fs::write(&p, b"").unwrap();
        }
    }
}

/// The candidates under `site` and `home` only (not the system's folders,
/// which differ between machines).
fn ours(site: &Path, home: Option<&Path>) -> Vec<PathBuf> {
    nccl::candidates(site, home)
        .into_iter()
        .filter(|d| d.starts_with(site) || home.is_some_and(|h| d.starts_with(h)))
        .collect()
}

#[test]
fn cuda_13_wheels_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path();
    lay_out(
        site,
        &[
            "nvidia/nccl/include/nccl.h",
            "nvidia/cu13/include/cuda_runtime_api.h",
            "nvidia/cu13/include/crt/host_config.h",
            "nvidia/cu13/include/nv/target",
        ],
    );
    let dirs = nccl::find(&ours(site, None)).unwrap();
    assert_eq!(
        dirs,
        [
            site.join("nvidia/nccl/include"),
            site.join("nvidia/cu13/include")
        ]
    );
}

#[test]
fn cuda_12_wheels_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path();
    lay_out(
        site,
        &[
            "nvidia/nccl/include/nccl.h",
            "nvidia/cuda_runtime/include/cuda_runtime_api.h",
            "nvidia/cuda_nvcc/include/crt/host_config.h",
            "nvidia/cuda_cccl/include/nv/target",
        ],
    );
    let dirs = nccl::find(&ours(site, None)).unwrap();
    assert_eq!(
        dirs,
        [
            site.join("nvidia/nccl/include"),
            site.join("nvidia/cuda_runtime/include"),
            site.join("nvidia/cuda_nvcc/include"),
            site.join("nvidia/cuda_cccl/include"),
        ]
    );
}

#[test]
fn a_toolkit_at_cuda_home_is_found_and_missing_headers_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (site, home) = (tmp.path().join("site"), tmp.path().join("cuda"));
    std::fs::create_dir_all(&site).unwrap();
    lay_out(
        &home,
        &[
            "include/nccl.h",
            "include/cuda_runtime_api.h",
            "include/crt/host_config.h",
            "include/nv/target",
        ],
    );
    assert_eq!(
        nccl::find(&ours(&site, Some(&home))).unwrap(),
        [home.join("include")]
    );
    // CUDA 12's runtime wheel alone: the other three are named.
    let bare = tmp.path().join("bare");
    lay_out(&bare, &["nvidia/cuda_runtime/include/cuda_runtime_api.h"]);
    assert_eq!(
        nccl::find(&ours(&bare, None)).unwrap_err(),
        ["nccl.h", "crt/host_config.h", "nv/target"]
    );
}
