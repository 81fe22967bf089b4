//! Where the enclave listens for the host, and the connections it accepts.
//!
//! Owns [`ListenAddr`] (`unix:/path`, `vsock:PORT`, `vsock:CID:PORT`) and
//! [`Listener`], which yields each accepted host connection as a boxed byte
//! stream ([`Connection`]). In a VM the host reaches the guest over kernel
//! AF_VSOCK; tests and the hybrid-vsock setup use a Unix socket. The enclave
//! listens and the host connects. This module moves bytes only: framing and
//! meaning belong to the server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cocoon_protocol::addr::{Addr, AddrError, Role};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

/// Why an address cannot be parsed or bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The text is not a listen address.
    #[error(transparent)]
    BadAddress(#[from] AddrError),
    /// The path of a Unix socket is taken by something that is not a socket.
    #[error(
        "cannot listen on unix:{path}: the path exists and is not a socket; refusing to replace it"
    )]
    NotASocket {
        /// The path.
        path: String,
    },
    /// The OS refused to bind or listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where the enclave listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix stream socket at this path (tests, hybrid vsock).
    Unix(PathBuf),
    /// An AF_VSOCK stream socket.
    Vsock {
        /// Context id to bind; [`VMADDR_CID_ANY`] (`u32::MAX`) by default.
        cid: u32,
        /// Port.
        port: u32,
    },
}

/// Read and written by [`cocoon_protocol::addr`], as the side that listens.
impl FromStr for ListenAddr {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<ListenAddr, TransportError> {
        match Addr::parse(s, Role::Listen)? {
            Addr::Unix(path) => Ok(ListenAddr::Unix(path)),
            Addr::Vsock { cid, port } => Ok(ListenAddr::Vsock {
                cid: cid.unwrap_or(VMADDR_CID_ANY),
                port,
            }),
            // `Role::Listen` refuses it; the error says so all the same.
            Addr::HybridVsock { .. } => Err(TransportError::BadAddress(AddrError {
                input: s.into(),
                reason: "hybrid vsock is where the host connects; an enclave listens on vsock",
                role: Role::Listen,
            })),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = match self {
            ListenAddr::Unix(p) => Addr::Unix(p.clone()),
            ListenAddr::Vsock { cid, port } => Addr::Vsock {
                cid: Some(*cid).filter(|c| *c != VMADDR_CID_ANY),
                port: *port,
            },
        };
        addr.fmt(f)
    }
}

impl<'de> serde::Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ListenAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A byte stream to the host.
pub trait HostStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> HostStream for T {}

/// One accepted host connection.
pub type Connection = Box<dyn HostStream>;

/// A bound listener.
#[derive(Debug)]
pub struct Listener {
    addr: ListenAddr,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Unix {
        listener: UnixListener,
        /// The socket file's (device, inode), to remove it on drop only if
        /// it is still ours.
        identity: Option<(u64, u64)>,
    },
    Vsock(VsockListener),
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Listener {
    /// Bind and listen. A stale Unix socket file at the path is removed
    /// first; any other kind of file there is an error.
    pub async fn bind(addr: &ListenAddr) -> Result<Listener, TransportError> {
        let bind_err = |source| TransportError::Bind {
            addr: addr.to_string(),
            source,
        };
        let inner = match addr {
            ListenAddr::Unix(path) => {
                use std::os::unix::fs::FileTypeExt;
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.file_type().is_socket() => {
                        std::fs::remove_file(path).map_err(bind_err)?;
                    }
                    Ok(_) => {
                        return Err(TransportError::NotASocket {
                            path: path.display().to_string(),
                        })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(bind_err(e)),
                }
                let listener = UnixListener::bind(path).map_err(bind_err)?;
                Inner::Unix {
                    listener,
                    identity: file_identity(path),
                }
            }
            ListenAddr::Vsock { cid, port } => {
                Inner::Vsock(VsockListener::bind(VsockAddr::new(*cid, *port)).map_err(bind_err)?)
            }
        };
        Ok(Listener {
            addr: addr.clone(),
            inner,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The next host connection, and a description of the peer for logs.
    pub async fn accept(&self) -> std::io::Result<(Connection, String)> {
        match &self.inner {
            Inner::Unix { listener, .. } => {
                let (s, _) = listener.accept().await?;
                Ok((Box::new(s), "unix".into()))
            }
            Inner::Vsock(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Box::new(s), format!("vsock:{}:{}", peer.cid(), peer.port())))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let (
            ListenAddr::Unix(path),
            Inner::Unix {
                identity: Some(id), ..
            },
        ) = (&self.addr, &self.inner)
        {
            if file_identity(path).as_ref() == Some(id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        for (s, a) in [
            ("unix:/tmp/e.sock", ListenAddr::Unix("/tmp/e.sock".into())),
            (
                "vsock:5000",
                ListenAddr::Vsock {
                    cid: VMADDR_CID_ANY,
                    port: 5000,
                },
            ),
            ("vsock:3:5000", ListenAddr::Vsock { cid: 3, port: 5000 }),
        ] {
            assert_eq!(s.parse::<ListenAddr>().unwrap(), a);
            assert_eq!(a.to_string(), s);
        }
        for bad in [
            "",
            "unix:",
            "tcp:1",
            "vsock:",
            "vsock:x",
            "vsock:1:2:3",
            "vsock:-1",
            "vsock:4294967296",
            "/tmp/e.sock",
        ] {
            let e = bad.parse::<ListenAddr>().unwrap_err();
            assert!(e.to_string().contains("expected unix:/path"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn unix_bind_replaces_stale_socket_but_not_files() {
        let dir =
            std::env::temp_dir().join(format!("cocoon-enclave-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("e.sock");
        let addr = ListenAddr::Unix(path.clone());
        let l = Listener::bind(&addr).await.unwrap();
        // A second bind replaces the (now stale from its point of view) socket.
        let l2 = Listener::bind(&addr).await.unwrap();
        drop(l);
        assert!(
            path.exists(),
            "dropping the old listener leaves the new socket"
        );
        let c = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (_conn, peer) = l2.accept().await.unwrap();
        assert_eq!(peer, "unix");
        drop(c);
        drop(l2);
        assert!(!path.exists(), "the socket file is removed on drop");
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            Listener::bind(&addr).await,
            Err(TransportError::NotASocket { .. })
        ));
        assert!(path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
