//! Makes the `eqco` binary find libtorch without any exported library path.
//!
//! torch-sys publishes the directory it linked against as `DEP_TCH_LIBTORCH_LIB`
//! (its `links = "tch"` metadata). We bake that directory into the binaries as an
//! rpath, and when the libtorch there has CUDA we force `libtorch_cuda.so` to be
//! linked even though no symbol of it is referenced directly: otherwise the
//! linker's `--as-needed` drops it and `tch::Cuda::is_available()` is false.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
