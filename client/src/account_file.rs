//! The account key file: the client account's 32-byte P-256 scalar as one
//! line of hex, readable by its owner only.
//!
//! Owns reading, creating and permission-checking that file, and the two
//! helpers every secret file of the client uses (the endpoint's API key
//! file too): the owner-only permission check and the owner-only create.
//! The key itself (signing, the account id) is `cocoon_protocol::account`'s.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use cocoon_protocol::account::AccountKey;
use cocoon_protocol::rand_core::OsRng;

/// Why an account key file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("account key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The content is not 64 hex digits.
    #[error(
        "account key file {path}: expected one line of 64 hex digits (a 32-byte P-256 scalar)"
    )]
    NotHex {
        /// The file.
        path: PathBuf,
    },
    /// 32 bytes, but not a valid P-256 scalar.
    #[error("account key file {path}: not a valid P-256 secret scalar")]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// Others may read or write it.
    #[error(
        "account key file {path} is accessible by others (mode {mode:o}); run: chmod 600 {path}"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The permission bits of `path` if group or others may access it
/// (`None`: only its owner may). Always `None` off Unix.
pub(crate) fn open_mode(path: &Path) -> std::io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Ok(Some(mode));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(None)
}

/// Create `path` holding `contents`, readable by its owner only (mode
/// 0600; its directory 0700 if it has to be made). Fails if the file
/// exists: a secret is never overwritten.
pub(crate) fn create_private(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Read an account key file. Refuses one that group or others may access.
pub fn load_account_key(path: &Path) -> Result<AccountKey, KeyFileError> {
    if let Some(mode) = open_mode(path).map_err(io(path))? {
        return Err(KeyFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let bytes = hex::decode(text.trim()).map_err(|_| KeyFileError::NotHex {
        path: path.to_path_buf(),
    })?;
    if bytes.len() != 32 {
        return Err(KeyFileError::NotHex {
            path: path.to_path_buf(),
        });
    }
    AccountKey::from_scalar(&bytes).map_err(|_| KeyFileError::BadKey {
        path: path.to_path_buf(),
    })
}

/// Create a new account key file (mode 0600; its directory 0700 if it has
/// to be made). Fails if the file exists: a key is never overwritten.
pub fn create_account_key(path: &Path) -> Result<AccountKey, KeyFileError> {
    let key = AccountKey::generate(&mut OsRng);
    create_private(path, &format!("{}\n", hex::encode(key.to_scalar()))).map_err(io(path))?;
    Ok(key)
}

/// Load the key file at `path`, or create it if it does not exist. Returns
/// the key and whether it was created.
pub fn load_or_create_account_key(path: &Path) -> Result<(AccountKey, bool), KeyFileError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => load_account_key(path).map(|k| (k, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_account_key(path).map(|k| (k, true))
        }
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cocoon-client-keyfile-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn create_load_and_refuse() {
        let dir = scratch("a");
        let path = dir.join("sub/account.key");
        let (k, created) = load_or_create_account_key(&path).unwrap();
        assert!(created);
        let (k2, created) = load_or_create_account_key(&path).unwrap();
        assert!(!created);
        assert_eq!(k.id(), k2.id());
        assert!(matches!(
            create_account_key(&path),
            Err(KeyFileError::Io { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                load_account_key(&path),
                Err(KeyFileError::TooOpen { mode: 0o644, .. })
            ));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, "zz\n").unwrap();
        assert!(matches!(
            load_account_key(&path),
            Err(KeyFileError::NotHex { .. })
        ));
        std::fs::write(&path, format!("{}\n", "00".repeat(32))).unwrap();
        assert!(matches!(
            load_account_key(&path),
            Err(KeyFileError::BadKey { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
