//! Latency the host agent and its broker add to one sealed request: the
//! same request (seal, send, stream the answer back, open every chunk)
//! sent directly to `cocoon-enclave` over its Unix socket with the frame
//! protocol, and through `cocoon-host` over HTTP (account check, routing,
//! relaying chunk records, receipt verification and the ledger's durable
//! commit before the final chunk). Real processes, interleaved rounds,
//! medians and p90 side by side in one run.
//!
//! Then where the added latency goes: the host's own timeline of the same
//! requests (`GET /admin/timings`, `cocoon_host::timings`), p50 per stage,
//! and the added latency less the ledger's fsync against the goal of
//! 0.3 ms. Then throughput: 64 concurrent streams direct to the enclave
//! (one connection each) and through the host, in interleaved phases,
//! requests per second both ways and their ratio against the goal of
//! 0.8x. Requests for the throughput phases are sealed before each phase,
//! off the clock; every answer is opened and checked on it.
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
    EVIDENCE_DIGEST_HEADER, LIVE_PATH, REQUESTS_PATH,
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

/// A sealed request as the enclave gets it directly: the framed
/// `SignedRequest` (what the host would forward) and the client's session.
fn seal_direct(t: &Target, i: usize) -> (Vec<u8>, cocoon_protocol::seal::ClientSession) {
    let (req, session, sig) = t.seal(i);
    let signed = cocoon_protocol::request::SignedRequest {
        sealed: req,
        evidence: t.digest.0,
        account_key: t.account.public_key_sec1(),
        signature: sig,
    }
    .to_cbor();
    (signed, session)
}

async fn direct(
    conn: &mut UnixStream,
    dec: &mut FrameDecoder,
    t: &Target,
    i: usize,
    stream: u32,
) -> bool {
    let (signed, session) = seal_direct(t, i);
    send_direct(conn, dec, &signed, session, stream).await
}

/// Send one signed request on `stream` and read its answer to the end.
async fn send_direct(
    conn: &mut UnixStream,
    dec: &mut FrameDecoder,
    signed: &[u8],
    session: cocoon_protocol::seal::ClientSession,
    stream: u32,
) -> bool {
    let bytes = frame::encode(stream, FrameType::Request, signed).expect("frame");
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

/// A request sealed for the host: body, session, account signature.
type ForHost = (Vec<u8>, cocoon_protocol::seal::ClientSession, [u8; 64]);

async fn via_host(http: &reqwest::Client, url: &str, t: &Target, i: usize) -> bool {
    send_via_host(http, url, t, t.seal(i)).await
}

async fn send_via_host(http: &reqwest::Client, url: &str, t: &Target, sealed: ForHost) -> bool {
    let (req, session, sig) = sealed;
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

/// The host's timelines of its completed requests (`GET /admin/timings`):
/// per request, nanoseconds per stage by name, and `total`.
async fn host_timings(http: &reqwest::Client, admin: &str) -> Vec<Vec<(String, u64)>> {
    let body = http
        .get(format!("http://{admin}/admin/timings"))
        .send()
        .await
        .expect("GET /admin/timings")
        .text()
        .await
        .expect("timings");
    body.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v.as_object()
                .expect("an object")
                .iter()
                .filter_map(|(k, v)| Some((k.strip_suffix("_ns")?.to_string(), v.as_u64()?)))
                .collect()
        })
        .collect()
}

/// p50 and p90 of the stage `name` over `samples`.
fn stage_p50_p90(samples: &[Vec<(String, u64)>], name: &str) -> (Duration, Duration) {
    let mut v: Vec<Duration> = samples
        .iter()
        .filter_map(|s| s.iter().find(|(k, _)| k == name))
        .map(|(_, ns)| Duration::from_nanos(*ns))
        .collect();
    let p50 = median(&mut v);
    (p50, v.get(v.len() * 9 / 10).copied().unwrap_or_default())
}

/// What each stage of the host's timeline is, as the bench prints it.
const STAGES: [(&str, &str); 11] = [
    ("http", "HTTP body read, request decoded"),
    ("account", "account: signature, limits, replay"),
    ("route", "routing: enclave, stream, forward"),
    ("enclave", "waiting for the enclave (not host)"),
    ("relay", "relay of chunk records"),
    ("receipt", "receipt verification"),
    ("queue", "ledger: writer wake-up, batch before"),
    ("commit", "ledger append: hand-over, insert"),
    ("fsync", "ledger COMMIT (WAL write + fsync)"),
    ("ack", "acknowledgement, final chunk released"),
    ("release", "final chunk forwarded, body ended"),
];

/// Concurrent streams in the throughput comparison.
const STREAMS: usize = 64;

/// Run `STREAMS` workers over `jobs` (each worker its share, one request at
/// a time) and return requests per second.
async fn direct_throughput(
    conns: &mut [(UnixStream, FrameDecoder, u32)],
    jobs: Vec<(Vec<u8>, cocoon_protocol::seal::ClientSession)>,
) -> f64 {
    let n = jobs.len();
    let mut shares: Vec<Vec<_>> = (0..conns.len()).map(|_| Vec::new()).collect();
    for (k, j) in jobs.into_iter().enumerate() {
        shares[k % conns.len()].push(j);
    }
    let start = Instant::now();
    let workers = conns
        .iter_mut()
        .zip(shares)
        .map(|((conn, dec, next), share)| async move {
            for (signed, session) in share {
                *next += 1;
                assert!(send_direct(conn, dec, &signed, session, *next).await);
            }
        });
    futures_util::future::join_all(workers).await;
    n as f64 / start.elapsed().as_secs_f64()
}

async fn host_throughput(http: &reqwest::Client, url: &str, t: &Target, jobs: Vec<ForHost>) -> f64 {
    let n = jobs.len();
    let mut shares: Vec<Vec<_>> = (0..STREAMS).map(|_| Vec::new()).collect();
    for (k, j) in jobs.into_iter().enumerate() {
        shares[k % STREAMS].push(j);
    }
    let start = Instant::now();
    let workers = shares.into_iter().map(|share| async move {
        for sealed in share {
            assert!(send_via_host(http, url, t, sealed).await);
        }
    });
    futures_util::future::join_all(workers).await;
    n as f64 / start.elapsed().as_secs_f64()
}

/// CPU time the process `pid` has used so far, all its threads (Linux
/// schedstat; zero where that cannot be read).
fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .sum()
}

/// CPU time used so far by the enclave, the host and this benchmark.
fn cpu_times(enclave: u32, host: u32) -> [Duration; 3] {
    [
        cpu_time(enclave),
        cpu_time(host),
        cpu_time(std::process::id()),
    ]
}

/// Median of `v` (sorted in place).
fn mid(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    v[v.len() / 2]
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
    .args(["--account-rps", "100000", "--account-burst", "100000"])
    .args(["--account-max-streams", &STREAMS.to_string()]);
    let mut host = Proc::spawn("cocoon-host", host);
    let line = host.wait_for("ready ", Duration::from_secs(60));
    let url = format!("http://{}{REQUESTS_PATH}", field(&line, "listen").unwrap());
    let live = format!("http://{}{LIVE_PATH}", field(&line, "listen").unwrap());
    let admin = field(&line, "admin").unwrap().to_string();
    let (enclave_pid, host_pid) = (enclave.pid(), host.pid());

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
        let (mut d, mut h, mut empty) = (Vec::new(), Vec::new(), Vec::new());
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
            // The floor of any request through the host: an empty HTTP
            // round trip on the same client.
            let start = Instant::now();
            let r = http.get(&live).send().await.expect("GET /live");
            assert!(r.status().is_success() && !r.bytes().await.unwrap().is_empty());
            empty.push(start.elapsed().as_secs_f64());
        }
        // The host's own timeline of the same requests (the last `rounds`
        // it completed are the measured ones, in the order sent).
        let all = host_timings(&http, &admin).await;
        let samples = &all[all.len().saturating_sub(m.rounds)..];
        assert_eq!(samples.len(), h.len(), "one timeline per host request");
        let ns = |s: &[(String, u64)], name: &str| {
            Duration::from_nanos(s.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v))
        };
        // Per round: the host request against the direct one of the same
        // round, less what that host request's own timeline says.
        let signed = |a: Duration, b: Duration| a.as_secs_f64() - b.as_secs_f64();
        let (mut added, mut net, mut host_work, mut outside) = (vec![], vec![], vec![], vec![]);
        for ((hi, di), s) in h.iter().zip(&d).zip(samples) {
            let fsync = ns(s, "fsync");
            let work = ns(s, "total").saturating_sub(ns(s, "enclave") + fsync);
            added.push(signed(*hi, *di));
            net.push(signed(*hi, *di) - fsync.as_secs_f64());
            host_work.push(work.as_secs_f64());
            outside.push(signed(*hi, *di) - fsync.as_secs_f64() - work.as_secs_f64());
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
        println!("  where the host's time goes (each stage of its own timelines, p50 and p90):");
        for (name, what) in STAGES {
            let (p50, p90) = stage_p50_p90(samples, name);
            println!("    {name:<8} {what:<40} {}  {}", ms(p50), ms(p90));
        }
        let sms = |v: f64| format!("{:.3} ms", v * 1e3);
        println!("  per round (its host request against its direct one), p50:");
        println!(
            "    added latency                                       {}",
            sms(mid(&mut added))
        );
        println!(
            "    host stages but the enclave wait and the fsync      {}",
            sms(mid(&mut host_work))
        );
        println!(
            "    the rest (HTTP head and client, task hops)          {}",
            sms(mid(&mut outside))
        );
        println!(
            "      (an empty HTTP round trip, GET /live:             {})",
            sms(mid(&mut empty))
        );
        let net = mid(&mut net);
        println!(
            "    added latency less that request's fsync             {} (goal <= 0.300 ms: {})",
            sms(net),
            if net <= 0.0003 { "met" } else { "NOT met" }
        );

        // Throughput: STREAMS concurrent streams direct (one enclave
        // connection each) and through the host, phases interleaved.
        // Requests are sealed before each phase, off the clock.
        let per_phase = if m.measuring { STREAMS * 8 } else { STREAMS };
        let phases = if m.measuring { 3 } else { 1 };
        let mut conns = Vec::new();
        for _ in 0..STREAMS {
            let c = UnixStream::connect(&sock).await.expect("connect enclave");
            conns.push((c, FrameDecoder::new(), 0u32));
        }
        let (mut rd, mut rh) = (Vec::new(), Vec::new());
        // CPU time per phase: enclave, host, this benchmark (the client).
        let (mut cd, mut ch) = ([Duration::ZERO; 3], [Duration::ZERO; 3]);
        let mut next = 100_000;
        for phase in 0..2 * phases {
            let direct_first = (phase / 2) % 2 == 0;
            let direct = (phase % 2 == 0) == direct_first;
            let jobs = next..next + per_phase;
            next += per_phase;
            let (before, rate) = if direct {
                let jobs = jobs.map(|i| seal_direct(&t, i)).collect();
                let before = cpu_times(enclave_pid, host_pid);
                (before, direct_throughput(&mut conns, jobs).await)
            } else {
                let jobs = jobs.map(|i| t.seal(i)).collect();
                let before = cpu_times(enclave_pid, host_pid);
                (before, host_throughput(&http, &url, &t, jobs).await)
            };
            let after = cpu_times(enclave_pid, host_pid);
            let (rates, cpu) = if direct {
                (&mut rd, &mut cd)
            } else {
                (&mut rh, &mut ch)
            };
            rates.push(rate);
            for k in 0..3 {
                cpu[k] += after[k].saturating_sub(before[k]);
            }
        }
        let (d, h) = (mid(&mut rd), mid(&mut rh));
        println!(
            "{STREAMS} concurrent streams, {per_phase} requests a phase, {phases} phases each way, interleaved (median phase):"
        );
        let per_request = |c: Duration| {
            format!(
                "{:>4.0} us",
                c.as_secs_f64() * 1e6 / (per_phase * phases) as f64
            )
        };
        let cpu = |c: &[Duration; 3]| {
            format!(
                "CPU a request: enclave {}, host {}, client {}",
                per_request(c[0]),
                per_request(c[1]),
                per_request(c[2])
            )
        };
        println!(
            "  direct to the enclave ({STREAMS} connections)  {d:>6.0} requests/s   {}",
            cpu(&cd)
        );
        println!(
            "  through cocoon-host ({STREAMS} HTTP streams)   {h:>6.0} requests/s   {}",
            cpu(&ch)
        );
        println!(
            "  host / direct throughput: {:.2}x (goal >= 0.80x: {})",
            h / d,
            if h / d >= 0.8 { "met" } else { "NOT met" }
        );
    });
    drop(host);
    drop(enclave);
}
