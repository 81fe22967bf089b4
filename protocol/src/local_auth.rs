//! What the two local HTTP endpoints check before they read a request:
//! the client's OpenAI-compatible endpoint (`cocoon-client serve`) and the
//! host agent's operator API.
//!
//! Owns two facts, each once:
//!
//! * The `Host` header must name this machine ([`AllowedHosts`]): a
//!   loopback address (`127.0.0.0/8`, `::1`), `localhost`, or a name the
//!   operator configured. A page on another site that resolves its own
//!   name to `127.0.0.1` (DNS rebinding) still sends its own name, and is
//!   refused. The header's grammar is RFC 9110 §7.2 (`uri-host [":"
//!   port]`, an IPv6 literal in brackets, RFC 3986 §3.2.2).
//! * The bearer token ([`BearerToken`]), sent as `Authorization: Bearer
//!   <token>` (RFC 6750 §2.1; the official OpenAI clients send their API
//!   key so). The comparison takes the same time whatever the presented
//!   value is: both sides are hashed with SHA-256 and the digests compared
//!   in constant time, so neither the content nor the length of the
//!   expected token leaks through timing.
//!
//! Reading token files, choosing status codes and deciding which routes
//! need what belong to the binaries; this module does no I/O.

use std::net::IpAddr;

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// Fewest characters a token may have (a generated one has 64 hex digits
/// of randomness after its prefix).
pub const MIN_TOKEN_LEN: usize = 32;
/// Most characters a token may have.
pub const MAX_TOKEN_LEN: usize = 512;
/// Random bytes in a generated token.
pub const GENERATED_TOKEN_BYTES: usize = 32;

/// Why a text is not a usable token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Fewer than [`MIN_TOKEN_LEN`] characters.
    #[error("the token has {len} characters; at least {MIN_TOKEN_LEN} are needed (e.g. `openssl rand -hex 32`)")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// More than [`MAX_TOKEN_LEN`] characters.
    #[error("the token has {len} characters; at most {MAX_TOKEN_LEN} are allowed")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A character outside visible ASCII, or white space inside it.
    #[error("the token may hold only visible ASCII characters (no spaces, no control characters)")]
    BadCharacter,
}

/// A bearer token. Its `Debug` form never shows the secret.
#[derive(Clone)]
pub struct BearerToken {
    text: zeroize::Zeroizing<String>,
    digest: [u8; 32],
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// A new token: `prefix` then [`GENERATED_TOKEN_BYTES`] random bytes in
    /// lowercase hex (the prefix says what the token opens, e.g.
    /// `cocoon-local-`). The prefix must be visible ASCII.
    pub fn generate(prefix: &str, rng: &mut (impl RngCore + CryptoRng)) -> BearerToken {
        let mut bytes = zeroize::Zeroizing::new([0u8; GENERATED_TOKEN_BYTES]);
        rng.fill_bytes(bytes.as_mut());
        let mut text = String::with_capacity(prefix.len() + 2 * GENERATED_TOKEN_BYTES);
        text.push_str(prefix);
        text.push_str(&hex::encode(bytes.as_ref()));
        BearerToken::from_checked(text)
    }

    /// A token from the text of a token file or variable: surrounding white
    /// space (a trailing newline) is ignored; the rest must be
    /// [`MIN_TOKEN_LEN`] to [`MAX_TOKEN_LEN`] visible ASCII characters.
    pub fn parse(text: &str) -> Result<BearerToken, TokenError> {
        let t = text.trim();
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacter);
        }
        if t.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort { len: t.len() });
        }
        if t.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong { len: t.len() });
        }
        Ok(BearerToken::from_checked(t.to_string()))
    }

    fn from_checked(text: String) -> BearerToken {
        let digest = Sha256::digest(text.as_bytes()).into();
        BearerToken {
            text: zeroize::Zeroizing::new(text),
            digest,
        }
    }

    /// The secret itself, to write into a token file.
    pub fn reveal(&self) -> &str {
        &self.text
    }

    /// Whether `presented` is this token, in time independent of either.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d: [u8; 32] = Sha256::digest(presented).into();
        bool::from(d.ct_eq(&self.digest))
    }

    /// Whether an `Authorization` header value (`None`: no header) carries
    /// this token: the scheme `Bearer` (any case), one or more spaces, the
    /// token.
    pub fn authorizes(&self, authorization: Option<&[u8]>) -> bool {
        match authorization.map(bearer_credentials) {
            Some(Credentials::Bearer(t)) => self.matches(t),
            _ => false,
        }
    }
}

/// What an `Authorization` header value holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials<'a> {
    /// `Bearer <token>`.
    Bearer(&'a [u8]),
    /// Another scheme, or nothing after `Bearer`.
    Other,
}

/// Split an `Authorization` header value into its bearer token, if that is
/// its scheme (RFC 6750 §2.1: `"Bearer" 1*SP b64token`; the scheme is
/// case-insensitive, RFC 9110 §11.1).
pub fn bearer_credentials(value: &[u8]) -> Credentials<'_> {
    const SCHEME: &[u8] = b"bearer";
    let Some(head) = value.get(..SCHEME.len()) else {
        return Credentials::Other;
    };
    let rest = value.get(SCHEME.len()..).unwrap_or_default();
    if !head.eq_ignore_ascii_case(SCHEME) || rest.first() != Some(&b' ') {
        return Credentials::Other;
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        Credentials::Other
    } else {
        Credentials::Bearer(token)
    }
}

/// A `Host` header value split into its host and port (RFC 9110 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostHeader<'a> {
    /// The host: a name, an IPv4 literal, or an IPv6 literal without its
    /// brackets.
    pub host: &'a str,
    /// The port, if the value names one.
    pub port: Option<u16>,
}

/// Split a `Host` header value. `None` when it is not one: empty, not
/// visible ASCII, an IPv6 literal without its closing bracket, a port that
/// is not a number below 65536, or a bare name with more than one colon.
pub fn parse_host_header(value: &[u8]) -> Option<HostHeader<'_>> {
    let value = std::str::from_utf8(value).ok()?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        match value.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        // `port = *DIGIT`: "host:" names no port.
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some(HostHeader { host, port })
}

/// The host names a local endpoint answers to: every loopback address,
/// `localhost`, and the names added with [`AllowedHosts::with`] (compared
/// without regard to case; a port in the header is not compared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    /// Loopback addresses and `localhost` only.
    pub fn loopback() -> AllowedHosts {
        AllowedHosts {
            names: vec!["localhost".into()],
        }
    }

    /// Also allow `name`: a host name or an IP address (an IPv6 address
    /// with or without brackets). The unspecified address (`0.0.0.0`,
    /// `::`) is not a name a client sends and is ignored.
    pub fn with(mut self, name: &str) -> AllowedHosts {
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = name.parse::<IpAddr>() {
            if ip.is_unspecified() {
                return self;
            }
            self.names.push(ip.to_string());
        } else if !name.is_empty() {
            self.names.push(name.to_ascii_lowercase());
        }
        self
    }

    /// Whether a request with this `Host` header value (`None`: no
    /// header) is for this endpoint.
    pub fn permits(&self, host_header: Option<&[u8]>) -> bool {
        let Some(h) = host_header.and_then(parse_host_header) else {
            return false;
        };
        if let Ok(ip) = h.host.parse::<IpAddr>() {
            // Only a page whose own origin is a loopback address sends a
            // loopback literal: no other site can make a browser do so.
            let ip_text = ip.to_string();
            return ip.is_loopback() || self.names.contains(&ip_text);
        }
        self.names.iter().any(|n| n.eq_ignore_ascii_case(h.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = BearerToken::generate("cocoon-local-", &mut OsRng);
        let b = BearerToken::generate("cocoon-local-", &mut OsRng);
        assert!(a.reveal().starts_with("cocoon-local-"));
        assert_eq!(a.reveal().len(), "cocoon-local-".len() + 64);
        assert_ne!(a.reveal(), b.reveal());
        let again = BearerToken::parse(&format!("{}\n", a.reveal())).unwrap();
        assert!(again.matches(a.reveal().as_bytes()));
        assert!(!again.matches(b.reveal().as_bytes()));
        assert_eq!(format!("{a:?}"), "BearerToken(<redacted>)");
    }

    #[test]
    fn parse_refuses_short_long_and_odd_tokens() {
        assert_eq!(
            BearerToken::parse(&"x".repeat(31)).unwrap_err(),
            TokenError::TooShort { len: 31 }
        );
        assert!(BearerToken::parse(&"x".repeat(32)).is_ok());
        assert_eq!(
            BearerToken::parse(&"x".repeat(513)).unwrap_err(),
            TokenError::TooLong { len: 513 }
        );
        let spaced = format!("{} {}", "a".repeat(20), "b".repeat(20));
        assert_eq!(
            BearerToken::parse(&spaced).unwrap_err(),
            TokenError::BadCharacter
        );
        let non_ascii = format!("{}é", "a".repeat(40));
        assert_eq!(
            BearerToken::parse(&non_ascii).unwrap_err(),
            TokenError::BadCharacter
        );
        assert_eq!(
            BearerToken::parse("   \n").unwrap_err(),
            TokenError::TooShort { len: 0 }
        );
    }

    #[test]
    fn authorization_header_values() {
        let t = BearerToken::parse(&"k".repeat(40)).unwrap();
        let good = format!("Bearer {}", "k".repeat(40));
        assert!(t.authorizes(Some(good.as_bytes())));
        let lower = format!("bearer  {} ", "k".repeat(40));
        assert!(t.authorizes(Some(lower.as_bytes())));
        for bad in [
            format!("Bearer {}", "k".repeat(39)),
            format!("Bearer {}x", "k".repeat(40)),
            format!("Basic {}", "k".repeat(40)),
            format!("Bearer{}", "k".repeat(40)),
            "k".repeat(40),
            "Bearer ".into(),
            "Bearer".into(),
            String::new(),
        ] {
            assert!(!t.authorizes(Some(bad.as_bytes())), "{bad:?}");
        }
        assert!(!t.authorizes(None));
        assert_eq!(bearer_credentials(b"Bearer   "), Credentials::Other);
        assert_eq!(bearer_credentials(b"Bearer a"), Credentials::Bearer(b"a"));
    }

    #[test]
    fn host_headers() {
        fn h(v: &str) -> Option<HostHeader<'_>> {
            parse_host_header(v.as_bytes())
        }
        assert_eq!(
            h("127.0.0.1:8088"),
            Some(HostHeader {
                host: "127.0.0.1",
                port: Some(8088)
            })
        );
        assert_eq!(
            h("localhost"),
            Some(HostHeader {
                host: "localhost",
                port: None
            })
        );
        assert_eq!(
            h("[::1]:80"),
            Some(HostHeader {
                host: "::1",
                port: Some(80)
            })
        );
        assert_eq!(
            h("[::1]"),
            Some(HostHeader {
                host: "::1",
                port: None
            })
        );
        assert_eq!(
            h("localhost:"),
            Some(HostHeader {
                host: "localhost",
                port: None
            })
        );
        for bad in [
            "", ":80", "[::1", "[::1]x", "[]:1", "::1", "a:b", "a:65536", "a:123456", "a b",
            "a\x00",
        ] {
            assert_eq!(h(bad), None, "{bad:?}");
        }
        assert_eq!(parse_host_header(b"\xff"), None);
    }

    #[test]
    fn allowed_hosts() {
        let local = AllowedHosts::loopback();
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8088",
            "localhost:1",
            "LOCALHOST",
            "[::1]:8088",
            "127.9.9.9",
        ] {
            assert!(local.permits(Some(ok.as_bytes())), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8088",
            "localhost.evil.example",
            "localhost.",
            "10.0.0.1:8088",
            "0.0.0.0:8088",
            "[::]:8088",
            "[::ffff:127.0.0.1]",
            "",
        ] {
            assert!(!local.permits(Some(bad.as_bytes())), "{bad}");
        }
        assert!(!local.permits(None));
        let more = AllowedHosts::loopback()
            .with("Box.Lan")
            .with("192.168.1.5")
            .with("[fe80::1]")
            .with("0.0.0.0");
        for ok in [
            "box.lan:8088",
            "BOX.LAN",
            "192.168.1.5:1",
            "[fe80::1]:2",
            "localhost",
        ] {
            assert!(more.permits(Some(ok.as_bytes())), "{ok}");
        }
        for bad in ["0.0.0.0", "192.168.1.6", "box.lan.evil.example"] {
            assert!(!more.permits(Some(bad.as_bytes())), "{bad}");
        }
    }
}
