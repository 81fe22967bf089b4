//! Test support: a small enclave that speaks the frame protocol on a Unix
//! socket (built from cocoon-protocol and cocoon-attestation directly, so
//! these tests do not depend on the enclave crate), a raw HTTP/1.1 client,
//! and helpers to start the host and to seal and open requests.
//!
//! The test enclave can be told to misbehave ([`Behavior`]).
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cocoon_attestation::bundle::{Claims, ModelDigest};
use cocoon_host::{HostConfig, Limits, Listeners, Running};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::api::{
    ChunkRecordDecoder, EvidenceList, ACCOUNT_KEY_HEADER, ACCOUNT_SIGNATURE_HEADER,
    ACCOUNT_TIME_HEADER, EVIDENCE_DIGEST_HEADER,
};
use cocoon_protocol::frame::{self, FrameDecoder, FrameType};
use cocoon_protocol::message::{FinishReason, ResponseEvent};
use cocoon_protocol::pricing::PriceTable;
use cocoon_protocol::receipt::{verify_receipt, ReceiptSigner, UnitPrice, UsageReceipt};
use cocoon_protocol::seal::{
    open_request, seal_request, BillingMeta, ClientSession, EvidenceDigest, HpkePublicKey,
    HpkeSecretKey, SealedRequest,
};
use cocoon_protocol::settlement::Tab;
use cocoon_protocol::tabs::{ReceiptAck, TabUpdate};
use cocoon_protocol::RequestId;
use cocoon_verifier::{Policy, UnixTime};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// The model the test enclave serves.
pub const MODEL: &str = "test-model";
/// Its base price (nanoton per token).
pub const PRICE: UnitPrice = UnitPrice {
    prompt: 100,
    cached: 100,
    completion: 300,
};

/// The test enclave's measured price table.
pub fn price_table() -> PriceTable {
    PriceTable {
        models: [(MODEL.to_string(), PRICE)].into_iter().collect(),
        min_multiplier_milli: 1000,
        max_multiplier_milli: 3000,
    }
}
/// Its simulated measurement.
pub use cocoon_test_kit::simulated::{self, MEASUREMENT};

pub use cocoon_test_kit::TempDir;

/// The host's policy for the test enclave: simulated TEE, opted in by name,
/// pinned to its measurement.
pub fn simulated_policy() -> Policy {
    simulated::policy(Some(&MEASUREMENT))
}

pub fn simulated_policy_toml() -> String {
    simulated::policy_toml(Some(&MEASUREMENT))
}

/// Short timeouts for tests.
pub fn test_limits() -> Limits {
    Limits {
        queue_timeout: Duration::from_secs(2),
        first_frame_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(3),
        total_timeout: Duration::from_secs(20),
        cancel_grace: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        evidence_timeout: Duration::from_secs(2),
        reconnect_backoff_min: Duration::from_millis(20),
        reconnect_backoff_max: Duration::from_millis(200),
        drain_timeout: Duration::from_secs(10),
        account_requests_per_second: 1000.0,
        account_burst: 1000,
        ..Limits::default()
    }
}

// ---------------------------------------------------------------------------
// The test enclave.

/// How the test enclave answers requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// As the protocol says.
    Honest,
    /// Sign the receipt with a key that is not the attested one.
    ForgeReceipt,
    /// Bill one completion token more than max_tokens.
    InflateTokens,
    /// Name another request in the receipt.
    WrongRequestId,
    /// Bill another account.
    WrongAccount,
    /// Name another model.
    WrongModel,
    /// Send the final chunk without a Receipt frame.
    SkipReceipt,
    /// Sign with an enclave sequence number already used.
    ReuseEnclaveSeq(u64),
    /// Answer with an Error frame.
    ErrorFrame(String),
    /// Never answer.
    Hang,
    /// Close the connection after the first chunk.
    DropConnectionMidStream,
}

#[derive(Clone)]
struct Keys {
    hpke: HpkeSecretKey,
    receipt: ReceiptSigner,
    bundle: Vec<u8>,
    digest: EvidenceDigest,
}

fn make_keys(epoch: u64) -> Keys {
    let hpke = HpkeSecretKey::generate(&mut OsRng);
    let receipt = ReceiptSigner::generate(&mut OsRng);
    let claims = Claims {
        hpke_public_key: hpke.public_key().to_bytes().to_vec(),
        receipt_public_key: receipt.public_key_sec1(),
        image_id: "cocoon-test".into(),
        model_digests: vec![ModelDigest {
            name: MODEL.into(),
            sha256: [9; 32],
            version: None,
            tokenizer_sha256: None,
        }],
        config_digest: [3; 32],
        gpu_evidence_digest: None,
        epoch,
        issued_at: epoch,
        refresh: 0,
        client_nonce: None,
        disk_verity_root: None,
        provider_settings: None,
    };
    let claims_cbor = claims.to_cbor();
    let bundle = simulated::signed_bundle(&claims_cbor, &simulated::key());
    Keys {
        hpke,
        receipt,
        bundle,
        digest: EvidenceDigest::of_claims(&claims_cbor),
    }
}

struct EnclaveState {
    keys: Mutex<Keys>,
    epoch: AtomicU64,
    behavior: Mutex<Behavior>,
    chunks: AtomicUsize,
    chunk_delay_ms: AtomicU64,
    chunk_padding: AtomicUsize,
    seen: Mutex<HashSet<RequestId>>,
    seq: AtomicU64,
    requests: AtomicUsize,
    cancels: AtomicUsize,
    connections: AtomicUsize,
    conn_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Signed receipts not yet acknowledged: id → (account, charge).
    pending: Mutex<std::collections::HashMap<RequestId, ([u8; 32], u64)>>,
    /// Tabs per account: (count, total).
    tabs: Mutex<std::collections::HashMap<[u8; 32], (u64, u64)>>,
    /// Every frame received: "stream type payload-length".
    received: Mutex<Vec<String>>,
}

/// A test enclave listening on a Unix socket.
pub struct TestEnclave {
    pub path: PathBuf,
    state: Arc<EnclaveState>,
    accept: JoinHandle<()>,
}

impl Drop for TestEnclave {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut t) = self.state.conn_tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
    }
}

impl TestEnclave {
    /// Listen on `dir/<name>.sock`.
    pub fn start(dir: &Path, name: &str) -> TestEnclave {
        let path = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let state = Arc::new(EnclaveState {
            keys: Mutex::new(make_keys(1)),
            epoch: AtomicU64::new(1),
            behavior: Mutex::new(Behavior::Honest),
            chunks: AtomicUsize::new(3),
            chunk_delay_ms: AtomicU64::new(0),
            chunk_padding: AtomicUsize::new(0),
            seen: Mutex::new(HashSet::new()),
            seq: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            cancels: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            conn_tasks: Mutex::new(Vec::new()),
            pending: Mutex::default(),
            tabs: Mutex::default(),
            received: Mutex::default(),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let h = tokio::spawn(serve_conn(sock, st.clone()));
                st.conn_tasks.lock().unwrap().push(h);
            }
        });
        TestEnclave {
            path,
            state,
            accept,
        }
    }

    pub fn addr(&self) -> cocoon_host::EnclaveAddr {
        cocoon_host::EnclaveAddr::Unix(self.path.clone())
    }

    pub fn set_behavior(&self, b: Behavior) {
        *self.state.behavior.lock().unwrap() = b;
    }

    pub fn set_chunks(&self, n: usize, delay: Duration) {
        self.state.chunks.store(n, Ordering::SeqCst);
        self.state
            .chunk_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Pad every text chunk with this many bytes.
    pub fn set_chunk_padding(&self, bytes: usize) {
        self.state.chunk_padding.store(bytes, Ordering::SeqCst);
    }

    /// Requests that reached the enclave.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Cancel frames received.
    pub fn cancels(&self) -> usize {
        self.state.cancels.load(Ordering::SeqCst)
    }

    /// Every frame the host sent, in order: "stream type payload-length".
    pub fn received(&self) -> Vec<String> {
        self.state.received.lock().unwrap().clone()
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The current evidence digest.
    pub fn digest(&self) -> EvidenceDigest {
        self.state.keys.lock().unwrap().digest
    }

    /// The current bundle.
    pub fn bundle(&self) -> Vec<u8> {
        self.state.keys.lock().unwrap().bundle.clone()
    }

    /// The attested receipt key.
    pub fn receipt_public_key(&self) -> Vec<u8> {
        self.state.keys.lock().unwrap().receipt.public_key_sec1()
    }

    /// New keys (as after a reboot) without touching the connections.
    pub fn rotate_keys(&self) {
        let epoch = self.state.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        *self.state.keys.lock().unwrap() = make_keys(epoch);
        // New key, new tabs.
        self.state.pending.lock().unwrap().clear();
        self.state.tabs.lock().unwrap().clear();
    }

    /// A restart: every connection dropped, new keys.
    pub fn restart(&self) {
        self.rotate_keys();
        for h in self.state.conn_tasks.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

fn send(out: &mpsc::UnboundedSender<Vec<u8>>, id: u32, kind: FrameType, payload: &[u8]) {
    let _ = out.send(frame::encode(id, kind, payload).unwrap());
}

async fn serve_conn(mut sock: UnixStream, st: Arc<EnclaveState>) {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let kill = Arc::new(Notify::new());
    let cancelled: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        tokio::select! {
            r = sock.read(&mut buf) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if dec.push(&buf[..n]).is_err() {
                    return;
                }
                while let Ok(Some(f)) = dec.next_frame() {
                    st.received
                        .lock()
                        .unwrap()
                        .push(format!("{} {:?} {}", f.stream_id, f.kind, f.payload.len()));
                    match f.kind {
                        FrameType::EvidenceRequest => {
                            let bundle = st.keys.lock().unwrap().bundle.clone();
                            send(&out_tx, 0, FrameType::EvidenceResponse, &bundle);
                        }
                        FrameType::Request => {
                            tokio::spawn(handle_request(
                                f.stream_id,
                                f.payload,
                                st.clone(),
                                out_tx.clone(),
                                kill.clone(),
                                cancelled.clone(),
                            ));
                        }
                        FrameType::Cancel => {
                            st.cancels.fetch_add(1, Ordering::SeqCst);
                            cancelled.lock().unwrap().insert(f.stream_id);
                        }
                        FrameType::PriceTableRequest => {
                            send(&out_tx, 0, FrameType::PriceTable, &price_table().to_cbor());
                        }
                        FrameType::ReceiptAck => {
                            let Ok(ack) = ReceiptAck::from_bytes(&f.payload) else {
                                return;
                            };
                            let signer = st.keys.lock().unwrap().receipt.clone();
                            let mut pending = st.pending.lock().unwrap();
                            let mut tabs = st.tabs.lock().unwrap();
                            let mut named = std::collections::BTreeSet::new();
                            for (id, account) in ack.receipts {
                                named.insert(account);
                                if let Some((a, charge)) = pending.remove(&id) {
                                    let t = tabs.entry(a).or_insert((0, 0));
                                    *t = (t.0 + 1, t.1 + charge);
                                }
                            }
                            let update = TabUpdate {
                                tabs: named
                                    .into_iter()
                                    .filter_map(|a| {
                                        tabs.get(&a).map(|&(count, total)| {
                                            signer.sign_tab(&Tab { account: a, count, total })
                                        })
                                    })
                                    .collect(),
                            };
                            send(&out_tx, 0, FrameType::Tab, &update.to_bytes());
                        }
                        _ => {}
                    }
                }
            }
            Some(b) = out_rx.recv() => {
                if sock.write_all(&b).await.is_err() {
                    return;
                }
            }
            _ = kill.notified() => return,
        }
    }
}

async fn handle_request(
    id: u32,
    payload: Vec<u8>,
    st: Arc<EnclaveState>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    kill: Arc<Notify>,
    cancelled: Arc<Mutex<HashSet<u32>>>,
) {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let keys = st.keys.lock().unwrap().clone();
    let behavior = st.behavior.lock().unwrap().clone();
    // As the real enclave: the billed account must have signed it.
    let sealed = match cocoon_protocol::request::SignedRequest::authorize(&payload) {
        Ok(a) => a.sealed().clone(),
        Err(e) => return send(&out, id, FrameType::Error, e.to_string().as_bytes()),
    };
    match &behavior {
        Behavior::ErrorFrame(reason) => return send(&out, id, FrameType::Error, reason.as_bytes()),
        Behavior::Hang => return,
        _ => {}
    }
    let (meta, body, session) = match open_request(&keys.hpke, &keys.digest, &sealed) {
        Ok(x) => x,
        Err(e) => return send(&out, id, FrameType::Error, e.to_string().as_bytes()),
    };
    if !st.seen.lock().unwrap().insert(session.request_id()) {
        return send(&out, id, FrameType::Error, b"replayed request");
    }
    let request_id = session.request_id();
    let mut sealer = session.response_sealer(&mut OsRng).unwrap();
    let n = st.chunks.load(Ordering::SeqCst);
    let delay = Duration::from_millis(st.chunk_delay_ms.load(Ordering::SeqCst));
    let padding = " ".repeat(st.chunk_padding.load(Ordering::SeqCst));
    let mut produced = 0u64;
    for i in 0..n {
        if cancelled.lock().unwrap().contains(&id) {
            break;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let c = sealer
            .seal_chunk(
                &ResponseEvent::Text(format!("tok{i} {padding}")).to_cbor(),
                false,
            )
            .unwrap();
        send(&out, id, FrameType::ResponseChunk, &c);
        produced += 1;
        if behavior == Behavior::DropConnectionMidStream {
            tokio::time::sleep(Duration::from_millis(50)).await;
            kill.notify_one();
            return;
        }
    }
    let mut receipt = UsageReceipt {
        request_id,
        model: meta.model.clone(),
        prompt_tokens: body.len() as u64,
        cached_tokens: 0,
        completion_tokens: produced,
        total_tokens: body.len() as u64 + produced,
        unit_price: meta.unit_price,
        multiplier_milli: meta.multiplier_milli,
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        enclave_seq: st.seq.fetch_add(1, Ordering::SeqCst) + 1,
        client_account: meta.client_account,
    };
    match behavior {
        Behavior::InflateTokens => receipt.completion_tokens = u64::from(meta.max_tokens) + 1,
        Behavior::WrongRequestId => receipt.request_id = RequestId([0xee; 32]),
        Behavior::WrongAccount => receipt.client_account = [0xbb; 32],
        Behavior::WrongModel => receipt.model = "another-model".into(),
        Behavior::ReuseEnclaveSeq(seq) => receipt.enclave_seq = seq,
        _ => {}
    }
    receipt.total_tokens = receipt.prompt_tokens + receipt.completion_tokens;
    let signer = if behavior == Behavior::ForgeReceipt {
        ReceiptSigner::generate(&mut OsRng)
    } else {
        keys.receipt.clone()
    };
    let signed = signer.sign(&receipt).unwrap();
    let charge = u64::try_from(receipt.charge_nanoton().unwrap()).unwrap();
    st.pending
        .lock()
        .unwrap()
        .insert(receipt.request_id, (receipt.client_account, charge));
    if behavior != Behavior::SkipReceipt {
        send(&out, id, FrameType::Receipt, &signed);
    }
    let end = ResponseEvent::End {
        finish: FinishReason::Stop,
        receipt: signed,
    };
    let last = sealer.seal_chunk(&end.to_cbor(), true).unwrap();
    send(&out, id, FrameType::ResponseChunk, &last);
}

// ---------------------------------------------------------------------------
// The host.

/// A host started in this process.
pub struct TestHost {
    pub running: Option<Running>,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub ledger: PathBuf,
}

impl TestHost {
    pub async fn start(dir: &TempDir, enclaves: &[&TestEnclave], limits: Limits) -> TestHost {
        TestHost::start_with_policy(dir, enclaves, limits, simulated_policy()).await
    }

    pub async fn start_with_policy(
        dir: &TempDir,
        enclaves: &[&TestEnclave],
        limits: Limits,
        policy: Policy,
    ) -> TestHost {
        TestHost::start_with(dir, enclaves, limits, policy, None).await
    }

    /// A host that settles with `contract`.
    pub async fn start_with(
        dir: &TempDir,
        enclaves: &[&TestEnclave],
        limits: Limits,
        policy: Policy,
        settlement: Option<cocoon_protocol::settlement::ContractAddress>,
    ) -> TestHost {
        TestHost::start_clocked(
            dir,
            enclaves,
            limits,
            policy,
            settlement,
            cocoon_host::Clock::system(),
        )
        .await
    }

    /// A host that reads the time from `clock`.
    pub async fn start_clocked(
        dir: &TempDir,
        enclaves: &[&TestEnclave],
        limits: Limits,
        policy: Policy,
        settlement: Option<cocoon_protocol::settlement::ContractAddress>,
        clock: cocoon_host::Clock,
    ) -> TestHost {
        let listeners = Listeners {
            public: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let config = HostConfig {
            enclaves: enclaves.iter().map(|e| e.addr()).collect(),
            policy,
            ledger_path: dir.path().join("ledger.sqlite"),
            limits,
            settlement,
            deposits: None,
            // Never reached: the tests' enclaves are simulated.
            amd_kds_url: "http://127.0.0.1:9".into(),
            intel_pcs_url: "http://127.0.0.1:9".into(),
            admin_token: None,
            clock,
            release_manifest: None,
        };
        TestHost::start_config(listeners, config).await.unwrap()
    }

    /// A host on these listeners with this configuration.
    pub async fn start_config(
        listeners: Listeners,
        config: HostConfig,
    ) -> Result<TestHost, cocoon_host::HostError> {
        let ledger = config.ledger_path.clone();
        let running = cocoon_host::start(listeners, config).await?;
        Ok(TestHost {
            public: running.public_addr(),
            admin: running.admin_addr(),
            running: Some(running),
            ledger,
        })
    }

    pub async fn wait_ready(&self) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.running.as_ref().unwrap().wait_ready(),
        )
        .await
        .expect("no enclave became ready");
    }

    /// Drain and wait for the end.
    pub async fn stop(mut self) {
        let r = self.running.take().unwrap();
        r.drain();
        tokio::time::timeout(Duration::from_secs(30), r.join())
            .await
            .expect("drain did not finish")
            .expect("service failed");
    }

    /// The ledger export, one JSON value per line.
    pub async fn export(&self) -> Vec<serde_json::Value> {
        let r = http(self.admin, "GET", "/admin/ledger/export", &[], b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub async fn metrics(&self) -> String {
        http(self.public, "GET", "/metrics", &[], b"").await.text()
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client.

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended as its framing says (terminating chunk, or
    /// content-length reached).
    pub complete: bool,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    // `Host: localhost` unless the caller sends its own.
    let host = if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        ""
    } else {
        "Host: localhost\r\n"
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\n{host}Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    out
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let (body, complete) = if chunked {
        dechunk(rest)
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse::<usize>().unwrap());
        match len {
            Some(n) => (rest[..n.min(rest.len())].to_vec(), rest.len() >= n),
            None => (rest.to_vec(), true),
        }
    };
    HttpResponse {
        status,
        headers,
        body,
        complete,
    }
}

fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let Ok(size) = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16) else {
            return (out, false);
        };
        b = &b[eol + 2..];
        if size == 0 {
            return (out, true);
        }
        if b.len() < size + 2 {
            out.extend_from_slice(&b[..size.min(b.len())]);
            return (out, false);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// One request on a fresh connection, read to the end.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s
        .write_all(&request_bytes(method, path, headers, body))
        .await;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => panic!("HTTP response timed out"),
        }
    }
    parse_response(&raw)
}

/// Send a request and return the connection after the response headers
/// arrived (status line checked by the caller), for disconnect tests.
pub async fn http_start(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&request_bytes(method, path, headers, body))
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert!(n == 1, "connection closed before the headers");
        raw.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&raw).into_owned())
}

// ---------------------------------------------------------------------------
// The client side of a request.

/// What a client learns from verified evidence.
#[derive(Clone)]
pub struct Target {
    pub hpke: HpkePublicKey,
    pub digest: EvidenceDigest,
    pub receipt_public_key: Vec<u8>,
}

/// Fetch `/v1/evidence` and verify every bundle under the test policy.
pub async fn fetch_targets(public: SocketAddr) -> Vec<Target> {
    let r = http(public, "GET", "/v1/evidence", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/cbor"));
    EvidenceList::from_cbor(&r.body)
        .unwrap()
        .0
        .iter()
        .map(|b| {
            let v =
                cocoon_verifier::verify(b, &simulated_policy(), UnixTime(1_800_000_000)).unwrap();
            Target {
                hpke: HpkePublicKey::from_bytes(&v.claims().hpke_public_key).unwrap(),
                digest: EvidenceDigest::of_claims(v.claims_cbor()),
                receipt_public_key: v.claims().receipt_public_key.clone(),
            }
        })
        .collect()
}

pub fn new_account() -> AccountKey {
    AccountKey::generate(&mut OsRng)
}

/// Seal with explicit billing metadata.
pub fn seal_meta(
    target: &Target,
    meta: &BillingMeta,
    body: &[u8],
) -> (SealedRequest, ClientSession) {
    seal_request(&target.hpke, &target.digest, meta, body, &mut OsRng).unwrap()
}

/// Seal a chat-like body for `target` on behalf of `account`.
pub fn seal(
    target: &Target,
    account: &AccountKey,
    max_tokens: u32,
    body: &[u8],
) -> (SealedRequest, ClientSession) {
    let meta = BillingMeta {
        model: MODEL.into(),
        max_tokens,
        price_quote_id: "q-test".into(),
        unit_price: PRICE,
        multiplier_milli: 1000,
        client_account: account.id().0,
        expires_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300,
    };
    seal_request(&target.hpke, &target.digest, &meta, body, &mut OsRng).unwrap()
}

/// The headers of `POST /v1/requests`.
pub fn request_headers(
    digest: &EvidenceDigest,
    account: &AccountKey,
    sealed: &SealedRequest,
) -> Vec<(String, String)> {
    vec![
        (EVIDENCE_DIGEST_HEADER.into(), hex::encode(digest.0)),
        (
            ACCOUNT_KEY_HEADER.into(),
            hex::encode(account.public_key_sec1()),
        ),
        (
            ACCOUNT_SIGNATURE_HEADER.into(),
            hex::encode(account.sign_request(&sealed.request_id())),
        ),
        ("content-type".into(), "application/cbor".into()),
    ]
}

pub async fn post(
    public: SocketAddr,
    target: &Target,
    account: &AccountKey,
    sealed: &SealedRequest,
) -> HttpResponse {
    http(
        public,
        "POST",
        "/v1/requests",
        &request_headers(&target.digest, account, sealed),
        &sealed.to_cbor(),
    )
    .await
}

/// What a client got out of a response body.
#[derive(Debug)]
pub struct Opened {
    pub texts: Vec<String>,
    pub chunks: usize,
    /// The receipt from the final chunk, verified under the attested key.
    pub receipt: Option<UsageReceipt>,
    /// The opener's verdict at the end of the body.
    pub finished: Result<(), String>,
}

pub fn open_body(body: &[u8], session: ClientSession, receipt_pk: &[u8]) -> Opened {
    let mut dec = ChunkRecordDecoder::new();
    dec.push(body);
    let mut opener = session.response_opener();
    let mut out = Opened {
        texts: vec![],
        chunks: 0,
        receipt: None,
        finished: Ok(()),
    };
    while let Some(rec) = dec.next_record().unwrap() {
        let chunk = opener.open_chunk(&rec).unwrap();
        out.chunks += 1;
        match ResponseEvent::decode(&chunk.data, chunk.last).unwrap() {
            ResponseEvent::Text(t) => out.texts.push(t),
            ResponseEvent::End { receipt, .. } => {
                out.receipt = Some(verify_receipt(&receipt, receipt_pk).unwrap())
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    dec.finish().unwrap();
    out.finished = opener.finish().map_err(|e| e.to_string());
    out
}

/// The headers of a signed receipts query at `time`.
pub fn receipts_headers(account: &AccountKey, time: u64) -> Vec<(String, String)> {
    vec![
        (
            ACCOUNT_KEY_HEADER.into(),
            hex::encode(account.public_key_sec1()),
        ),
        (ACCOUNT_TIME_HEADER.into(), time.to_string()),
        (
            ACCOUNT_SIGNATURE_HEADER.into(),
            hex::encode(account.sign_receipts_query(time)),
        ),
    ]
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Poll `f` until it is true (or panic after `secs`).
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(tokio::time::Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
