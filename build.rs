//! Makes the `eqco` binary find libtorch without any exported library path,
//! and compiles the C++ shim in `csrc/`.
//!
//! torch-sys publishes the directory it linked against as `DEP_TCH_LIBTORCH_LIB`
//! (its `links = "tch"` metadata). We bake that directory into the binaries as an
//! rpath, and when the libtorch there has CUDA we force `libtorch_cuda.so` to be
//! linked even though no symbol of it is referenced directly: otherwise the
//! linker's `--as-needed` drops it and `tch::Cuda::is_available()` is false.
//!
//! The shim's distributed part (`csrc/dist.cpp`) is compiled against c10d's
//! Gloo process group, whose headers the torch wheel does not ship: Debian's
//! `libgloo-dev` provides them (only the headers are used; the Gloo that
//! runs is the one inside libtorch_cpu). When torch has CUDA and the venv
//! holds the NCCL and CUDA headers (`nvidia-nccl`, `nvidia-cuda-runtime`,
//! `nvidia-cuda-crt`, `nvidia-cuda-cccl`), the NCCL process group is
//! compiled in too (`csrc/dist_nccl.cpp`). `csrc/dist_overlap.cpp` overlaps
//! the gradient all-reduce with backward (autograd hooks on either backend).
use std::path::{Path, PathBuf};

/// The shim's translation units that need only libtorch's CPU headers (and Gloo's).
const SOURCES: [&str; 5] = [
    "csrc/precision.cpp",
    "csrc/memory.cpp",
    "csrc/optim.cpp",
    "csrc/dist.cpp",
    "csrc/dist_overlap.cpp",
];

/// Where Debian's libgloo-dev puts Gloo's headers.
const GLOO_HEADER: &str = "/usr/include/gloo/config.h";

/// Set to 1 to build a CUDA libtorch's shim without the NCCL process group.
const OPT_OUT: &str = "EQCO_WITHOUT_NCCL";

#[path = "build_support/nccl.rs"]
mod nccl;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=build_support");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = Path::new(&lib_dir);
    // libtorch's headers sit beside its lib folder (torch/include in a wheel).
    let include = lib
        .parent()
        .map(|p| p.join("include"))
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!("libtorch's headers are not beside {lib_dir} (expected ../include)")
        });
    if !Path::new(GLOO_HEADER).is_file() {
        panic!(
            "Gloo's headers are missing ({GLOO_HEADER}): install the Debian package libgloo-dev \
             (scripts/setup.sh does)"
        );
    }
    let cuda = lib.join("libtorch_cuda.so").exists();
    let nccl = cuda.then(|| nccl_includes(lib)).flatten();
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .define("_GLIBCXX_USE_CXX11_ABI", "1")
            .define("USE_C10D_GLOO", None)
            .warnings(false);
        b
    };
    let mut shim = base();
    shim.files(SOURCES);
    if let Some(dirs) = &nccl {
        shim.define("EQCO_WITH_NCCL", None);
        let mut b = base();
        b.file("csrc/dist_nccl.cpp")
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None);
        for d in dirs {
            b.include(d);
        }
        b.compile("eqco_nccl");
    }
    shim.compile("eqco_shim");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-lc10_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    if nccl.is_none() {
        println!(
            "cargo:warning=the NCCL process group is not compiled in (torch without CUDA, or {OPT_OUT}=1); dist_backend = \"nccl\" will be an error"
        );
    }
}

/// The include folders the NCCL translation unit needs (see
/// `build_support/nccl.rs`), for the libtorch in `lib`; with CUDA and no
/// NCCL headers the build stops, naming what is missing, unless
/// `EQCO_WITHOUT_NCCL=1` asks for a build without the NCCL process group.
fn nccl_includes(lib: &Path) -> Option<Vec<PathBuf>> {
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed={OPT_OUT}");
    let site = lib.parent()?.parent()?;
    let home = std::env::var_os("CUDA_HOME").map(PathBuf::from);
    match nccl::find(&nccl::candidates(site, home.as_deref())) {
        Ok(dirs) => Some(dirs),
        Err(_) if std::env::var(OPT_OUT).as_deref() == Ok("1") => None,
        Err(missing) => panic!(
            "torch has CUDA but the NCCL process group's headers are missing ({}): install the \
             wheels of torch's CUDA (CUDA 13: nvidia-nccl-cu13, nvidia-cuda-crt, nvidia-cuda-cccl, as \
             scripts/setup.sh does; CUDA 12: nvidia-nccl-cu12, nvidia-cuda-runtime-cu12, \
             nvidia-cuda-nvcc-cu12, nvidia-cuda-cccl-cu12), or set CUDA_HOME to a toolkit with NCCL; \
             or build without NCCL with {OPT_OUT}=1",
            missing.join(", ")
        ),
    }
}
