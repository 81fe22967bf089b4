//! The API key of the local OpenAI-compatible endpoint (`cocoon-client
//! serve`): one line in a file readable by its owner only, made with a new
//! random key the first time, so the programs configured with it keep
//! working across restarts.
//!
//! Owns reading and creating that file. The key's form and its comparison
//! are `cocoon_protocol::local_auth`'s; where the file lives by default is
//! the CLI's.

use std::path::{Path, PathBuf};

use cocoon_protocol::local_auth::{BearerToken, TokenError};
use cocoon_protocol::rand_core::OsRng;

use crate::account_file::{create_private, open_mode};

/// What a generated API key starts with: a key that leaks says what it
/// opens.
pub const API_KEY_PREFIX: &str = "cocoon-local-";

/// Why an API key file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiKeyFileError {
    /// Reading or writing failed.
    #[error("API key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may access it.
    #[error("API key file {path} is accessible by others (mode {mode:o}); run: chmod 600 {path}")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a usable key.
    #[error("API key file {path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        reason: TokenError,
    },
}

/// Read the API key file at `path`, or create it with a new random key
/// (`cocoon-local-` and 64 hex digits; mode 0600, its directory 0700) if
/// it does not exist. Returns the key and whether it was created. Refuses
/// a file that group or others may access.
pub fn load_or_create_api_key(path: &Path) -> Result<(BearerToken, bool), ApiKeyFileError> {
    let io = |source| ApiKeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = BearerToken::generate(API_KEY_PREFIX, &mut OsRng);
            create_private(path, &format!("{}\n", key.reveal())).map_err(io)?;
            return Ok((key, true));
        }
        Err(e) => return Err(io(e)),
    }
    if let Some(mode) = open_mode(path).map_err(io)? {
        return Err(ApiKeyFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
    let key = BearerToken::parse(&text).map_err(|reason| ApiKeyFileError::BadKey {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok((key, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_and_refused_when_open() {
        let dir = std::env::temp_dir().join(format!("cocoon-client-apikey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/api.key");
        let (k, created) = load_or_create_api_key(&path).unwrap();
        assert!(created);
        assert!(k.reveal().starts_with(API_KEY_PREFIX));
        let (k2, created) = load_or_create_api_key(&path).unwrap();
        assert!(!created);
        assert_eq!(k.reveal(), k2.reveal());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            let e = load_or_create_api_key(&path).unwrap_err();
            assert!(
                matches!(e, ApiKeyFileError::TooOpen { mode: 0o640, .. }),
                "{e}"
            );
            assert!(e.to_string().contains("chmod 600"), "{e}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(
            load_or_create_api_key(&path),
            Err(ApiKeyFileError::BadKey { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
