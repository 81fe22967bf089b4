//! The configfs-tsm provider: attestation reports through Linux's
//! `/sys/kernel/config/tsm/report` (Linux 6.7 and later; SEV-SNP through
//! the sev-guest driver, TDX through tdx-guest and the quoting enclave).
//!
//! Interface: Linux `Documentation/ABI/testing/configfs-tsm-report`
//! (`configfs-tsm` before 6.12). Each report request is a directory the
//! caller creates under the root; the kernel fills it with attributes:
//!
//! * `inblob` (write): up to 64 bytes of report data;
//! * `privlevel` (write, SNP only): the VMPL to report at (`privlevel_floor`
//!   is the lowest allowed);
//! * `provider` (read): `sev_guest` or `tdx_guest`;
//! * `outblob` (read): the SNP attestation report, or the TDX quote; reading
//!   it makes the report for the current inputs;
//! * `auxblob` (read, SNP): the host's certificate table
//!   (`cocoon_attestation::snp_certs`);
//! * `generation` (read): how many times an input was written. A reader
//!   that saw it move between its own writes and its reads knows another
//!   writer raced it and the report may be for someone else's input.
//!
//! One call of [`ConfigfsTsmProvider::evidence`]: `mkdir` a fresh entry with
//! a random name, read `generation` (g0) and `provider`, write `privlevel`
//! (only when configured), write the 64 bytes to `inblob`, read `outblob`,
//! read `generation` and require exactly g0 + the number of writes, read
//! `auxblob` (SNP) and require `generation` unchanged again, then check the
//! report data inside the answer and `rmdir` the entry (always, also on
//! error; a failed `rmdir` is logged, since the evidence is still good).
//!
//! The kernel creates an entry's attributes inside `mkdir`, so in a guest
//! they are there at once. The provider still waits, boundedly
//! ([`ATTRIBUTE_WAIT`]), for them to appear: that costs nothing on a real
//! kernel and lets a test double that populates entries from another thread
//! stand in for configfs (see `enclave/tests/configfs_tsm.rs`).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cocoon_attestation::bundle::PlatformEvidence;
use rand_core::RngCore;

use super::platform::{snp_evidence, tdx_evidence, TdxCollateralSource};
use super::{AttestError, AttestationProvider};

/// Where the kernel mounts the report interface.
pub const DEFAULT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// How long to wait for an entry's attributes after `mkdir`.
pub const ATTRIBUTE_WAIT: Duration = Duration::from_secs(2);
/// Most bytes read from `outblob` or `auxblob`.
pub const MAX_BLOB: u64 = 1 << 20;
/// The attributes every report entry has.
const REQUIRED: [&str; 4] = ["provider", "inblob", "outblob", "generation"];

/// Which guest driver serves the reports (`provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tsm {
    SevGuest,
    TdxGuest,
}

/// Attestation reports through configfs-tsm.
#[derive(Debug)]
pub struct ConfigfsTsmProvider {
    root: PathBuf,
    privlevel: Option<u8>,
    tdx_collateral: TdxCollateralSource,
    counter: AtomicU64,
}

impl ConfigfsTsmProvider {
    /// The provider's kind.
    pub const KIND: &'static str = "configfs-tsm";

    /// A provider over the report root at `root` (normally
    /// [`DEFAULT_ROOT`]), taking TDX collateral from `tdx_collateral`.
    /// Fails when `root` is not a directory.
    pub fn new(
        root: impl Into<PathBuf>,
        tdx_collateral: TdxCollateralSource,
    ) -> Result<ConfigfsTsmProvider, AttestError> {
        let root = root.into();
        if !root.is_dir() {
            return Err(AttestError::Platform {
                provider: Self::KIND,
                reason: format!(
                    "{} is not a directory: configfs-tsm needs Linux 6.7 or later with configfs mounted (`mount -t configfs none /sys/kernel/config`) and the sev-guest or tdx-guest driver loaded",
                    root.display()
                ),
            });
        }
        Ok(ConfigfsTsmProvider {
            root,
            privlevel: None,
            tdx_collateral,
            counter: AtomicU64::new(0),
        })
    }

    /// Ask SEV-SNP for reports at this VMPL (written to `privlevel`).
    /// Without it the kernel's default applies (VMPL 0 unless an SVSM
    /// raises the floor); the verifier checks the VMPL the report names.
    pub fn with_privlevel(mut self, vmpl: u8) -> ConfigfsTsmProvider {
        self.privlevel = Some(vmpl);
        self
    }

    /// The report root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn err(&self, reason: impl Into<String>) -> AttestError {
        AttestError::Platform {
            provider: Self::KIND,
            reason: reason.into(),
        }
    }

    fn io(&self, path: &Path, source: std::io::Error) -> AttestError {
        AttestError::Io {
            provider: Self::KIND,
            path: path.display().to_string(),
            source,
        }
    }

    /// Make a fresh entry: a name nobody else uses (pid, counter and 64
    /// random bits); `mkdir` fails rather than reuse one.
    fn create_entry(&self) -> Result<Entry<'_>, AttestError> {
        let mut rng = rand_core::OsRng;
        for _ in 0..4 {
            let name = format!(
                "cocoon-{}-{}-{:016x}",
                std::process::id(),
                self.counter.fetch_add(1, Ordering::Relaxed),
                rng.next_u64()
            );
            let path = self.root.join(name);
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Entry { path, owner: self }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io(&path, e)),
            }
        }
        Err(self.err(format!(
            "could not create a fresh report entry under {}",
            self.root.display()
        )))
    }

    fn request(
        &self,
        entry: &Entry<'_>,
        report_data: &[u8; 64],
    ) -> Result<PlatformEvidence, AttestError> {
        entry.wait_for_attributes()?;
        let g0 = entry.generation()?;
        let tsm = match entry.read_text("provider")?.trim() {
            "sev_guest" => Tsm::SevGuest,
            "tdx_guest" => Tsm::TdxGuest,
            other => {
                return Err(self.err(format!(
                    "unknown configfs-tsm provider {other:?} (this build knows sev_guest and tdx_guest)"
                )))
            }
        };
        let mut writes = 0u64;
        if let (Tsm::SevGuest, Some(level)) = (tsm, self.privlevel) {
            entry.write("privlevel", format!("{level}\n").as_bytes())?;
            writes += 1;
        }
        entry.write("inblob", report_data)?;
        writes += 1;
        let outblob = entry.read_blob("outblob")?;
        let expected = g0
            .checked_add(writes)
            .ok_or_else(|| self.err("generation overflow"))?;
        let g1 = entry.generation()?;
        if g1 != expected {
            return Err(self.err(format!(
                "generation went from {g0} to {g1} across our {writes} write(s) (expected {expected}): another writer used the report entry, so the report may be for someone else's input; refusing it"
            )));
        }
        match tsm {
            Tsm::SevGuest => {
                let auxblob = entry.read_blob("auxblob")?;
                let g2 = entry.generation()?;
                if g2 != g1 {
                    return Err(self.err(format!(
                        "generation changed from {g1} to {g2} while the certificates were read: another writer raced us; refusing the report"
                    )));
                }
                snp_evidence(Self::KIND, outblob, &auxblob, report_data)
            }
            Tsm::TdxGuest => tdx_evidence(Self::KIND, &outblob, report_data, &self.tdx_collateral),
        }
    }
}

impl AttestationProvider for ConfigfsTsmProvider {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestError> {
        let entry = self.create_entry()?;
        // `entry` removes itself when dropped, whatever happens here.
        self.request(&entry, report_data)
    }
}

/// One report entry; `rmdir`s itself on drop.
struct Entry<'a> {
    path: PathBuf,
    owner: &'a ConfigfsTsmProvider,
}

impl Entry<'_> {
    fn attr(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn wait_for_attributes(&self) -> Result<(), AttestError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            let missing: Vec<&str> = REQUIRED
                .into_iter()
                .filter(|a| !self.attr(a).exists())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= ATTRIBUTE_WAIT {
                return Err(self.owner.err(format!(
                    "{} has no {} attribute(s) after {ATTRIBUTE_WAIT:?}: {} is not a configfs-tsm report root",
                    self.path.display(),
                    missing.join(", "),
                    self.owner.root.display()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    fn read_limited(&self, name: &str, limit: u64) -> Result<Vec<u8>, AttestError> {
        let path = self.attr(name);
        let file = std::fs::File::open(&path).map_err(|e| self.owner.io(&path, e))?;
        let mut out = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| self.owner.io(&path, e))?;
        if out.len() as u64 > limit {
            return Err(self
                .owner
                .err(format!("{} is larger than {limit} bytes", path.display())));
        }
        Ok(out)
    }

    fn read_blob(&self, name: &str) -> Result<Vec<u8>, AttestError> {
        self.read_limited(name, MAX_BLOB)
    }

    fn read_text(&self, name: &str) -> Result<String, AttestError> {
        let bytes = self.read_limited(name, 4096)?;
        String::from_utf8(bytes).map_err(|_| {
            self.owner
                .err(format!("{} is not text", self.attr(name).display()))
        })
    }

    fn generation(&self) -> Result<u64, AttestError> {
        let text = self.read_text("generation")?;
        text.trim().parse().map_err(|_| {
            self.owner.err(format!(
                "{} holds {:?}, not a number",
                self.attr("generation").display(),
                text.trim()
            ))
        })
    }

    /// One write(2) of `bytes`: configfs attributes take their value in one
    /// write and act on it when the file is closed.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), AttestError> {
        let path = self.attr(name);
        let mut f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| self.owner.io(&path, e))?;
        let n = f.write(bytes).map_err(|e| self.owner.io(&path, e))?;
        if n != bytes.len() {
            return Err(self.owner.err(format!(
                "{} took {n} of {} bytes",
                path.display(),
                bytes.len()
            )));
        }
        Ok(())
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!(
                entry = %self.path.display(),
                error = %e,
                "could not remove the configfs-tsm report entry"
            );
        }
    }
}
