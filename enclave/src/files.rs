//! Files the enclave trusts only after checking them: model weights and
//! tokenizers named in the configuration with their SHA-256.
//!
//! The configuration is part of the measured image (its digest is in the
//! claims, and each model's digest is in the claims by name), so a file that
//! does not hash to its configured digest is not the file the client was
//! promised: the enclave refuses to boot rather than serve it. Files are
//! read once, hashed, and parsed from the same bytes, so nothing can swap
//! them between the check and the load.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::Sha256Hex;

/// Why a model file or tokenizer cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// "model file", "tokenizer", ...
        what: &'static str,
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not the one the configuration (and so the claims) names.
    #[error("{what} {path} has SHA-256 {found}, but the configuration (attested in the claims) says {expected}: refusing to load it")]
    Digest {
        /// "model file", "tokenizer", ...
        what: &'static str,
        /// The path.
        path: String,
        /// What the file hashes to.
        found: String,
        /// What the configuration says.
        expected: String,
    },
    /// The file has the right digest but cannot be parsed or loaded.
    #[error("cannot load {what} {path}: {message}")]
    Invalid {
        /// "model file", "tokenizer", ...
        what: &'static str,
        /// The path.
        path: String,
        /// The loader's message.
        message: String,
    },
    /// The device asked for is not there.
    #[error("{0}")]
    Device(String),
}

/// Read `path` whole and check it hashes to `expected`.
pub fn read_checked(
    what: &'static str,
    path: &str,
    expected: &Sha256Hex,
) -> Result<Vec<u8>, LoadError> {
    let bytes = std::fs::read(Path::new(path)).map_err(|source| LoadError::Read {
        what,
        path: path.into(),
        source,
    })?;
    check(what, path, Sha256::digest(&bytes).into(), expected)?;
    Ok(bytes)
}

/// Hash `path` in blocks (for weights too large to hold) and check it.
pub fn hash_checked(what: &'static str, path: &str, expected: &Sha256Hex) -> Result<(), LoadError> {
    let read_err = |source| LoadError::Read {
        what,
        path: path.into(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(read_err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    check(what, path, h.finalize().into(), expected)
}

fn check(
    what: &'static str,
    path: &str,
    found: [u8; 32],
    expected: &Sha256Hex,
) -> Result<(), LoadError> {
    if found == expected.0 {
        Ok(())
    } else {
        Err(LoadError::Digest {
            what,
            path: path.into(),
            found: hex::encode(found),
            expected: expected.to_string(),
        })
    }
}

/// A Hugging Face `tokenizer.json`, checked against its digest, with
/// padding and truncation off (the enclave pads batches itself and refuses
/// over-long inputs rather than cutting them silently).
pub struct CheckedTokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for CheckedTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedTokenizer").finish_non_exhaustive()
    }
}

impl CheckedTokenizer {
    /// Read, check and parse.
    pub fn load(path: &str, expected: &Sha256Hex) -> Result<CheckedTokenizer, LoadError> {
        let bytes = read_checked("tokenizer", path, expected)?;
        let mut inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| LoadError::Invalid {
                what: "tokenizer",
                path: path.into(),
                message: e.to_string(),
            })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| LoadError::Invalid {
                what: "tokenizer",
                path: path.into(),
                message: e.to_string(),
            })?;
        Ok(CheckedTokenizer { inner })
    }

    /// Token ids of `text` as the model sees it (with the model's special
    /// tokens, such as BERT's `[CLS]` and `[SEP]`).
    pub fn model_ids(&self, text: &str) -> Result<Vec<u32>, String> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|_| "the tokenizer could not encode the input".to_owned())
    }

    /// Token ids of `text` as written, special-token markup (such as
    /// ChatML's `<|im_start|>`) included, no tokens added.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>, String> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|_| "the tokenizer could not encode the input".to_owned())
    }

    /// The id of a token of the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.inner
            .decode(ids, true)
            .map_err(|_| "the tokenizer could not decode the output".to_owned())
    }

    /// Tokens in `text` alone (no special tokens): what usage counts.
    pub fn count(&self, text: &str) -> Result<u64, String> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().len() as u64)
            .map_err(|_| "the tokenizer could not encode the input".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_use() {
        let dir = std::env::temp_dir().join(format!("cocoon-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("weights.bin");
        std::fs::write(&p, b"weights").unwrap();
        let path = p.to_str().unwrap();
        let good = Sha256Hex(Sha256::digest(b"weights").into());
        assert_eq!(read_checked("model file", path, &good).unwrap(), b"weights");
        hash_checked("weights", path, &good).unwrap();
        let bad = Sha256Hex([7; 32]);
        let e = read_checked("model file", path, &bad).unwrap_err();
        assert!(matches!(e, LoadError::Digest { .. }), "{e}");
        assert!(e.to_string().contains("refusing to load"), "{e}");
        assert!(e.to_string().contains(&hex::encode(good.0)), "{e}");
        assert!(hash_checked("weights", path, &bad).is_err());
        let missing = dir.join("missing");
        let e = read_checked("tokenizer", missing.to_str().unwrap(), &good).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }), "{e}");
        // Right digest, not a tokenizer.
        let e = CheckedTokenizer::load(path, &good).unwrap_err();
        assert!(matches!(e, LoadError::Invalid { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
