//! The sandbox chain API (`contracts/scripts/chain-api.mjs`), started for a
//! test: a TON HTTP API v2 server backed by `@ton/sandbox`. A TEST DOUBLE,
//! NOT A TON NETWORK: it exists so the production chain client runs
//! unchanged where no TON network is reachable.
//!
//! ```no_run
//! # use cocoon_test_kit::chain::SandboxChain;
//! let Some(chain) = SandboxChain::start_or_skip(&SandboxChain::contracts_dir()) else { return };
//! // chain.endpoint: "http://127.0.0.1:PORT/api/v2"
//! chain.fund("0:…", 5_000_000_000);
//! ```

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::procs::Proc;

/// The line the double prints first.
pub const BANNER: &str = "SANDBOX CHAIN API — A TEST DOUBLE, NOT A TON NETWORK";

/// A running sandbox chain API, killed on drop.
pub struct SandboxChain {
    /// The v2 API's base URL (`http://127.0.0.1:PORT/api/v2`), what a
    /// `ChainApiConfig::endpoint` takes.
    pub endpoint: String,
    /// `127.0.0.1:PORT`.
    addr: String,
    proc: Proc,
}

impl std::fmt::Debug for SandboxChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxChain")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl SandboxChain {
    /// The repository's `contracts/` directory.
    pub fn contracts_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts")
    }

    /// Why the double cannot start here (no `node`, or no
    /// `contracts/node_modules`), or `None` when it can.
    pub fn missing(contracts_dir: &Path) -> Option<String> {
        let node_ok = Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !node_ok {
            return Some("Node.js (`node`) is not installed: run scripts/ton-deps.sh".into());
        }
        let sandbox = contracts_dir.join("node_modules/@ton/sandbox");
        if !sandbox.exists() {
            return Some(format!(
                "{} is missing: run scripts/ton-deps.sh",
                sandbox.display()
            ));
        }
        None
    }

    /// Start it, or, when node or the packages are missing, return `None`
    /// after printing why: under CI (`CI` set) their absence panics
    /// instead, so a CI run cannot skip the test silently.
    pub fn start_or_skip(contracts_dir: &Path) -> Option<SandboxChain> {
        if let Some(why) = SandboxChain::missing(contracts_dir) {
            assert!(std::env::var_os("CI").is_none(), "CI: {why}");
            eprintln!("SKIPPED: the sandbox chain API cannot start: {why}");
            return None;
        }
        Some(SandboxChain::start(contracts_dir))
    }

    /// Start `node scripts/chain-api.mjs --port 0` in `contracts_dir` and
    /// wait for it to listen. Panics with a clear message when node or
    /// the packages are missing, or when it does not come up.
    pub fn start(contracts_dir: &Path) -> SandboxChain {
        if let Some(why) = SandboxChain::missing(contracts_dir) {
            panic!("the sandbox chain API cannot start: {why}");
        }
        let mut cmd = Command::new("node");
        cmd.arg("scripts/chain-api.mjs")
            .args(["--port", "0"])
            .current_dir(contracts_dir);
        let mut proc = Proc::spawn("chain-api.mjs", cmd);
        proc.wait_for(BANNER, Duration::from_secs(60));
        let line = proc.wait_for("listening http://", Duration::from_secs(120));
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("chain-api.mjs printed {line:?}"))
            .trim_end_matches('/')
            .to_string();
        let addr = base.trim_start_matches("http://").to_string();
        let chain = SandboxChain {
            endpoint: format!("{base}/api/v2"),
            addr,
            proc,
        };
        let ready = chain.request("GET", "/sandbox/ready", None);
        assert!(ready.contains("\"ready\":true"), "not ready: {ready}");
        chain
    }

    /// The process id (to stop it by hand in a test of unreachability).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }

    /// Sends `amount` nanoton from the sandbox treasury to `address`
    /// (raw or friendly), non-bounceable, so it lands on an account without
    /// code too.
    pub fn fund(&self, address: &str, amount: u128) {
        let body = format!(r#"{{"address":"{address}","amount":"{amount}"}}"#);
        let r = self.request("POST", "/sandbox/fund", Some(&body));
        assert!(r.contains("\"ok\":true"), "fund {address}: {r}");
    }

    /// Deploys (code, data) bags of cells from the treasury with `value`
    /// nanoton; the contract's raw address.
    pub fn deploy(&self, code_boc: &[u8], data_boc: &[u8], value: u128) -> String {
        let body = format!(
            r#"{{"code_boc":"{}","data_boc":"{}","value":"{value}"}}"#,
            base64(code_boc),
            base64(data_boc)
        );
        let r = self.request("POST", "/sandbox/deploy", Some(&body));
        let at = r
            .find("\"address\":\"")
            .unwrap_or_else(|| panic!("deploy: {r}"));
        let rest = &r[at + 11..];
        rest[..rest.find('"').unwrap_or(rest.len())].to_string()
    }

    /// Sets the sandbox clock (unix seconds) for every later transaction
    /// and get-method.
    pub fn set_time(&self, now: u64) {
        let r = self.request(
            "POST",
            "/sandbox/time",
            Some(&format!(r#"{{"now":{now}}}"#)),
        );
        assert!(r.contains("\"ok\":true"), "set time: {r}");
    }

    /// One HTTP/1.1 request, `Connection: close`; the body of the answer.
    fn request(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let mut s = TcpStream::connect(&self.addr)
            .unwrap_or_else(|e| panic!("connect to the sandbox chain API at {}: {e}", self.addr));
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("write to the sandbox chain API: {e}"));
        let mut out = String::new();
        s.read_to_string(&mut out)
            .unwrap_or_else(|e| panic!("read from the sandbox chain API: {e}"));
        match out.split_once("\r\n\r\n") {
            Some((_, b)) => b.to_string(),
            None => panic!("the sandbox chain API answered {out:?}"),
        }
    }
}

fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_vectors() {
        // RFC 4648 §10.
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
