//! An rpath to libtorch's directory for the enclave's own binaries, tests
//! and benches, so `cocoon-enclave` starts without `LD_LIBRARY_PATH`
//! (issue: `cocoon-enclave --help` failed outside `scripts/torch-env.sh`).
//!
//! The directory is the one torch-sys linked against (the project's venv,
//! `DEP_TCH_LIBTORCH_LIB`). The guest image's build sets
//! `COCOON_ENCLAVE_RPATH=none`: a builder's venv path in the measured
//! binary would make its bytes depend on who built it (the image carries
//! libtorch in /usr/lib/cocoon and its loader path names it).

fn main() {
    println!("cargo:rerun-if-env-changed=COCOON_ENCLAVE_RPATH");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var("COCOON_ENCLAVE_RPATH").as_deref() == Ok("none") {
        return;
    }
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
