//! Where the host and an enclave meet, as a person writes it on a command
//! line or in a config file.
//!
//! Owns the one grammar of these addresses and their text form:
//!
//! * `unix:PATH` — a Unix stream socket (tests; the host side of hybrid
//!   vsock);
//! * `vsock:CID:PORT` — AF_VSOCK, a guest's context id and port;
//! * `vsock:PORT` — AF_VSOCK on any context id: only a listener (the
//!   enclave) can mean that;
//! * `hybrid-vsock:PATH:PORT` — a user-space vsock device's Unix socket and
//!   the guest port behind it: only the side that connects (the host) can
//!   use that.
//!
//! Numbers are decimal digits only (no sign, no spaces) below 2^32. Which
//! forms a side accepts is its [`Role`]. This module opens no socket.

use core::fmt;
use std::path::PathBuf;

/// An address in any of the forms above.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// `unix:PATH`.
    Unix(PathBuf),
    /// `vsock:CID:PORT`, or `vsock:PORT` (`cid: None`, any context id).
    Vsock {
        /// The context id; `None` for any.
        cid: Option<u32>,
        /// The port.
        port: u32,
    },
    /// `hybrid-vsock:PATH:PORT`.
    HybridVsock {
        /// The device's Unix socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
    },
}

/// Which side reads the address, and so which forms make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The host: connects to an enclave, so it needs a context id, and may
    /// go through a hybrid-vsock device.
    Connect,
    /// The enclave: listens, on a context id or on any.
    Listen,
}

impl Role {
    /// The forms this side accepts, for error messages.
    pub fn forms(self) -> &'static str {
        match self {
            Role::Connect => {
                "unix:/path/to/socket, vsock:CID:PORT or hybrid-vsock:/path/to/socket:PORT"
            }
            Role::Listen => "unix:/path, vsock:PORT or vsock:CID:PORT",
        }
    }
}

/// Why a text is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {} address {input:?}: {reason} (expected {})", role_word(*role), role.forms())]
pub struct AddrError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
    /// Who read it.
    pub role: Role,
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Connect => "enclave",
        Role::Listen => "listen",
    }
}

/// Decimal digits below 2^32.
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Addr {
    /// Read `s` as `role` reads addresses.
    pub fn parse(s: &str, role: Role) -> Result<Addr, AddrError> {
        let bad = |reason| AddrError {
            input: s.into(),
            reason,
            role,
        };
        const NUMBERS: &str = "CID and port must be decimal numbers below 2^32";
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("hybrid-vsock:") {
            if role == Role::Listen {
                return Err(bad(
                    "hybrid vsock is where the host connects; an enclave listens on vsock",
                ));
            }
            let (path, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("the :PORT after the socket path is missing"))?;
            if path.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            let port =
                number(port).ok_or_else(|| bad("the port must be a decimal number below 2^32"))?;
            return Ok(Addr::HybridVsock {
                path: PathBuf::from(path),
                port,
            });
        }
        if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = match rest.split_once(':') {
                Some((cid, port)) => (Some(number(cid).ok_or_else(|| bad(NUMBERS))?), port),
                None if role == Role::Connect => {
                    return Err(bad("the host connects to one guest: give vsock:CID:PORT"))
                }
                None => (None, rest),
            };
            let port = number(port).ok_or_else(|| bad(NUMBERS))?;
            return Ok(Addr::Vsock { cid, port });
        }
        Err(bad("unknown scheme"))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::Vsock {
                cid: Some(cid),
                port,
            } => write!(f, "vsock:{cid}:{port}"),
            Addr::Vsock { cid: None, port } => write!(f, "vsock:{port}"),
            Addr::HybridVsock { path, port } => write!(f, "hybrid-vsock:{}:{port}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_reads_its_forms_and_writes_them_back() {
        let both = [
            ("unix:/tmp/e.sock", Addr::Unix("/tmp/e.sock".into())),
            (
                "vsock:3:5000",
                Addr::Vsock {
                    cid: Some(3),
                    port: 5000,
                },
            ),
        ];
        let listen = [(
            "vsock:5000",
            Addr::Vsock {
                cid: None,
                port: 5000,
            },
        )];
        let connect = [(
            "hybrid-vsock:/run/v.sock:5000",
            Addr::HybridVsock {
                path: "/run/v.sock".into(),
                port: 5000,
            },
        )];
        for (role, own, other) in [
            (Role::Listen, &listen, &connect),
            (Role::Connect, &connect, &listen),
        ] {
            for (s, a) in both.iter().chain(own.iter()) {
                assert_eq!(Addr::parse(s, role).as_ref(), Ok(a), "{s}");
                assert_eq!(a.to_string(), *s);
            }
            for (s, _) in other.iter() {
                let e = Addr::parse(s, role).unwrap_err();
                assert!(e.to_string().contains(role.forms()), "{e}");
            }
        }
        for bad in [
            "",
            "unix:",
            "tcp:1",
            "vsock:",
            "vsock:x",
            "vsock:x:1",
            "vsock:1:-1",
            "vsock:1:+1",
            "vsock:1: 1",
            "vsock:1:2:3",
            "vsock:-1",
            "vsock:4294967296",
            "hybrid-vsock:/p",
            "hybrid-vsock::1",
            "hybrid-vsock:/p:x",
            "/tmp/e.sock",
        ] {
            for role in [Role::Listen, Role::Connect] {
                let e = Addr::parse(bad, role).unwrap_err();
                assert!(e.to_string().contains("expected unix:/path"), "{bad}: {e}");
            }
        }
    }
}
