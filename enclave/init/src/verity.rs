//! The dm-verity root disk: its parameters from the measured command line,
//! and the kernel table that maps it.
//!
//! The disk is what `images/build.sh` writes: a squashfs file system of
//! `data_blocks` 4096-byte blocks, then (at block `data_blocks`) the hash
//! tree `veritysetup format` writes with its superblock, so the tree's first
//! hash block is `data_blocks + 1`. The root hash and the salt come from the
//! kernel command line, which the launch measures (SEV-SNP: the SEV hashes
//! table; TDX: RTMR2), so a disk whose bytes differ from the build's cannot
//! be read: every block is checked against the tree on every read, and the
//! tree against the measured root. The table format is the kernel's
//! `Documentation/admin-guide/device-mapper/verity.rst` (version 1).

/// Block size of data and hash tree (the `veritysetup` default).
pub const BLOCK: u64 = 4096;
/// 512-byte sectors per block.
const SECTORS_PER_BLOCK: u64 = BLOCK / 512;
/// Most data blocks accepted (16 TiB).
const MAX_DATA_BLOCKS: u64 = 1 << 32;

/// What the command line says about the root disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// The block device (`/dev/vda`).
    pub disk: String,
    /// Root hash of the tree (SHA-256).
    pub root: [u8; 32],
    /// The salt `veritysetup format` was given.
    pub salt: Vec<u8>,
    /// Data blocks (the file system).
    pub data_blocks: u64,
}

/// Why the parameters cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    /// A required argument is missing.
    #[error("missing {0} on the kernel command line")]
    Missing(&'static str),
    /// An argument is malformed.
    #[error("{0}: {1}")]
    Bad(&'static str, String),
    /// An argument this PID 1 does not know.
    #[error("unknown argument {0:?} before `--`")]
    Unknown(String),
}

fn hex_bytes(what: &'static str, s: &str, len: Option<usize>) -> Result<Vec<u8>, ParamError> {
    if s.len() % 2 != 0 || s.len() > 512 {
        return Err(ParamError::Bad(
            what,
            "not an even-length hex string".into(),
        ));
    }
    let mut out = Vec::with_capacity(s.len() / 2);
    for pair in s.as_bytes().chunks(2) {
        let txt = std::str::from_utf8(pair).map_err(|_| ParamError::Bad(what, "not hex".into()))?;
        let b = u8::from_str_radix(txt, 16).map_err(|_| ParamError::Bad(what, "not hex".into()))?;
        out.push(b);
    }
    if let Some(n) = len {
        if out.len() != n {
            return Err(ParamError::Bad(
                what,
                format!("{} bytes, expected {n}", out.len()),
            ));
        }
    }
    Ok(out)
}

/// What PID 1 was asked to do: the root disk and the program to run from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitArgs {
    /// The verity root disk.
    pub verity: VerityParams,
    /// Program inside the disk to run (absolute path there).
    pub exec: String,
    /// Its arguments (everything after the program's path).
    pub args: Vec<String>,
}

/// Parses PID 1's arguments (the kernel passes what follows `--` on its
/// command line, up to a second `--`, which it drops with everything
/// after it): `--disk DEV --verity-root HEX --verity-salt HEX
/// --data-blocks N --exec PATH ARGS...`, where everything after PATH is
/// the program's. Every option is required; an unknown one is refused.
pub fn parse_args<I: IntoIterator<Item = String>>(argv: I) -> Result<InitArgs, ParamError> {
    let mut it = argv.into_iter();
    let (mut disk, mut root, mut salt, mut blocks, mut exec) = (None, None, None, None, None);
    let mut rest = Vec::new();
    while let Some(a) = it.next() {
        let mut value = |name: &'static str| it.next().ok_or(ParamError::Missing(name));
        match a.as_str() {
            "--disk" => disk = Some(value("--disk")?),
            "--verity-root" => root = Some(value("--verity-root")?),
            "--verity-salt" => salt = Some(value("--verity-salt")?),
            "--data-blocks" => blocks = Some(value("--data-blocks")?),
            "--exec" => {
                exec = Some(value("--exec")?);
                // Everything after the program is its own: the kernel
                // stops handing arguments to init at a second `--`, so
                // there is no separator.
                rest.extend(it.by_ref());
                break;
            }
            other => return Err(ParamError::Unknown(other.into())),
        }
    }
    let disk = disk.ok_or(ParamError::Missing("--disk"))?;
    if !disk.starts_with("/dev/") || disk.contains("..") {
        return Err(ParamError::Bad(
            "--disk",
            "must name a device under /dev".into(),
        ));
    }
    let root_bytes = hex_bytes(
        "--verity-root",
        &root.ok_or(ParamError::Missing("--verity-root"))?,
        Some(32),
    )?;
    let salt = hex_bytes(
        "--verity-salt",
        &salt.ok_or(ParamError::Missing("--verity-salt"))?,
        None,
    )?;
    let data_blocks: u64 = blocks
        .ok_or(ParamError::Missing("--data-blocks"))?
        .parse()
        .map_err(|_| ParamError::Bad("--data-blocks", "not a number".into()))?;
    if data_blocks == 0 || data_blocks > MAX_DATA_BLOCKS {
        return Err(ParamError::Bad("--data-blocks", "out of range".into()));
    }
    let exec = exec.ok_or(ParamError::Missing("--exec"))?;
    if !exec.starts_with('/') || exec.contains("..") {
        return Err(ParamError::Bad(
            "--exec",
            "must be an absolute path inside the disk".into(),
        ));
    }
    let mut root = [0u8; 32];
    root.copy_from_slice(&root_bytes);
    Ok(InitArgs {
        verity: VerityParams {
            disk,
            root,
            salt,
            data_blocks,
        },
        exec,
        args: rest,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl VerityParams {
    /// The root hash as hex.
    pub fn root_hex(&self) -> String {
        hex(&self.root)
    }

    /// Length of the mapped device in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * SECTORS_PER_BLOCK
    }

    /// Bytes the disk must at least have: the data, the superblock and a
    /// hash tree (its exact size is the kernel's business: a short disk
    /// fails verification on read).
    pub fn min_disk_bytes(&self) -> u64 {
        (self.data_blocks + 2) * BLOCK
    }

    /// The verity table line for data and hash tree on device `dev`
    /// (`major:minor`): version 1, 4096-byte blocks, SHA-256, the hash tree
    /// after the data and its superblock. No optional arguments: a block
    /// that does not match its hash is an I/O error for that read
    /// (the kernel logs "data block N is corrupted"); nothing is retried
    /// from elsewhere.
    pub fn table(&self, dev: &str) -> String {
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex(&self.salt)
        };
        format!(
            "1 {dev} {dev} {BLOCK} {BLOCK} {} {} sha256 {} {salt}",
            self.data_blocks,
            self.data_blocks + 1,
            self.root_hex()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    const ROOT: &str = "4f0c1e4ba1e5c03e33b1b5bb0a6a52b0e8c6a02b8b6f2a3bd9f0c9d1e2f3a4b5";

    #[test]
    fn parses_and_builds_the_table() {
        let a = parse_args(argv(&format!(
            "--disk /dev/vda --verity-root {ROOT} --verity-salt 00ff --data-blocks 10 --exec /usr/bin/cocoon-enclave --tee simulated --x"
        )))
        .unwrap();
        assert_eq!(a.args, argv("--tee simulated --x"));
        assert_eq!(a.verity.sectors(), 80);
        assert_eq!(
            a.verity.table("254:0"),
            format!("1 254:0 254:0 4096 4096 10 11 sha256 {ROOT} 00ff")
        );
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let base = format!(
            "--disk /dev/vda --verity-root {ROOT} --verity-salt 00 --data-blocks 1 --exec /e"
        );
        assert!(parse_args(argv(&base)).is_ok());
        assert!(matches!(
            parse_args(argv(&format!("--shell {base}"))),
            Err(ParamError::Unknown(_))
        ));
        assert!(parse_args(argv(&base.replace(ROOT, &ROOT[2..]))).is_err());
        assert!(parse_args(argv(&base.replace(ROOT, &ROOT.replace('4', "g")))).is_err());
        assert!(parse_args(argv(&base.replace("/dev/vda", "vda"))).is_err());
        assert!(parse_args(argv(&base.replace("--data-blocks 1", "--data-blocks 0"))).is_err());
        assert!(parse_args(argv(&base.replace("/e", "e"))).is_err());
        assert_eq!(
            parse_args(argv(&base.replace("--verity-salt 00", ""))),
            Err(ParamError::Missing("--verity-salt"))
        );
        assert_eq!(
            parse_args(argv("--disk")),
            Err(ParamError::Missing("--disk"))
        );
    }
}
