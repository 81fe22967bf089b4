//! The provider's settings, taken once at boot.
//!
//! A release with `prices_from = "provider"` does not start serving until
//! it has the provider's settings (`cocoon_protocol::settings`). In a VM
//! they come from the host over vsock (`--settings-listen vsock:5001`, the
//! port on the measured command line); a process enclave can read them
//! from a file (`--provider-settings FILE`). Either way they go through
//! [`EnclaveConfig::apply_provider_settings`], which refuses anything
//! outside the release's bounds.
//!
//! The exchange on the settings port, one connection, one message each way:
//!
//! * host → enclave: a 4-byte big-endian length, then that many bytes of
//!   the settings' canonical CBOR (at most
//!   [`MAX_SETTINGS`]);
//! * enclave → host: one line, `ok <sha256 of the CBOR, hex>\n` or
//!   `refused <reason>\n`.
//!
//! A refusal ends the boot (the VM powers off); a connection that sends
//! something unreadable, or nothing within [`READ_TIMEOUT`], is answered
//! (when possible) and dropped, and the enclave waits for the next one: a
//! bad connection cannot decide the settings, and the host's own are
//! whatever it sends first that reads as settings.

use std::time::Duration;

use cocoon_protocol::settings::{ProviderSettings, MAX_SETTINGS};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::config::{ConfigError, EnclaveConfig};
use crate::transport::{ListenAddr, Listener};

/// How long one connection may take to send its settings.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the boot cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SettingsBootError {
    /// The listener could not be opened.
    #[error("cannot listen for the provider's settings on {addr}: {reason}")]
    Listen {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The settings file could not be read.
    #[error("cannot read the provider settings {path}: {reason}")]
    File {
        /// Which file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The settings were refused.
    #[error("provider settings refused: {0}")]
    Refused(String),
}

/// Applies the settings in the TOML file `path` to `config`.
pub fn apply_file(
    config: &mut EnclaveConfig,
    path: &std::path::Path,
) -> Result<(), SettingsBootError> {
    let text = std::fs::read_to_string(path).map_err(|e| SettingsBootError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let s = ProviderSettings::from_toml(&text)
        .map_err(|e| SettingsBootError::Refused(e.to_string()))?;
    apply(config, &s)
}

fn apply(config: &mut EnclaveConfig, s: &ProviderSettings) -> Result<(), SettingsBootError> {
    config
        .apply_provider_settings(s)
        .map_err(|e: ConfigError| SettingsBootError::Refused(e.to_string()))?;
    info!(
        models = s.prices.len(),
        payment_contract = s.payment_contract.as_deref().unwrap_or("(none)"),
        "provider settings applied"
    );
    Ok(())
}

/// Waits on `addr` for the host's settings and applies them to `config`.
pub async fn receive(
    config: &mut EnclaveConfig,
    addr: &ListenAddr,
) -> Result<(), SettingsBootError> {
    let listener = Listener::bind(addr)
        .await
        .map_err(|e| SettingsBootError::Listen {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    eprintln!("cocoon-enclave: waiting for the provider's settings on {addr}");
    loop {
        let (mut conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accepting a settings connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let read = async {
            let mut len = [0u8; 4];
            conn.read_exact(&mut len).await?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 || len > MAX_SETTINGS {
                return Ok::<_, std::io::Error>(Err(format!(
                    "a settings message of {len} bytes (1 to {MAX_SETTINGS})"
                )));
            }
            let mut body = vec![0u8; len];
            conn.read_exact(&mut body).await?;
            Ok(Ok(body))
        };
        let body = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(Ok(Ok(body))) => body,
            Ok(Ok(Err(reason))) => {
                warn!(%peer, %reason, "unreadable settings message; waiting for another");
                let _ = conn
                    .write_all(format!("refused {reason}\n").as_bytes())
                    .await;
                continue;
            }
            Ok(Err(e)) => {
                warn!(%peer, error = %e, "settings connection failed; waiting for another");
                continue;
            }
            Err(_) => {
                warn!(%peer, "no settings within {READ_TIMEOUT:?}; waiting for another connection");
                continue;
            }
        };
        let settings = match ProviderSettings::from_cbor(&body) {
            Ok(s) => s,
            Err(e) => {
                warn!(%peer, error = %e, "undecodable settings; waiting for another");
                let _ = conn.write_all(format!("refused {e}\n").as_bytes()).await;
                continue;
            }
        };
        let result = apply(config, &settings);
        let reply = match &result {
            Ok(()) => format!("ok {}\n", hex::encode(Sha256::digest(&body))),
            Err(e) => format!("refused {}\n", one_line(&e.to_string())),
        };
        let _ = conn.write_all(reply.as_bytes()).await;
        let _ = conn.shutdown().await;
        return result;
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
