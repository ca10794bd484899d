//! Makes the `eqco` binary find libtorch without any exported library path,
//! and compiles the small C++ shim in `csrc/`.
//!
//! torch-sys publishes the directory it linked against as `DEP_TCH_LIBTORCH_LIB`
//! (its `links = "tch"` metadata). We bake that directory into the binaries as an
//! rpath, and when the libtorch there has CUDA we force `libtorch_cuda.so` to be
//! linked even though no symbol of it is referenced directly: otherwise the
//! linker's `--as-needed` drops it and `tch::Cuda::is_available()` is false.
use std::path::Path;

/// The shim's translation units.
const SOURCES: [&str; 3] = ["csrc/precision.cpp", "csrc/memory.cpp", "csrc/optim.cpp"];

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=csrc");
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
    cc::Build::new()
        .cpp(true)
        .files(SOURCES)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("eqco_shim");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
