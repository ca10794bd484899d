//! The extension finds libtorch inside the installed torch package, as
//! torch's own extensions do: an rpath relative to the extension
//! (`site-packages/eqco/_eqco*.so` → `site-packages/torch/lib`).
fn main() {
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../torch/lib");
}
