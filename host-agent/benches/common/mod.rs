//! What the host agent's benches share.

/// Whether this run measures (`cargo bench`: `--bench` without `--test`,
/// criterion's rule). Under `cargo test --benches` the benches only
/// smoke-test their paths, on smaller inputs and fewer rounds.
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// `full` when measuring, `smoke` otherwise.
pub fn scaled<T>(full: T, smoke: T) -> T {
    if measuring() {
        full
    } else {
        smoke
    }
}
