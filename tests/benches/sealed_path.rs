//! Latency the host agent and its broker add to one sealed request: the
//! same request (seal, send, stream the answer back, open every chunk)
//! sent directly to `cocoon-enclave` over its Unix socket with the frame
//! protocol, and through `cocoon-host` over HTTP (account check, routing,
//! relaying chunk records, receipt verification and the ledger's durable
//! commit before the final chunk). Real processes, interleaved rounds,
//! medians and p90 side by side in one run.
//!
//! The binaries are looked up beside this benchmark: build them in the
//! same profile first (`cargo build --release --bins`, then `cargo bench -p
//! cocoon-tests --bench sealed_path`).

use std::process::Command;
use std::time::{Duration, Instant};

use cocoon_attestation::bundle::{Claims, EvidenceBundle};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::api::{
    ChunkRecordDecoder, ACCOUNT_KEY_HEADER, ACCOUNT_SIGNATURE_HEADER, CBOR_CONTENT_TYPE,
    EVIDENCE_DIGEST_HEADER, REQUESTS_PATH,
};
use cocoon_protocol::frame::{self, FrameDecoder, FrameType};
use cocoon_protocol::message::{ChatMessage, InferenceRequest, ResponseEvent, Role};
use cocoon_protocol::rand_core::OsRng;
use cocoon_protocol::receipt::UnitPrice;
use cocoon_protocol::seal::{seal_request, BillingMeta, EvidenceDigest, HpkePublicKey};
use cocoon_test_kit::procs::{bin, field, Proc, TempDir};
use cocoon_tests::bench::{median, mode, ms};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const MODEL: &str = "cocoon-deterministic-test";
const MAX_TOKENS: u32 = 32;

struct Target {
    hpke: HpkePublicKey,
    digest: EvidenceDigest,
    account: AccountKey,
}

impl Target {
    fn seal(&self, i: usize) -> (Vec<u8>, cocoon_protocol::seal::ClientSession, [u8; 64]) {
        let meta = BillingMeta {
            model: MODEL.into(),
            max_tokens: MAX_TOKENS,
            price_quote_id: "list".into(),
            unit_price: UnitPrice {
                prompt: 1,
                cached: 1,
                completion: 2,
            },
            multiplier_milli: 1000,
            client_account: self.account.id().0,
            expires_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 300,
        };
        let body = InferenceRequest::Chat {
            messages: vec![ChatMessage {
                role: Role::User,
                content: format!("benchmark question {i}"),
            }],
            sampling: Default::default(),
        }
        .to_cbor();
        let (req, session) =
            seal_request(&self.hpke, &self.digest, &meta, &body, &mut OsRng).expect("seal");
        let sig = self.account.sign_request(&req.request_id());
        (req.to_cbor(), session, sig)
    }
}

/// Open every chunk and check the stream ends with the receipt.
fn open_all(session: cocoon_protocol::seal::ClientSession, chunks: &[Vec<u8>]) -> bool {
    let mut opener = session.response_opener();
    let mut ended = false;
    for c in chunks {
        let Ok(chunk) = opener.open_chunk(c) else {
            return false;
        };
        match ResponseEvent::decode(&chunk.data, chunk.last) {
            Ok(ev) => ended |= ev.is_end(),
            Err(_) => return false,
        }
    }
    ended && opener.finish().is_ok()
}

async fn direct(
    conn: &mut UnixStream,
    dec: &mut FrameDecoder,
    t: &Target,
    i: usize,
    stream: u32,
) -> bool {
    let (req, session, sig) = t.seal(i);
    // What the host forwards: the sealed request with the account's
    // signature, which the enclave checks.
    let signed = cocoon_protocol::request::SignedRequest {
        sealed: req,
        evidence: t.digest.0,
        account_key: t.account.public_key_sec1(),
        signature: sig,
    }
    .to_cbor();
    let bytes = frame::encode(stream, FrameType::Request, &signed).expect("frame");
    conn.write_all(&bytes).await.expect("write");
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while let Some(f) = dec.next_frame().expect("frames") {
            assert_eq!(f.stream_id, stream);
            match f.kind {
                FrameType::ResponseChunk => {
                    let last = f.payload.get(8).is_some_and(|b| b & 1 == 1);
                    chunks.push(f.payload);
                    if last {
                        return open_all(session, &chunks);
                    }
                }
                FrameType::Receipt => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
        let n = conn.read(&mut buf).await.expect("read");
        assert!(n > 0, "enclave closed the connection");
        dec.push(&buf[..n]).expect("frames");
    }
}

async fn via_host(http: &reqwest::Client, url: &str, t: &Target, i: usize) -> bool {
    let (req, session, sig) = t.seal(i);
    let resp = http
        .post(url)
        .header("content-type", CBOR_CONTENT_TYPE)
        .header(EVIDENCE_DIGEST_HEADER, hex::encode(t.digest.as_bytes()))
        .header(ACCOUNT_KEY_HEADER, hex::encode(t.account.public_key_sec1()))
        .header(ACCOUNT_SIGNATURE_HEADER, hex::encode(sig))
        .body(req)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.expect("body");
    let mut d = ChunkRecordDecoder::new();
    d.push(&body);
    let mut chunks = Vec::new();
    while let Some(r) = d.next_record().expect("records") {
        chunks.push(r);
    }
    open_all(session, &chunks)
}

fn main() {
    let m = mode(300);
    if m.rounds == 0 {
        return;
    }
    let dir = TempDir::new("bench-sealed-path");
    let sock = dir.path().join("enclave.sock");
    let cfg = dir.path().join("enclave.toml");
    std::fs::write(&cfg, "test_backend_reply_tokens = 24\n").unwrap();
    let mut enclave = Command::new(bin("cocoon-enclave"));
    enclave
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--config")
        .arg(&cfg)
        .args(["--tee", "simulated"])
        .env("RUST_LOG", "warn");
    let mut enclave = Proc::spawn("cocoon-enclave", enclave);
    enclave.wait_for("ready ", Duration::from_secs(60));
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, cocoon_test_kit::simulated::policy_toml(None)).unwrap();
    let mut host = Command::new(bin("cocoon-host"));
    host.args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--log",
        "warn",
    ])
    .arg("--enclave")
    .arg(format!("unix:{}", sock.display()))
    .arg("--policy")
    .arg(&policy)
    .arg("--ledger")
    .arg(dir.path().join("ledger.sqlite"))
    .args(["--account-rps", "100000", "--account-burst", "100000"]);
    let mut host = Proc::spawn("cocoon-host", host);
    let line = host.wait_for("ready ", Duration::from_secs(60));
    let url = format!("http://{}{REQUESTS_PATH}", field(&line, "listen").unwrap());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = UnixStream::connect(&sock).await.expect("connect enclave");
        let mut dec = FrameDecoder::new();
        conn.write_all(&frame::encode(0, FrameType::EvidenceRequest, &[]).unwrap())
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let bundle = loop {
            if let Some(f) = dec.next_frame().unwrap() {
                assert_eq!(f.kind, FrameType::EvidenceResponse);
                break EvidenceBundle::from_cbor(&f.payload).expect("bundle");
            }
            let n = conn.read(&mut buf).await.unwrap();
            dec.push(&buf[..n]).unwrap();
        };
        let claims = Claims::from_cbor(&bundle.claims_cbor).expect("claims");
        let t = Target {
            hpke: HpkePublicKey::from_bytes(&claims.hpke_public_key).unwrap(),
            digest: EvidenceDigest::of_bundle(&bundle),
            account: AccountKey::generate(&mut OsRng),
        };
        let http = reqwest::Client::new();
        // Warm up both paths (connections, page cache, statement cache).
        for i in 0..20 {
            assert!(direct(&mut conn, &mut dec, &t, i, 1 + i as u32).await);
            assert!(via_host(&http, &url, &t, i).await);
        }
        let (mut d, mut h) = (Vec::new(), Vec::new());
        for round in 0..m.rounds {
            let i = 1000 + round;
            let stream = 100 + round as u32;
            let order = round % 2 == 0;
            for k in 0..2 {
                let start = Instant::now();
                if (k == 0) == order {
                    assert!(direct(&mut conn, &mut dec, &t, i, stream).await);
                    d.push(start.elapsed());
                } else {
                    assert!(via_host(&http, &url, &t, i).await);
                    h.push(start.elapsed());
                }
            }
        }
        let p90 = |v: &mut Vec<Duration>| {
            v.sort_unstable();
            v[v.len() * 9 / 10]
        };
        let (md, mh) = (median(&mut d), median(&mut h));
        let (pd, ph) = (p90(&mut d), p90(&mut h));
        println!(
            "sealed request, {MAX_TOKENS} streamed tokens, {} interleaved rounds{}:",
            m.rounds,
            if m.measuring {
                ""
            } else {
                " (test mode: not a measurement)"
            }
        );
        println!(
            "  direct to the enclave (frames, Unix socket)  p50 {}  p90 {}",
            ms(md),
            ms(pd)
        );
        println!(
            "  through cocoon-host (HTTP, broker, ledger)   p50 {}  p90 {}",
            ms(mh),
            ms(ph)
        );
        println!(
            "  host path / direct: p50 {:.2}x, p90 {:.2}x (added p50 {})",
            mh.as_secs_f64() / md.as_secs_f64(),
            ph.as_secs_f64() / pd.as_secs_f64(),
            ms(mh.saturating_sub(md))
        );
    });
    drop(host);
    drop(enclave);
}
