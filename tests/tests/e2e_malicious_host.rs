//! A malicious host, end to end with real processes: `cocoon-enclave`
//! (simulated TEE) and `cocoon-host`, driven by the real client SDK.
//!
//! The host is untrusted by design, so the attacks are played by two
//! men in the middle written here:
//!
//! * [`HttpProxy`], between the client and `cocoon-host`: it flips bits in
//!   the sealed request, flips, splices, reorders, drops, duplicates and
//!   truncates response chunks, replays a request, serves another
//!   enclave's evidence, and edits the receipt list;
//! * [`FrameMitm`], between `cocoon-host` and `cocoon-enclave` (the host
//!   connects to its Unix socket as if it were the enclave): it tampers
//!   with `Request` frames, replays a request straight to the enclave, and
//!   forges, inflates, re-targets, swaps or drops the enclave's `Receipt`
//!   frame.
//!
//! Every case must be detected by the client (with the specific error) or
//! refused by the host's ledger (the request id is not billed), and at the
//! end of each test no prompt or answer text may appear in the host's log,
//! its metrics, its ledger export, the raw ledger files, the enclave's log
//! or any byte either man in the middle saw.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use ciborium::Value;
use cocoon_attestation::bundle::{Claims, EvidenceBundle};
use cocoon_attestation::cbor;
use cocoon_client::{Client, ClientError, Completed, ReceiptProblem, ResponseError, ResponsePart};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::api::{
    encode_chunk_record, ChunkRecordDecoder, EvidenceList, ReceiptList, EVIDENCE_DIGEST_HEADER,
    EVIDENCE_PATH, RECEIPTS_PATH, REQUESTS_PATH,
};
use cocoon_protocol::frame::{self, Frame, FrameDecoder, FrameType};
use cocoon_protocol::message::{ChatMessage, InferenceRequest, Role};
use cocoon_protocol::rand_core::OsRng;
use cocoon_protocol::receipt::UnitPrice;
use cocoon_protocol::receipt::{verify_receipt, ReceiptSigner, UsageReceipt, MAX_RECEIPT};
use cocoon_protocol::request::SignedRequest;
use cocoon_protocol::seal::{
    seal_request, BillingMeta, EvidenceDigest, HpkePublicKey, SealedRequest,
};
use cocoon_protocol::settlement::Tab;
use cocoon_protocol::stream::CHUNK_HEADER_LEN;
use cocoon_protocol::tabs::{ReceiptAck, TabUpdate};
use cocoon_protocol::RequestId;
use cocoon_test_kit::procs::TempDir;
use common::*;
use coset::{AsCborValue, CoseSign1};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const MODEL: &str = "cocoon-deterministic-test";
/// Words the test backend answers with (10 of them are its fixed preamble,
/// the rest depend on the prompt).
const REPLY_TOKENS: u32 = 20;
/// More than the reply, so every answer ends on its own with 20 chunks of
/// text and one final chunk.
const MAX_TOKENS: u32 = 64;
/// Stream ids the frame MITM uses for requests it injects itself, far from
/// the ids the host allocates (1, 2, 3, ...).
const INJECTED_STREAM: u32 = 0x4000_0000;
/// No account limit gets in the way of a test's burst of requests.
const LIMITS: &[&str] = &["--account-rps", "10000", "--account-burst", "10000"];
/// The host's metric of refused receipts.
const REFUSED_METRIC: &str = "cocoon_host_receipts_refused_total";

fn messages(canary: &str) -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User,
        content: format!("{canary}: only the enclave may read this sentence"),
    }]
}

/// Poll `cond` until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Plaintext search
// ---------------------------------------------------------------------------

/// Everything secret the test produced: the prompts (canaries) and the
/// answer text the client received, as byte strings to search for.
#[derive(Default)]
struct Secrets {
    needles: Vec<(String, Vec<u8>)>,
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

impl Secrets {
    /// A prompt canary: its text and its hex form.
    fn prompt(&mut self, canary: &str) {
        // The search can find it where plaintext would be: in the request
        // body the client seals.
        let body = InferenceRequest::Chat {
            messages: messages(canary),
            sampling: Default::default(),
        }
        .to_cbor();
        assert!(contains(&body, canary.as_bytes()));
        self.needles
            .push((format!("prompt {canary}"), canary.as_bytes().to_vec()));
        self.needles.push((
            format!("prompt {canary} (hex)"),
            hex::encode(canary).into_bytes(),
        ));
    }

    /// Answer text the client received: the whole of it and its
    /// prompt-dependent end (the last five words), when long enough to be
    /// distinctive.
    fn answer(&mut self, text: &str) {
        let words: Vec<&str> = text.split_whitespace().collect();
        let tail = words[words.len().saturating_sub(5)..].join(" ");
        for n in [text.trim().to_string(), tail] {
            if n.len() >= 16 && !self.needles.iter().any(|(_, b)| b == n.as_bytes()) {
                self.needles.push((format!("answer {n:?}"), n.into_bytes()));
            }
        }
    }

    fn assert_absent(&self, place: &str, hay: &[u8]) {
        for (what, needle) in &self.needles {
            assert!(
                !contains(hay, needle),
                "plaintext leaked: {what} appears in {place}"
            );
        }
    }
}

/// Every regular file under `dir` (the ledger and its WAL among them).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Search the host's log, both metrics endpoints, the ledger export, every
/// file in the test directory (raw ledger bytes included), the enclaves'
/// logs and what the men in the middle saw for every secret. `billed` is a
/// request id the ledger must hold: positive controls that show each place
/// searched is the real one.
fn assert_no_plaintext(
    secrets: &Secrets,
    dir: &TempDir,
    host: &Host,
    enclaves: &[&Enclave],
    wires: &[(&str, Vec<u8>)],
    billed: RequestId,
) {
    assert!(
        secrets.needles.len() >= 4,
        "the test produced prompts and answers to look for"
    );
    let billed = billed.to_string();

    let log = host.proc.output();
    assert!(log.contains(&billed), "the host logs request ids");
    secrets.assert_absent("the host's log", log.as_bytes());

    for (name, url) in [
        ("public /metrics", format!("{}/metrics", host.url)),
        ("admin /metrics", format!("{}/metrics", host.admin)),
    ] {
        let (status, body) = get(&url);
        assert_eq!(status, 200, "{name}");
        assert!(body.contains("cocoon_host_requests_total"), "{name}");
        secrets.assert_absent(name, body.as_bytes());
    }

    let (status, export) = get(&format!("{}/admin/ledger/export?after=0", host.admin));
    assert_eq!(status, 200);
    assert!(
        export.contains(&billed),
        "the export lists the billed request"
    );
    secrets.assert_absent("the ledger export", export.as_bytes());

    let files = files_under(dir.path());
    assert!(
        files.iter().any(|f| f.ends_with("ledger.db")),
        "the ledger file is searched: {files:?}"
    );
    let mut ledger_bytes = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("ledger.db"))
        {
            ledger_bytes.extend_from_slice(&bytes);
        }
        secrets.assert_absent(&format!("file {}", f.display()), &bytes);
    }
    assert!(
        contains(&ledger_bytes, MODEL.as_bytes()),
        "the raw ledger bytes hold what the host may see (the model name)"
    );

    for e in enclaves {
        let out = e.proc.output();
        assert!(out.contains("ready "), "the enclave's log is captured");
        secrets.assert_absent("the enclave's log", out.as_bytes());
    }
    for (name, bytes) in wires {
        assert!(
            contains(bytes, MODEL.as_bytes()),
            "{name} saw the billing metadata in clear"
        );
        secrets.assert_absent(name, bytes);
    }
}

// ---------------------------------------------------------------------------
// Asking through the SDK
// ---------------------------------------------------------------------------

/// One chat request as the client lived it.
struct Asked {
    /// The request id, once the host accepted the request.
    request_id: Option<RequestId>,
    /// Text accepted before the end (or the error).
    text: String,
    end: Result<Box<Completed>, ClientError>,
}

impl Asked {
    fn completed(&self) -> &Completed {
        match &self.end {
            Ok(c) => c,
            Err(e) => panic!("expected a completed answer, got: {e} ({e:?})"),
        }
    }

    fn err(&self) -> &ClientError {
        match &self.end {
            Ok(c) => panic!("the client accepted a tampered exchange: {c:?}"),
            Err(e) => e,
        }
    }

    fn id(&self) -> RequestId {
        self.request_id.expect("the host accepted the request")
    }
}

async fn ask(client: &Client, secrets: &mut Secrets, canary: &str) -> Asked {
    secrets.prompt(canary);
    let mut stream = match client.chat(MODEL, messages(canary), MAX_TOKENS).await {
        Ok(s) => s,
        Err(e) => {
            return Asked {
                request_id: None,
                text: String::new(),
                end: Err(e),
            }
        }
    };
    let request_id = Some(stream.request_id());
    let mut text = String::new();
    let end = loop {
        match stream.next().await {
            Ok(Some(ResponsePart::Text(t))) => text.push_str(&t),
            Ok(Some(ResponsePart::Completed(c))) => break Ok(c),
            Ok(Some(other)) => panic!("unexpected part {other:?}"),
            Ok(None) => panic!("the stream ended without its end"),
            Err(e) => break Err(ClientError::Response(e)),
        }
    };
    secrets.answer(&text);
    Asked {
        request_id,
        text,
        end,
    }
}

/// How many requests the enclave logged it refused with `error_kind`.
fn logged(enclave: &Enclave, error_kind: &str) -> usize {
    let needle = format!("error_kind=\"{error_kind}\"");
    enclave.proc.output().matches(&needle).count()
}

/// How often the ledger export lists `id`.
fn billed(host: &Host, id: RequestId) -> usize {
    let id = id.to_string();
    ledger_request_ids(&host.admin)
        .iter()
        .filter(|i| **i == id)
        .count()
}

/// The host's count of receipts refused for `reason`.
fn refused(host: &Host, reason: &str) -> u64 {
    let (_, body) = get(&format!("{}/metrics", host.admin));
    let prefix = format!("{REFUSED_METRIC}{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Receipt surgery (COSE_Sign1 ES256, see cocoon_protocol::receipt)
// ---------------------------------------------------------------------------

fn cose(receipt: &[u8]) -> CoseSign1 {
    let Value::Tag(18, inner) = cbor::decode(receipt, MAX_RECEIPT).unwrap() else {
        panic!("a receipt is a tagged COSE_Sign1")
    };
    CoseSign1::from_cbor_value(*inner).unwrap()
}

fn cose_bytes(s: CoseSign1) -> Vec<u8> {
    cbor::encode(&Value::Tag(18, Box::new(s.to_cbor_value().unwrap())))
}

fn content(receipt: &[u8]) -> UsageReceipt {
    UsageReceipt::from_cbor(cose(receipt).payload.as_deref().unwrap()).unwrap()
}

/// The same receipt with its payload replaced and the old signature kept.
fn edited(receipt: &[u8], edit: impl FnOnce(&mut UsageReceipt)) -> Vec<u8> {
    let mut r = content(receipt);
    edit(&mut r);
    let mut s = cose(receipt);
    s.payload = Some(r.to_cbor());
    cose_bytes(s)
}

fn inflated(receipt: &[u8]) -> Vec<u8> {
    edited(receipt, |r| {
        r.completion_tokens += 1000;
        r.total_tokens += 1000;
    })
}

/// The same content, validly signed by a key no evidence names.
fn forged(receipt: &[u8], signer: &ReceiptSigner) -> Vec<u8> {
    signer.sign(&content(receipt)).unwrap()
}

// ---------------------------------------------------------------------------
// The HTTP man in the middle (client ↔ cocoon-host)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum ReceiptsTamper {
    /// More tokens in the first entry's payload, signature kept.
    Inflate,
    /// An extra entry: a copy of the first, re-signed with a fresh key, the
    /// entry naming the enclave's real key.
    AddForged,
    /// An extra entry for a request id of its own, signed with a fresh key
    /// and naming that key.
    AddForgedWithItsKey,
    /// The first entry's receipt replaced by this one (another account's).
    Replace(Vec<u8>),
    /// The first entry listed twice.
    Duplicate,
    /// The first entry listed again at the end, under a new ledger number
    /// (the same request billed twice).
    Rebill,
}

#[derive(Debug, Clone)]
enum Http {
    Pass,
    /// Flip a bit in the sealed request's ciphertext.
    FlipRequestCiphertext,
    /// Flip a bit in the ciphertext of response chunk n.
    FlipChunk(usize),
    /// Response chunk n taken from the previous response.
    SpliceFromPrevious(usize),
    /// The whole previous response instead of this one.
    ReplayPreviousResponse,
    SwapChunks(usize, usize),
    DropChunk(usize),
    /// Chunk n sent twice in a row.
    DuplicateChunk(usize),
    DropLastChunk,
    /// Chunk 0 again after the last chunk.
    AppendAfterLast,
    /// Send the request to the host twice at once; answer with the one
    /// that was served.
    ReplayConcurrently,
    /// Serve only the evidence with claims digest `serve`; route requests
    /// to `route_to` (rewriting the evidence digest header).
    EvidenceOf {
        serve: [u8; 32],
        route_to: [u8; 32],
    },
    Receipts(ReceiptsTamper),
}

/// A request as sent: headers and body.
type Sent = (Vec<(String, String)>, Vec<u8>);

struct Upstream {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

struct HttpProxy {
    url: String,
    upstream: String,
    http: reqwest::Client,
    mode: Mutex<Http>,
    /// The last request forwarded to POST /v1/requests: headers and body.
    last_post: Mutex<Option<Sent>>,
    /// The chunk records of the previous 200 answer, as the host sent them.
    previous: Mutex<Vec<Vec<u8>>>,
    /// Statuses of the two concurrent sends of `ReplayConcurrently`.
    concurrent: Mutex<Vec<u16>>,
    /// Every byte the proxy relayed, both ways.
    wire: Mutex<Vec<u8>>,
    signer: ReceiptSigner,
}

impl HttpProxy {
    async fn start(upstream: &str) -> Arc<HttpProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Arc::new(HttpProxy {
            url: format!("http://{}", listener.local_addr().unwrap()),
            upstream: upstream.to_string(),
            http: reqwest::Client::new(),
            mode: Mutex::new(Http::Pass),
            last_post: Mutex::new(None),
            previous: Mutex::new(Vec::new()),
            concurrent: Mutex::new(Vec::new()),
            wire: Mutex::new(Vec::new()),
            signer: ReceiptSigner::generate(&mut OsRng),
        });
        let app = axum::Router::new()
            .fallback(http_proxy_handler)
            .with_state(proxy.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        proxy
    }

    fn set(&self, mode: Http) {
        *self.mode.lock().unwrap() = mode;
    }

    fn wire(&self) -> Vec<u8> {
        self.wire.lock().unwrap().clone()
    }

    fn saw(&self, bytes: &[u8]) {
        self.wire.lock().unwrap().extend_from_slice(bytes);
    }

    async fn forward(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Upstream {
        let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.upstream));
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.body(body).send().await.expect("the host answers");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.expect("the host's body").to_vec();
        Upstream {
            status,
            content_type,
            body,
        }
    }

    /// The attacker sends the last request again, exactly as the client
    /// sent it (headers included), straight to the host.
    async fn replay_last(&self) -> (u16, String) {
        let (headers, body) = self.last_post.lock().unwrap().clone().expect("a request");
        let up = self
            .forward(&Method::POST, REQUESTS_PATH, &headers, body)
            .await;
        (up.status, String::from_utf8_lossy(&up.body).into_owned())
    }
}

fn split_records(body: &[u8]) -> Vec<Vec<u8>> {
    let mut d = ChunkRecordDecoder::new();
    d.push(body);
    let mut out = Vec::new();
    while let Some(r) = d.next_record().unwrap() {
        out.push(r);
    }
    d.finish().unwrap();
    out
}

fn tamper_chunks(mode: &Http, records: &mut Vec<Vec<u8>>, previous: &[Vec<u8>]) {
    match mode {
        Http::FlipChunk(n) => records[*n][CHUNK_HEADER_LEN + 1] ^= 0x04,
        Http::SpliceFromPrevious(n) => records[*n] = previous[*n].clone(),
        Http::ReplayPreviousResponse => *records = previous.to_vec(),
        Http::SwapChunks(a, b) => records.swap(*a, *b),
        Http::DropChunk(n) => {
            records.remove(*n);
        }
        Http::DuplicateChunk(n) => {
            let c = records[*n].clone();
            records.insert(n + 1, c);
        }
        Http::DropLastChunk => {
            records.pop();
        }
        Http::AppendAfterLast => {
            let c = records[0].clone();
            records.push(c);
        }
        _ => {}
    }
}

fn tamper_receipts(t: &ReceiptsTamper, list: &mut ReceiptList, signer: &ReceiptSigner) {
    let first = list.0.first().expect("a receipt to tamper with").clone();
    let last_seq = list.0.last().unwrap().ledger_seq;
    match t {
        ReceiptsTamper::Inflate => list.0[0].receipt = inflated(&first.receipt),
        ReceiptsTamper::AddForged => {
            let mut e = first.clone();
            e.ledger_seq = last_seq + 1;
            e.receipt = forged(&first.receipt, signer);
            list.0.push(e);
        }
        ReceiptsTamper::AddForgedWithItsKey => {
            let mut e = first.clone();
            e.ledger_seq = last_seq + 1;
            // A request of its own (a copy of an existing one is refused as
            // a double bill before its key is even looked at).
            let mut r = content(&first.receipt);
            r.request_id.0[0] ^= 0xff;
            e.receipt = signer.sign(&r).unwrap();
            e.receipt_public_key = signer.public_key_sec1();
            list.0.push(e);
        }
        ReceiptsTamper::Replace(other) => list.0[0].receipt = other.clone(),
        ReceiptsTamper::Duplicate => list.0.insert(1, first),
        ReceiptsTamper::Rebill => {
            let mut e = first;
            e.ledger_seq = last_seq + 1;
            list.0.push(e);
        }
    }
}

async fn http_proxy_handler(
    State(p): State<Arc<HttpProxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = p.mode.lock().unwrap().clone();
    let path = uri.path().to_string();
    let pq = uri
        .path_and_query()
        .map(|x| x.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let mut fwd: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("cocoon-") || k.as_str() == "content-type")
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let mut body = body.to_vec();
    p.saw(&body);
    let is_submit = method == Method::POST && path == REQUESTS_PATH;
    if is_submit {
        match &mode {
            Http::FlipRequestCiphertext => {
                let mut s = SealedRequest::from_cbor(&body).unwrap();
                let i = s.ciphertext.len() / 2;
                s.ciphertext[i] ^= 0x01;
                body = s.to_cbor();
            }
            Http::EvidenceOf { route_to, .. } => {
                for (k, v) in fwd.iter_mut() {
                    if k == EVIDENCE_DIGEST_HEADER {
                        *v = hex::encode(route_to);
                    }
                }
            }
            _ => {}
        }
        *p.last_post.lock().unwrap() = Some((fwd.clone(), body.clone()));
    }
    let mut up = if is_submit && matches!(mode, Http::ReplayConcurrently) {
        let (a, b) = tokio::join!(
            p.forward(&method, &pq, &fwd, body.clone()),
            p.forward(&method, &pq, &fwd, body)
        );
        *p.concurrent.lock().unwrap() = vec![a.status, b.status];
        if a.status == 200 {
            a
        } else {
            b
        }
    } else {
        p.forward(&method, &pq, &fwd, body).await
    };
    p.saw(&up.body);
    if is_submit && up.status == 200 {
        let mut records = split_records(&up.body);
        let genuine = records.clone();
        let previous = std::mem::replace(&mut *p.previous.lock().unwrap(), genuine);
        tamper_chunks(&mode, &mut records, &previous);
        up.body.clear();
        for r in &records {
            encode_chunk_record(r, &mut up.body).unwrap();
        }
    }
    if path == EVIDENCE_PATH && up.status == 200 {
        if let Http::EvidenceOf { serve, .. } = &mode {
            let list = EvidenceList::from_cbor(&up.body).unwrap();
            let only = list
                .0
                .into_iter()
                .filter(|b| {
                    let bundle = EvidenceBundle::from_cbor(b).unwrap();
                    EvidenceDigest::of_bundle(&bundle).0 == *serve
                })
                .collect::<Vec<_>>();
            assert_eq!(only.len(), 1, "the host lists the enclave to swap in");
            up.body = EvidenceList(only).to_cbor();
        }
    }
    if path == RECEIPTS_PATH && up.status == 200 {
        if let Http::Receipts(t) = &mode {
            let mut list = ReceiptList::from_cbor(&up.body).unwrap();
            tamper_receipts(t, &mut list, &p.signer);
            up.body = list.to_cbor();
        }
    }
    let mut r = Response::builder().status(StatusCode::from_u16(up.status).unwrap());
    if let Some(ct) = up.content_type {
        r = r.header("content-type", ct);
    }
    r.body(Body::from(up.body)).unwrap()
}

// ---------------------------------------------------------------------------
// The frame man in the middle (cocoon-host ↔ cocoon-enclave)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frames {
    Pass,
    /// Flip a bit in a `Request` frame's ciphertext.
    FlipRequestCiphertext,
    /// Raise `max_tokens` in a `Request` frame's billing metadata.
    RaiseMaxTokens,
    /// Re-sign the enclave's receipt with a fresh key.
    ForgeReceipt,
    /// More tokens in the receipt's payload, signature kept.
    InflateReceipt,
    /// Another request id in the receipt's payload, signature kept.
    EditReceiptRequestId,
    /// Send the first genuine receipt seen (another request's) instead.
    ReplayOldReceipt,
    /// Do not pass the `Receipt` frame on.
    DropReceipt,
}

#[derive(Default)]
struct MitmState {
    /// `Request` payloads as the host sent them.
    requests: Vec<Vec<u8>>,
    /// Request ids of the payloads actually sent to the enclave after a
    /// tamper.
    tampered_ids: Vec<RequestId>,
    /// Genuine receipts, as the enclave sent them.
    receipts: Vec<Vec<u8>>,
    /// Frames the enclave answered on injected streams (not passed on).
    injected: HashMap<u32, Vec<Frame>>,
    /// The writer towards the enclave of the newest connection.
    to_enclave: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// The newest evidence bundle the enclave sent.
    evidence: Option<Vec<u8>>,
    /// `Tab` frame payloads the enclave sent, in order.
    tabs: Vec<Vec<u8>>,
    wire: Vec<u8>,
}

struct FrameMitm {
    socket: PathBuf,
    enclave: PathBuf,
    mode: Mutex<Frames>,
    state: Mutex<MitmState>,
    signer: ReceiptSigner,
}

impl FrameMitm {
    async fn start(enclave: &Path, socket: PathBuf) -> Arc<FrameMitm> {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let mitm = Arc::new(FrameMitm {
            socket,
            enclave: enclave.to_path_buf(),
            mode: Mutex::new(Frames::Pass),
            state: Mutex::new(MitmState::default()),
            signer: ReceiptSigner::generate(&mut OsRng),
        });
        let m = mitm.clone();
        tokio::spawn(async move {
            while let Ok((host, _)) = listener.accept().await {
                tokio::spawn(m.clone().relay(host));
            }
        });
        mitm
    }

    fn set(&self, mode: Frames) {
        *self.mode.lock().unwrap() = mode;
    }

    fn state<T>(&self, f: impl FnOnce(&mut MitmState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    async fn relay(self: Arc<Self>, host: tokio::net::UnixStream) {
        let Ok(enclave) = tokio::net::UnixStream::connect(&self.enclave).await else {
            return;
        };
        let (host_rd, host_wr) = host.into_split();
        let (encl_rd, encl_wr) = enclave.into_split();
        let (to_enclave, to_enclave_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (to_host, to_host_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        self.state(|s| s.to_enclave = Some(to_enclave.clone()));
        let up = {
            let m = self.clone();
            frames_from(host_rd, move |f| m.host_to_enclave(f, &to_enclave))
        };
        let down = {
            let m = self.clone();
            frames_from(encl_rd, move |f| m.enclave_to_host(f, &to_host))
        };
        // Any side ending ends the relay; dropping the halves closes both.
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = write_all_from(encl_wr, to_enclave_rx) => {}
            _ = write_all_from(host_wr, to_host_rx) => {}
        }
    }

    fn host_to_enclave(&self, f: Frame, to_enclave: &mpsc::UnboundedSender<Vec<u8>>) {
        let mut payload = f.payload;
        if f.kind == FrameType::Request {
            let mode = *self.mode.lock().unwrap();
            let original = payload.clone();
            match mode {
                Frames::FlipRequestCiphertext => {
                    let mut signed = SignedRequest::from_cbor(&payload).unwrap();
                    let mut s = SealedRequest::from_cbor(&signed.sealed).unwrap();
                    s.ciphertext[0] ^= 0x80;
                    signed.sealed = s.to_cbor();
                    payload = signed.to_cbor();
                }
                Frames::RaiseMaxTokens => {
                    let mut signed = SignedRequest::from_cbor(&payload).unwrap();
                    let mut s = SealedRequest::from_cbor(&signed.sealed).unwrap();
                    let mut meta = BillingMeta::from_cbor(&s.meta_cbor).unwrap();
                    meta.max_tokens += 10_000;
                    s.meta_cbor = meta.to_cbor();
                    signed.sealed = s.to_cbor();
                    payload = signed.to_cbor();
                }
                _ => {}
            }
            self.state(|s| {
                s.requests.push(original.clone());
                if payload != original {
                    s.tampered_ids.push(request_id_of(&payload));
                }
            });
        }
        self.state(|s| s.wire.extend_from_slice(&payload));
        let _ = to_enclave.send(frame::encode(f.stream_id, f.kind, &payload).unwrap());
    }

    fn enclave_to_host(&self, f: Frame, to_host: &mpsc::UnboundedSender<Vec<u8>>) {
        self.state(|s| {
            s.wire.extend_from_slice(&f.payload);
            match f.kind {
                FrameType::EvidenceResponse => s.evidence = Some(f.payload.clone()),
                FrameType::Tab => s.tabs.push(f.payload.clone()),
                _ => {}
            }
        });
        if f.stream_id >= INJECTED_STREAM {
            self.state(|s| s.injected.entry(f.stream_id).or_default().push(f));
            return;
        }
        let mut payload = f.payload;
        if f.kind == FrameType::Receipt {
            let genuine = payload.clone();
            let first = self.state(|s| {
                s.receipts.push(genuine.clone());
                s.receipts[0].clone()
            });
            match *self.mode.lock().unwrap() {
                Frames::ForgeReceipt => payload = forged(&genuine, &self.signer),
                Frames::InflateReceipt => payload = inflated(&genuine),
                Frames::EditReceiptRequestId => {
                    payload = edited(&genuine, |r| r.request_id.0[0] ^= 0x01)
                }
                Frames::ReplayOldReceipt => {
                    assert_ne!(first, genuine, "an older receipt to replay");
                    payload = first;
                }
                Frames::DropReceipt => return,
                _ => {}
            }
        }
        let _ = to_host.send(frame::encode(f.stream_id, f.kind, &payload).unwrap());
    }

    /// Acknowledge receipts to the enclave as if they were committed, and
    /// return the enclave's signed tab of `account` from its answer.
    async fn acknowledge(&self, ids: &[RequestId], account: [u8; 32]) -> Tab {
        let tx = self.state(|s| s.to_enclave.clone()).expect("a connection");
        let before = self.state(|s| s.tabs.len());
        let ack = ReceiptAck {
            receipts: ids.iter().map(|id| (*id, account)).collect(),
        };
        tx.send(frame::encode(0, FrameType::ReceiptAck, &ack.to_bytes()).unwrap())
            .unwrap();
        let key = self.receipt_key();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answers = self.state(|s| s.tabs[before..].to_vec());
            for a in answers {
                let update = TabUpdate::from_bytes(&a).unwrap();
                if let Some(t) = update.tabs.iter().find(|t| t.tab.account == account) {
                    t.tab
                        .verify(&t.signature, &key)
                        .expect("signed by the enclave");
                    return t.tab;
                }
            }
            assert!(Instant::now() < deadline, "no tab update for the account");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The enclave's claims, from the evidence it sent.
    fn claims(&self) -> (Claims, EvidenceDigest) {
        let bundle = self.state(|s| s.evidence.clone()).expect("evidence seen");
        let bundle = EvidenceBundle::from_cbor(&bundle).unwrap();
        (
            Claims::from_cbor(&bundle.claims_cbor).unwrap(),
            EvidenceDigest::of_bundle(&bundle),
        )
    }

    fn receipt_key(&self) -> Vec<u8> {
        self.claims().0.receipt_public_key
    }

    /// What a host can make with everything it holds: a request sealed to
    /// the enclave's public key with billing metadata of its choosing,
    /// `Request` payload signed by `signer`'s key.
    fn host_sealed(&self, meta: &BillingMeta, signer: &AccountKey, text: &str) -> SignedRequest {
        let (claims, digest) = self.claims();
        let hpke = HpkePublicKey::from_bytes(&claims.hpke_public_key).unwrap();
        let body = InferenceRequest::Chat {
            messages: messages(text),
            sampling: Default::default(),
        }
        .to_cbor();
        let (sealed, _) = seal_request(&hpke, &digest, meta, &body, &mut OsRng).unwrap();
        SignedRequest {
            evidence: digest.0,
            account_key: signer.public_key_sec1(),
            signature: signer.sign_request(&sealed.request_id()),
            sealed: sealed.to_cbor(),
        }
    }

    /// Send `payload` as a `Request` on an injected stream, straight to the
    /// enclave, and wait for the enclave to end that stream.
    async fn inject_request(&self, stream_id: u32, payload: &[u8]) -> Vec<Frame> {
        let tx = self.state(|s| s.to_enclave.clone()).expect("a connection");
        tx.send(frame::encode(stream_id, FrameType::Request, payload).unwrap())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let frames = self.state(|s| s.injected.get(&stream_id).cloned().unwrap_or_default());
            let ended = frames.iter().any(|f| {
                f.kind == FrameType::Error
                    || (f.kind == FrameType::ResponseChunk
                        && f.payload.get(CHUNK_HEADER_LEN - 1) == Some(&1))
            });
            if ended {
                // Anything else the enclave sends on it comes right after.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return self.state(|s| s.injected[&stream_id].clone());
            }
            assert!(
                Instant::now() < deadline,
                "the enclave did not answer the injected request: {frames:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The request id of a `Request` frame's payload (a signed request).
fn request_id_of(payload: &[u8]) -> RequestId {
    let signed = SignedRequest::from_cbor(payload).unwrap();
    RequestId(Sha256::digest(&signed.sealed).into())
}

/// Read frames from `rd` and hand each to `on_frame`, until EOF or an error.
async fn frames_from(mut rd: tokio::net::unix::OwnedReadHalf, mut on_frame: impl FnMut(Frame)) {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if dec.push(&buf[..n]).is_err() {
            return;
        }
        while let Ok(Some(f)) = dec.next_frame() {
            on_frame(f);
        }
    }
}

async fn write_all_from(
    mut wr: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(b) = rx.recv().await {
        if wr.write_all(&b).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// The host (as an HTTP man in the middle) tampers with the request, the
/// response stream, replays, and the receipt list: the client detects every
/// case by its specific error, and the ledger bills a replay once.
#[test]
fn tampering_between_client_and_host_is_detected_by_the_client() {
    let dir = TempDir::new("e2e-mal-http");
    let enclave = start_enclave(&dir, "enclave", REPLY_TOKENS);
    let host = start_host(&dir, &[&enclave.socket], LIMITS);
    let rt = rt();
    let proxy = rt.block_on(HttpProxy::start(&host.url));
    let client = Client::new(&proxy.url, simulated_policy(), account());
    let mut secrets = Secrets::default();

    let control = rt.block_on(async {
        // The proxy is transparent until told otherwise.
        let control = ask(&client, &mut secrets, "PLAINTEXT-CANARY-1").await;
        let done = control.completed();
        assert_eq!(done.usage.completion_tokens, u64::from(REPLY_TOKENS));
        assert_eq!(control.text.split_whitespace().count(), REPLY_TOKENS as usize);
        assert_eq!(billed(&host, control.id()), 1);

        // (g) Replay after completion: the host refuses it, bills it once.
        let (status, reason) = proxy.replay_last().await;
        assert_eq!(status, 409, "{reason}");
        assert!(reason.contains("replayed request"), "{reason}");
        assert_eq!(billed(&host, control.id()), 1);

        // (g') Replay at the same moment as the original: one is served,
        // the other refused; billed once; the client is unaffected.
        proxy.set(Http::ReplayConcurrently);
        let a = ask(&client, &mut secrets, "PLAINTEXT-CANARY-2").await;
        a.completed();
        let mut statuses = proxy.concurrent.lock().unwrap().clone();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409]);
        assert_eq!(billed(&host, a.id()), 1);

        // (a) A bit flipped in the request ciphertext changes the request
        // id, which the account signed: the host refuses it, nothing is
        // billed. (Past the host, the enclave refuses it: see the frame
        // test.)
        let ledger_before = ledger_request_ids(&host.admin);
        proxy.set(Http::FlipRequestCiphertext);
        let a = ask(&client, &mut secrets, "PLAINTEXT-CANARY-3").await;
        match a.err() {
            ClientError::Status { status: 401, reason } => {
                assert!(reason.contains("signature"), "{reason}")
            }
            e => panic!("expected 401, got {e:?}"),
        }
        assert_eq!(ledger_request_ids(&host.admin), ledger_before);

        // (b)-(f) The response stream. The honest host behind the proxy
        // billed each request; the client refuses every altered answer.
        type Check = fn(&ResponseError) -> bool;
        let cases: Vec<(Http, Check)> = vec![
            (Http::FlipChunk(1), |e| {
                matches!(e, ResponseError::Tampered { seq: 1 })
            }),
            (Http::SpliceFromPrevious(2), |e| {
                matches!(e, ResponseError::Tampered { seq: 2 })
            }),
            (Http::ReplayPreviousResponse, |e| {
                matches!(e, ResponseError::Tampered { seq: 0 })
            }),
            (Http::SwapChunks(1, 2), |e| {
                matches!(e, ResponseError::Dropped { expected: 1, got: 2 })
            }),
            (Http::DropChunk(3), |e| {
                matches!(e, ResponseError::Dropped { expected: 3, got: 4 })
            }),
            (Http::DuplicateChunk(2), |e| {
                matches!(e, ResponseError::Replayed { expected: 3, got: 2 })
            }),
            (Http::DropLastChunk, |e| {
                matches!(e, ResponseError::Truncated { received } if *received == u64::from(REPLY_TOKENS))
            }),
            (Http::AppendAfterLast, |e| {
                matches!(e, ResponseError::AfterLast)
            }),
        ];
        for (i, (mode, check)) in cases.into_iter().enumerate() {
            proxy.set(mode.clone());
            let a = ask(&client, &mut secrets, &format!("PLAINTEXT-CANARY-{}", 10 + i)).await;
            match a.err() {
                ClientError::Response(e) => assert!(check(e), "{mode:?}: wrong detection: {e:?}"),
                e => panic!("{mode:?}: expected a response error, got {e:?}"),
            }
            assert_eq!(billed(&host, a.id()), 1, "{mode:?}");
        }
        proxy.set(Http::Pass);
        control
    });

    // (i) The receipt list.
    rt.block_on(async {
        let genuine = client.receipts(0, 1000).await.expect("receipts");
        // The control, the concurrent replay and the eight response cases.
        assert_eq!(genuine.len(), 10);
        assert!(genuine.iter().all(|r| r.key_in_current_evidence));

        proxy.set(Http::Receipts(ReceiptsTamper::Inflate));
        match client.receipts(0, 1000).await {
            Err(ClientError::BadLedgerReceipt {
                ledger_seq,
                problem: ReceiptProblem::BadSignature,
            }) => assert_eq!(ledger_seq, genuine[0].ledger_seq),
            other => panic!("inflated receipt: {other:?}"),
        }

        proxy.set(Http::Receipts(ReceiptsTamper::AddForged));
        match client.receipts(0, 1000).await {
            Err(ClientError::BadLedgerReceipt {
                ledger_seq,
                problem: ReceiptProblem::BadSignature,
            }) => assert!(ledger_seq > genuine.last().unwrap().ledger_seq),
            other => panic!("forged receipt: {other:?}"),
        }

        proxy.set(Http::Receipts(ReceiptsTamper::Duplicate));
        match client.receipts(0, 1000).await {
            Err(ClientError::MalformedReceipts(m)) => assert!(m.contains("is not after"), "{m}"),
            other => panic!("duplicated entry: {other:?}"),
        }

        // Another account's genuine receipt, listed as this account's.
        proxy.set(Http::Pass);
        let other = Client::new(&proxy.url, simulated_policy(), account());
        let theirs = ask(&other, &mut secrets, "PLAINTEXT-CANARY-4").await;
        let theirs = theirs.completed().receipt_bytes.clone();
        proxy.set(Http::Receipts(ReceiptsTamper::Replace(theirs)));
        match client.receipts(0, 1000).await {
            Err(ClientError::BadLedgerReceipt {
                problem: ReceiptProblem::WrongAccount { .. },
                ..
            }) => {}
            other => panic!("another account's receipt: {other:?}"),
        }

        // A forgery under a key the host made up verifies with that key:
        // the SDK accepts the entry but flags that no verified evidence
        // names the key, and it does not verify under the attested one.
        proxy.set(Http::Receipts(ReceiptsTamper::AddForgedWithItsKey));
        let listed = client.receipts(0, 1000).await.expect("receipts");
        let (forgery, rest) = listed.split_last().unwrap();
        assert_eq!(rest.len(), genuine.len());
        assert!(rest.iter().all(|r| r.key_in_current_evidence));
        assert!(!forgery.key_in_current_evidence, "{forgery:?}");
        let attested = control.completed();
        let provider = client.verified().await.unwrap();
        let key = provider.enclaves()[0].receipt_public_key();
        assert!(verify_receipt(&attested.receipt_bytes, key).is_ok());
        assert!(verify_receipt(&forgery.receipt_bytes, key).is_err());
        proxy.set(Http::Pass);
    });

    assert_no_plaintext(
        &secrets,
        &dir,
        &host,
        &[&enclave],
        &[("the HTTP man in the middle", proxy.wire())],
        control.id(),
    );
}

/// The host serves evidence of enclave B but routes the request to enclave
/// A: the client sealed to B's key and B's claims, so A cannot open it and
/// nothing is billed.
#[test]
fn evidence_swapped_in_from_another_enclave_opens_nowhere() {
    let dir = TempDir::new("e2e-mal-evidence");
    let a = start_enclave(&dir, "enclave-a", REPLY_TOKENS);
    let b = start_enclave(&dir, "enclave-b", REPLY_TOKENS);
    assert_ne!(a.evidence_digest, b.evidence_digest);
    let host = start_host(&dir, &[&a.socket, &b.socket], LIMITS);
    assert!(
        eventually(Duration::from_secs(30), || {
            let (_, m) = get(&format!("{}/metrics", host.admin));
            m.lines()
                .filter(|l| l.starts_with("cocoon_host_enclave_verified{") && l.ends_with(" 1"))
                .count()
                == 2
        }),
        "both enclaves verified by the host"
    );
    let digest = |h: &str| -> [u8; 32] { hex::decode(h).unwrap().try_into().unwrap() };
    let (da, db) = (digest(&a.evidence_digest), digest(&b.evidence_digest));
    let rt = rt();
    let proxy = rt.block_on(HttpProxy::start(&host.url));
    let client = Client::new(&proxy.url, simulated_policy(), account());
    let mut secrets = Secrets::default();

    let control = rt.block_on(async {
        // Control: only B's evidence, honest routing: served by B.
        proxy.set(Http::EvidenceOf {
            serve: db,
            route_to: db,
        });
        let provider = client.verify().await.expect("B's evidence verifies");
        assert_eq!(provider.enclaves().len(), 1);
        assert_eq!(provider.enclaves()[0].evidence_digest().0, db);
        let control = ask(&client, &mut secrets, "PLAINTEXT-CANARY-20").await;
        assert_eq!(control.completed().evidence_digest.0, db);

        // The swap: B's evidence, the request routed to A.
        proxy.set(Http::EvidenceOf {
            serve: db,
            route_to: da,
        });
        let before = ledger_request_ids(&host.admin);
        let swapped = ask(&client, &mut secrets, "PLAINTEXT-CANARY-21").await;
        match swapped.err() {
            ClientError::Status {
                status: 502,
                reason,
            } => assert!(
                reason.contains("not sealed to this enclave")
                    && reason.contains(&a.evidence_digest),
                "{reason}"
            ),
            e => panic!("expected 502 from enclave A's refusal, got {e:?}"),
        }
        assert_eq!(ledger_request_ids(&host.admin), before, "nothing billed");
        control
    });
    assert!(
        eventually(Duration::from_secs(5), || logged(&a, "open_failed") == 1),
        "enclave A refused to open the request: {}",
        a.proc.output()
    );
    assert_eq!(logged(&b, "open_failed"), 0);
    assert_no_plaintext(
        &secrets,
        &dir,
        &host,
        &[&a, &b],
        &[("the HTTP man in the middle", proxy.wire())],
        control.id(),
    );
}

/// A man in the middle between the host and the enclave (where a
/// malicious host's own code sits) tampers with requests, replays one to
/// the enclave, and forges, inflates, re-targets, swaps or drops receipts:
/// the enclave refuses what it did not get from the client, the host's
/// relay refuses every receipt the enclave did not sign for this request
/// (the ledger does not hold it), and the client gets no completed answer.
#[test]
fn a_man_in_the_middle_at_the_enclave_cannot_bill_or_read() {
    let dir = TempDir::new("e2e-mal-frames");
    let enclave = start_enclave(&dir, "enclave", REPLY_TOKENS);
    let rt = rt();
    let mitm = rt.block_on(FrameMitm::start(
        &enclave.socket,
        dir.path().join("mitm.sock"),
    ));
    // The host takes the man in the middle for the enclave: it relays the
    // evidence unchanged.
    let host = start_host(&dir, &[&mitm.socket], LIMITS);
    let client = Client::new(&host.url, simulated_policy(), account());
    let mut secrets = Secrets::default();

    let control = rt.block_on(async {
        let control = ask(&client, &mut secrets, "PLAINTEXT-CANARY-30").await;
        assert_eq!(
            control.completed().usage.completion_tokens,
            u64::from(REPLY_TOKENS)
        );
        assert_eq!(billed(&host, control.id()), 1);
        control
    });

    // (a) The request altered on its way to the enclave: the account's
    // signature no longer covers it, so the enclave refuses it before
    // opening it, the host answers 502, nothing is billed.
    for (i, mode) in [Frames::FlipRequestCiphertext, Frames::RaiseMaxTokens]
        .into_iter()
        .enumerate()
    {
        let before = ledger_request_ids(&host.admin);
        mitm.set(mode);
        let a = rt.block_on(ask(
            &client,
            &mut secrets,
            &format!("PLAINTEXT-CANARY-{}", 31 + i),
        ));
        mitm.set(Frames::Pass);
        match a.err() {
            ClientError::Status {
                status: 502,
                reason,
            } => {
                assert!(
                    reason.contains("not authorized by the account it bills"),
                    "{mode:?}: {reason}"
                )
            }
            e => panic!("{mode:?}: expected 502, got {e:?}"),
        }
        let after = ledger_request_ids(&host.admin);
        assert_eq!(after, before, "{mode:?}: nothing billed");
        let tampered = mitm.state(|s| *s.tampered_ids.last().unwrap());
        assert!(!after.contains(&tampered.to_string()));
    }

    // (g) The first request replayed straight to the enclave on a stream of
    // the attacker's: refused by the enclave's replay window, no answer,
    // no receipt.
    let first = mitm.state(|s| s.requests[0].clone());
    assert_eq!(request_id_of(&first), control.id());
    let answer = rt.block_on(mitm.inject_request(INJECTED_STREAM + 1, &first));
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0].kind, FrameType::Error);
    let reason = String::from_utf8_lossy(&answer[0].payload);
    assert!(reason.contains("replayed request"), "{reason}");
    assert_eq!(billed(&host, control.id()), 1);
    assert!(
        eventually(Duration::from_secs(5), || logged(&enclave, "account_auth")
            == 2
            && logged(&enclave, "replay") == 1),
        "the enclave logs the two altered requests and the replay it refused: {}",
        enclave.proc.output()
    );

    // Receipts: forged, inflated, re-targeted, an old one, none.
    let cases = [
        (Frames::ForgeReceipt, "bad_signature"),
        (Frames::InflateReceipt, "bad_signature"),
        (Frames::EditReceiptRequestId, "bad_signature"),
        (Frames::ReplayOldReceipt, "wrong_request"),
        (Frames::DropReceipt, "missing"),
    ];
    for (i, (mode, label)) in cases.into_iter().enumerate() {
        let refused_before = refused(&host, label);
        mitm.set(mode);
        let a = rt.block_on(ask(
            &client,
            &mut secrets,
            &format!("PLAINTEXT-CANARY-{}", 40 + i),
        ));
        mitm.set(Frames::Pass);
        match a.err() {
            ClientError::Response(ResponseError::Truncated { received }) => assert_eq!(
                *received,
                u64::from(REPLY_TOKENS),
                "{mode:?}: all text, no final chunk"
            ),
            e => panic!("{mode:?}: expected a truncated stream, got {e:?}"),
        }
        assert_eq!(a.text.split_whitespace().count(), REPLY_TOKENS as usize);
        let id = a.id();
        assert_eq!(billed(&host, id), 0, "{mode:?}: the ledger refused it");
        assert_eq!(refused(&host, label), refused_before + 1, "{mode:?}");
        let id = id.to_string();
        assert!(
            eventually(Duration::from_secs(5), || host
                .proc
                .output()
                .lines()
                .any(|l| l.contains("receipt refused") && l.contains(&id))),
            "{mode:?}: the host logs the refusal"
        );
    }

    // The path still works, and the ledger is sound.
    let after = rt.block_on(ask(&client, &mut secrets, "PLAINTEXT-CANARY-50"));
    assert_eq!(billed(&host, after.completed().request_id), 1);
    let (status, check) = get(&format!("{}/admin/ledger/check", host.admin));
    assert_eq!(status, 200, "{check}");

    let wire = mitm.state(|s| s.wire.clone());
    assert_no_plaintext(
        &secrets,
        &dir,
        &host,
        &[&enclave],
        &[("the frame man in the middle", wire)],
        control.id(),
    );
}

/// A receipt list that bills one request twice (the same genuine receipt
/// under a second ledger number) must not pass the SDK's check: today
/// `Client::receipts` verifies each entry alone and returns both.
#[test]
fn a_receipt_listed_twice_is_refused_by_the_client() {
    let dir = TempDir::new("e2e-mal-rebill");
    let enclave = start_enclave(&dir, "enclave", REPLY_TOKENS);
    let host = start_host(&dir, &[&enclave.socket], LIMITS);
    let rt = rt();
    let proxy = rt.block_on(HttpProxy::start(&host.url));
    let client = Client::new(&proxy.url, simulated_policy(), account());
    let mut secrets = Secrets::default();
    rt.block_on(async {
        ask(&client, &mut secrets, "PLAINTEXT-CANARY-60")
            .await
            .completed();
        assert_eq!(client.receipts(0, 1000).await.unwrap().len(), 1);
        proxy.set(Http::Receipts(ReceiptsTamper::Rebill));
        let listed = client.receipts(0, 1000).await;
        assert!(
            listed.is_err(),
            "one request billed twice was accepted: {:?}",
            listed.map(|v| v
                .iter()
                .map(|r| (r.ledger_seq, r.receipt.request_id, r.receipt.enclave_seq))
                .collect::<Vec<_>>())
        );
    });
}

/// Prices of the settling enclave in the billing tests (nanoton per token)
/// and its multiplier bounds.
const PRICED_ENCLAVE: &str = "image_id = \"cocoon-dev-unmeasured\"\ntest_backend_reply_tokens = 20\nmax_concurrent = 64\n[pricing]\nmin_multiplier_milli = 1000\nmax_multiplier_milli = 2500\n[prices.\"cocoon-deterministic-test\"]\nprompt = 1000\ncached = 250\ncompletion = 3000\n";

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Billing metadata at the dearest prices the enclave allows, for
/// `account`, expiring in five minutes.
fn dearest_meta(account: [u8; 32], max_tokens: u32) -> BillingMeta {
    let base = UnitPrice {
        prompt: 1000,
        cached: 250,
        completion: 3000,
    };
    BillingMeta {
        model: MODEL.into(),
        max_tokens,
        price_quote_id: "host-made".into(),
        unit_price: base.scaled(2500).unwrap(),
        multiplier_milli: 2500,
        client_account: account,
        expires_at: unix_secs() + 300,
    }
}

/// Frames the enclave answered an injected request with: exactly one
/// `Error`, whose text is returned.
fn refusal_text(answer: &[Frame]) -> String {
    assert_eq!(
        answer.len(),
        1,
        "one Error frame and nothing else: {answer:?}"
    );
    assert_eq!(answer[0].kind, FrameType::Error, "{answer:?}");
    String::from_utf8_lossy(&answer[0].payload).into_owned()
}

/// The host holds the enclave's public keys, the victim's authorization of
/// that enclave, every frame of the victim's genuine request and an account
/// key of its own. It seals requests naming the victim's account at the
/// dearest allowed prices and injects them on its own streams: signed with
/// its own key, with the victim's public key and its own signature, with
/// the victim's genuine signature moved over, and the victim's genuine
/// request once more. The enclave refuses every one before running or
/// signing anything; the victim's tab does not move; `settle` claims
/// exactly the genuine request; the victim's statement is clean.
#[test]
fn host_cannot_bill_an_account_that_did_not_sign() {
    let dir = TempDir::new("e2e-mal-bill");
    let enclave = start_enclave_with(&dir, "enclave", PRICED_ENCLAVE);
    let rt = rt();
    let mitm = rt.block_on(FrameMitm::start(
        &enclave.socket,
        dir.path().join("mitm.sock"),
    ));
    let mut limits = LIMITS.to_vec();
    limits.extend(["--settlement-contract", CONTRACT, "--no-deposit-check"]);
    let host = start_host(&dir, &[&mitm.socket], &limits);
    let victim_key_file = dir.path().join("victim.key");
    let (victim, _) = cocoon_client::load_or_create_account_key(&victim_key_file).unwrap();
    let client = Client::new(&host.url, simulated_policy(), victim.clone());
    let attacker = AccountKey::generate(&mut OsRng);
    let mut secrets = Secrets::default();

    // One genuine request: the victim signs an authorization of this
    // enclave's receipt key (the host stores it) and pays for one answer.
    let genuine = rt.block_on(ask(&client, &mut secrets, "PLAINTEXT-CANARY-60"));
    let paid = genuine.completed().receipt.charge_nanoton().unwrap();
    assert!(paid > 0);
    let genuine_payload = mitm.state(|s| s.requests[0].clone());
    let genuine_signed = SignedRequest::from_cbor(&genuine_payload).unwrap();
    let victim_id = victim.id().0;
    let tab = rt.block_on(mitm.acknowledge(&[genuine.id()], victim_id));
    assert_eq!(
        (tab.count, u128::from(tab.total)),
        (1, paid),
        "the genuine request, once"
    );

    let meta = dearest_meta(victim_id, 100_000);
    // (1) Sealed and signed by the host's own account, naming the victim.
    let own = mitm.host_sealed(&meta, &attacker, "PLAINTEXT-CANARY-61");
    // (2) The victim's public key presented with the host's signature.
    let mut with_victim_key = mitm.host_sealed(&meta, &attacker, "PLAINTEXT-CANARY-62");
    with_victim_key.account_key = victim.public_key_sec1();
    // (3) The victim's genuine signature (of its own request) moved over.
    let mut moved = mitm.host_sealed(&meta, &attacker, "PLAINTEXT-CANARY-63");
    moved.account_key = victim.public_key_sec1();
    moved.signature = genuine_signed.signature;
    // (4) The victim's genuine request once more.
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "own key",
            own.to_cbor(),
            "not authorized by the account it bills",
        ),
        (
            "victim's key, host's signature",
            with_victim_key.to_cbor(),
            "signature does not verify",
        ),
        (
            "victim's signature moved",
            moved.to_cbor(),
            "signature does not verify",
        ),
        (
            "genuine request again",
            genuine_payload.clone(),
            "replayed request",
        ),
    ];
    let mut forged_ids = Vec::new();
    for (i, (name, payload, expect)) in cases.iter().enumerate() {
        forged_ids.push(request_id_of(payload));
        let answer = rt.block_on(mitm.inject_request(INJECTED_STREAM + 10 + i as u32, payload));
        let text = refusal_text(&answer);
        assert!(text.contains(expect), "{name}: {text}");
    }
    assert!(
        eventually(Duration::from_secs(5), || logged(&enclave, "account_auth")
            == 3),
        "the enclave logs the three unsigned requests: {}",
        enclave.proc.output()
    );
    // The host acknowledges the forged ids as if it had committed receipts
    // for them: nothing is pending under them, the victim's tab stands.
    let tab = rt.block_on(mitm.acknowledge(&forged_ids, victim_id));
    assert_eq!(
        (tab.count, u128::from(tab.total)),
        (1, paid),
        "the tab did not move"
    );
    for id in &forged_ids[..3] {
        assert_eq!(billed(&host, *id), 0);
    }
    assert_eq!(billed(&host, genuine.id()), 1);

    // Settlement claims exactly the genuine request for the victim, and its
    // statement is clean.
    std::thread::sleep(Duration::from_millis(300));
    let out = dir.path().join("settle");
    let m = settle(&host, &out, &[]);
    let claims = m["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 1, "{m:#}");
    assert_eq!(claims[0]["account"], hex::encode(victim_id));
    assert_eq!(dec(&claims[0]["amount"]), paid, "{m:#}");
    let (code, stdout) = statement(&host, &dir, &victim_key_file, &out.join("claims.json"));
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains(": OK"), "{stdout}");

    let wire = mitm.state(|s| s.wire.clone());
    assert_no_plaintext(
        &secrets,
        &dir,
        &host,
        &[&enclave],
        &[("the frame man in the middle", wire)],
        genuine.id(),
    );
}

/// The host floods the enclave's replay memory with requests of its own
/// account (it pays itself, so they cost it nothing), then replays a
/// client's genuine request: refused, no second receipt, the tab counts it
/// once. A full memory refuses new requests instead of forgetting; expired
/// and too-far-ahead requests are refused.
#[test]
fn a_replay_after_flooding_the_replay_memory_is_refused() {
    const WINDOW: u32 = 8;
    let dir = TempDir::new("e2e-mal-flood");
    let enclave = start_enclave_with(
        &dir,
        "enclave",
        &format!("replay_window = {WINDOW}\n{PRICED_ENCLAVE}"),
    );
    let rt = rt();
    let mitm = rt.block_on(FrameMitm::start(
        &enclave.socket,
        dir.path().join("mitm.sock"),
    ));
    let host = start_host(&dir, &[&mitm.socket], LIMITS);
    let victim = account();
    let client = Client::new(&host.url, simulated_policy(), victim.clone());
    let host_account = AccountKey::generate(&mut OsRng);
    let mut secrets = Secrets::default();

    let genuine = rt.block_on(ask(&client, &mut secrets, "PLAINTEXT-CANARY-70"));
    let paid = genuine.completed().receipt.charge_nanoton().unwrap();
    let genuine_payload = mitm.state(|s| s.requests[0].clone());

    // Fill the memory with the host's own, properly signed requests: each
    // is served (the host pays itself).
    let own = dearest_meta(host_account.id().0, 4);
    for i in 1..WINDOW {
        let req = mitm.host_sealed(&own, &host_account, &format!("flood {i}"));
        let answer = rt.block_on(mitm.inject_request(INJECTED_STREAM + 100 + i, &req.to_cbor()));
        assert!(
            answer.iter().any(|f| f.kind == FrameType::Receipt),
            "request {i} of the flood is served: {answer:?}"
        );
    }
    // Full: one more is refused, and nothing was forgotten to make room.
    let more = mitm.host_sealed(&own, &host_account, "one too many");
    let text =
        refusal_text(&rt.block_on(mitm.inject_request(INJECTED_STREAM + 200, &more.to_cbor())));
    assert!(
        text.contains(&format!("remembers {WINDOW} unexpired requests")),
        "{text}"
    );
    // The replay of the genuine request.
    let text =
        refusal_text(&rt.block_on(mitm.inject_request(INJECTED_STREAM + 201, &genuine_payload)));
    assert!(text.starts_with("replayed request"), "{text}");
    // Expired, and too far ahead (the enclave's default maximum is 600 s).
    for (i, (expires_at, expect)) in [
        (unix_secs() - 1, "the request expired at"),
        (unix_secs() + 3600, "maximum request lifetime of 600 s"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = own.clone();
        m.expires_at = expires_at;
        let req = mitm.host_sealed(&m, &host_account, "when");
        let text = refusal_text(
            &rt.block_on(mitm.inject_request(INJECTED_STREAM + 210 + i as u32, &req.to_cbor())),
        );
        assert!(text.contains(expect), "{text}");
    }
    // The genuine receipt counts once, however often it is acknowledged.
    let victim_id = victim.id().0;
    for _ in 0..2 {
        let tab = rt.block_on(mitm.acknowledge(&[genuine.id()], victim_id));
        assert_eq!((tab.count, u128::from(tab.total)), (1, paid));
    }
    assert_eq!(billed(&host, genuine.id()), 1);
    assert!(
        eventually(Duration::from_secs(5), || logged(&enclave, "replay") == 1
            && logged(&enclave, "replay_memory_full") == 1
            && logged(&enclave, "expired") == 1
            && logged(&enclave, "expiry_too_far") == 1),
        "{}",
        enclave.proc.output()
    );
}
