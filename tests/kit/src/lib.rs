//! What Cocoon's tests write again and again, written once: a temp dir
//! removed on drop, the policy that opts into the simulated TEE, a
//! simulated evidence bundle signed by a fresh key, and the workspace's
//! binaries started and waited for ([`procs`]).
//!
//! A dev-dependency only: no product crate may depend on it (the simulated
//! TEE is not confidential, and nothing here is careful about errors: it
//! panics with a message, as a test should).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub mod chain;
pub mod procs;
pub mod simulated;

/// A fresh, empty directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Make one; `tag` names it for people reading /tmp.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "cocoon-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }

    /// Write `contents` to `name` inside it; the file's path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }

    /// Keep the directory after all (a server still uses it, or a failed
    /// test leaves it to look at): its path, no longer removed on drop.
    pub fn keep(mut self) -> PathBuf {
        std::mem::take(&mut self.0)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return; // kept
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compare `got` with the recording at `path` (a wire transcript, say),
/// failing with a diff-friendly message; with `COCOON_RECORD_WIRE` set,
/// write `got` there first (to record it anew, from the code the recording
/// must stay true to).
pub fn matches_recording(path: &Path, got: &str, what: &str) {
    if std::env::var_os("COCOON_RECORD_WIRE").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        std::fs::write(path, got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let want = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (record it with COCOON_RECORD_WIRE=1)",
            path.display()
        )
    });
    assert_eq!(got, want, "{what} changed");
}
