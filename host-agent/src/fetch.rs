//! Bounded HTTP GETs for the collateral the host fetches, and the back-off
//! after a failed one.
//!
//! Owns the I/O rules every collateral fetch from Intel's PCS (or a PCCS)
//! and AMD's key distribution service follows: one deadline from connect to
//! last byte, a body limit enforced while reading (a `Content-Length` over
//! it is refused before any of the body is read), and only a `200` counts
//! as an answer. `Backoff` is sans-IO (the time comes in as an argument):
//! after a failure it refuses to ask again for the same thing until a
//! doubling delay has passed, so a service that is down or refusing is not
//! hammered on every evidence refresh. Nothing here judges what it fetched:
//! the verifier checks the vendors' signatures.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use reqwest::header::HeaderMap;

/// Timeouts and back-off of the collateral fetchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// One request, connect to last byte.
    pub timeout: Duration,
    /// Wait this long after a first failure before asking again.
    pub backoff_min_secs: u64,
    /// The longest wait, however often it failed.
    pub backoff_max_secs: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            timeout: Duration::from_secs(20),
            backoff_min_secs: 30,
            backoff_max_secs: 3600,
        }
    }
}

/// Why collateral could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No answer in time, a connection failure, or a status other than 200.
    #[error("{url}: unavailable: {reason}")]
    Unavailable {
        /// What was asked for.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The answer is larger than this kind of collateral can be.
    #[error("{url}: the answer is larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was asked for.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The answer is not of the documented shape.
    #[error("{url}: malformed answer: {reason}")]
    Malformed {
        /// What was asked for.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An earlier fetch of the same thing failed; not asked again yet.
    #[error("not asking again before unix time {until}: the last fetch failed")]
    BackingOff {
        /// When the next try is allowed.
        until: u64,
    },
}

/// A `200` answer: its body and headers.
pub(crate) struct Answer {
    pub(crate) body: Vec<u8>,
    pub(crate) headers: HeaderMap,
}

/// GET `url`, reading at most `limit` bytes of body within `timeout`.
pub(crate) async fn get(
    http: &reqwest::Client,
    url: &str,
    limit: usize,
    timeout: Duration,
) -> Result<Answer, FetchError> {
    let unavailable = |reason: String| FetchError::Unavailable {
        url: url.to_string(),
        reason,
    };
    let too_large = || FetchError::TooLarge {
        url: url.to_string(),
        limit,
    };
    let read = async {
        let mut resp = http
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(unavailable(format!("HTTP {}", resp.status())));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
        {
            return Err(too_large());
        }
        let headers = std::mem::take(resp.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(e.to_string()))? {
            if body.len().saturating_add(chunk.len()) > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { body, headers })
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| unavailable(format!("no complete answer within {timeout:?}")))?
}

/// The text of header `name`, percent-decoded (Intel's PCS sends its issuer
/// chains as URL-encoded PEM in response headers).
pub(crate) fn percent_decoded_header(
    headers: &HeaderMap,
    name: &str,
    url: &str,
) -> Result<String, FetchError> {
    let malformed = |reason: String| FetchError::Malformed {
        url: url.to_string(),
        reason,
    };
    let raw = headers
        .get(name)
        .ok_or_else(|| malformed(format!("no {name} header")))?
        .as_bytes();
    percent_decode(raw)
        .ok_or_else(|| malformed(format!("the {name} header is not percent-encoded UTF-8")))
}

/// Decode `%XX` escapes (RFC 3986 §2.1); every other byte stands for itself.
fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// At most this many things are remembered as failing; past it the oldest
/// waits are forgotten (asking once more is the worst that happens).
const MAX_TRACKED: usize = 256;

/// Per-key back-off after failed fetches: the first failure waits
/// `backoff_min_secs`, each further one twice as long, up to
/// `backoff_max_secs`; a success forgets the key.
#[derive(Debug)]
pub(crate) struct Backoff<K> {
    failing: HashMap<K, (u32, u64)>,
    min_secs: u64,
    max_secs: u64,
}

impl<K: Hash + Eq> Backoff<K> {
    pub(crate) fn new(limits: &FetchLimits) -> Self {
        Backoff {
            failing: HashMap::new(),
            min_secs: limits.backoff_min_secs,
            max_secs: limits.backoff_max_secs.max(limits.backoff_min_secs),
        }
    }

    /// `Err(until)` while `key` must not be asked for at `now`.
    pub(crate) fn check(&self, key: &K, now: u64) -> Result<(), FetchError> {
        match self.failing.get(key) {
            Some(&(_, until)) if now < until => Err(FetchError::BackingOff { until }),
            _ => Ok(()),
        }
    }

    /// Record a failure at `now`; returns when the next try is allowed.
    pub(crate) fn failed(&mut self, key: K, now: u64) -> u64 {
        if self.failing.len() >= MAX_TRACKED && !self.failing.contains_key(&key) {
            self.failing.retain(|_, (_, until)| *until > now);
            if self.failing.len() >= MAX_TRACKED {
                self.failing.clear();
            }
        }
        let (count, _) = self.failing.get(&key).copied().unwrap_or((0, 0));
        let wait = self
            .min_secs
            .saturating_mul(1u64 << count.min(20))
            .min(self.max_secs);
        let until = now.saturating_add(wait);
        self.failing.insert(key, (count.saturating_add(1), until));
        until
    }

    /// Forget `key`'s failures.
    pub(crate) fn succeeded(&mut self, key: &K) {
        self.failing.remove(key);
    }
}

/// A loopback HTTP server for the fetchers' tests: answers every path from
/// a table of recorded responses and records what it was asked.
#[cfg(test)]
pub(crate) mod test_server {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// One canned answer.
    #[derive(Clone, Debug)]
    pub(crate) struct Canned {
        pub(crate) status: u16,
        pub(crate) headers: Vec<(String, String)>,
        pub(crate) body: Vec<u8>,
        pub(crate) delay: Duration,
    }

    impl Canned {
        pub(crate) fn ok(body: Vec<u8>) -> Canned {
            Canned {
                status: 200,
                headers: Vec::new(),
                body,
                delay: Duration::ZERO,
            }
        }
        pub(crate) fn header(mut self, name: &str, value: &str) -> Canned {
            self.headers.push((name.to_string(), value.to_string()));
            self
        }
    }

    /// Answers by path (without the query); unknown paths get a 404.
    #[derive(Clone, Default)]
    pub(crate) struct Server {
        pub(crate) routes: Arc<Mutex<HashMap<String, Canned>>>,
        /// Every path and query asked for, in order.
        pub(crate) asked: Arc<Mutex<Vec<String>>>,
    }

    impl Server {
        pub(crate) fn set(&self, path: &str, c: Canned) {
            self.routes.lock().unwrap().insert(path.to_string(), c);
        }
        pub(crate) fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
        /// Serve on 127.0.0.1; returns the base URL.
        pub(crate) async fn start(&self) -> String {
            let me = self.clone();
            let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
                let me = me.clone();
                async move {
                    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
                    me.asked.lock().unwrap().push(pq.to_string());
                    let canned = me.routes.lock().unwrap().get(uri.path()).cloned();
                    let c = canned.unwrap_or(Canned {
                        status: 404,
                        headers: Vec::new(),
                        body: b"not found".to_vec(),
                        delay: Duration::ZERO,
                    });
                    tokio::time::sleep(c.delay).await;
                    let mut b = axum::http::Response::builder().status(c.status);
                    for (k, v) in &c.headers {
                        b = b.header(k, v);
                    }
                    b.body(axum::body::Body::from(c.body)).unwrap()
                }
            });
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(l, app).await });
            format!("http://{addr}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(
            percent_decode(b"-----BEGIN%20CERTIFICATE-----%0AMII+/=").as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nMII+/=")
        );
        assert_eq!(percent_decode(b"%2"), None);
        assert_eq!(percent_decode(b"%zz"), None);
        assert_eq!(percent_decode(b"%FF"), None, "not UTF-8");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_a_success_forgets() {
        let mut b = Backoff::new(&FetchLimits {
            timeout: Duration::from_secs(1),
            backoff_min_secs: 10,
            backoff_max_secs: 35,
        });
        assert!(b.check(&"k", 100).is_ok());
        assert_eq!(b.failed("k", 100), 110);
        assert_eq!(
            b.check(&"k", 109),
            Err(FetchError::BackingOff { until: 110 })
        );
        assert!(b.check(&"other", 109).is_ok());
        assert!(b.check(&"k", 110).is_ok());
        assert_eq!(b.failed("k", 110), 130);
        assert_eq!(b.failed("k", 130), 165, "capped at 35 s");
        b.succeeded(&"k");
        assert!(b.check(&"k", 131).is_ok());
        assert_eq!(b.failed("k", 200), 210, "starts over");
    }
}
