//! The enclave's sealed request path end to end, over real Unix sockets and
//! real frames: a host-side client built from `cocoon-protocol` fetches the
//! evidence, verifies it with `cocoon-verifier` under a policy that opts into
//! the simulated TEE, seals requests to the attested key, and opens and
//! checks the response streams and receipts. The last tests run the real
//! `cocoon-enclave` binary.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cocoon_attestation::bundle::ModelDigest;
use cocoon_enclave::{
    BackendError, ChatOutcome, DeterministicTestBackend, Enclave, EnclaveConfig, Finish, Generated,
    InferenceBackend, ListenAddr, Listener, SimulatedProvider,
};
use cocoon_protocol::account::AccountKey;
use cocoon_protocol::frame::{self, Frame, FrameDecoder, FrameType};
use cocoon_protocol::message::{
    ChatMessage, FinishReason, InferenceRequest, RefusalCode, ResponseEvent, Role,
};
use cocoon_protocol::receipt::{verify_receipt, UnitPrice, UsageReceipt};
use cocoon_protocol::request::SignedRequest;
use cocoon_protocol::sampling::Sampling;
use cocoon_protocol::seal::{
    seal_request, BillingMeta, ClientSession, EvidenceDigest, HpkePublicKey,
};
use cocoon_protocol::stream::ResponseOpener;
use cocoon_protocol::RequestId;
use cocoon_verifier::{verify, Policy, UnixTime, VerifiedEnclave};
use rand_core::OsRng;
use std::ops::ControlFlow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const MODEL: &str = DeterministicTestBackend::MODEL;
const RECV_TIMEOUT: Duration = Duration::from_secs(30);
const IMAGE: &[u8] = b"cocoon-enclave integration test image";

fn unique_dir() -> PathBuf {
    cocoon_test_kit::TempDir::new("enclave-t").keep()
}

fn now() -> UnixTime {
    UnixTime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
}

/// An enclave served in this process on a Unix socket in a fresh directory.
struct TestEnclave {
    enclave: Arc<Enclave>,
    dir: PathBuf,
    path: PathBuf,
    measurement: [u8; 48],
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestEnclave {
    async fn start(config_toml: &str) -> TestEnclave {
        TestEnclave::start_with(config_toml, None).await
    }

    async fn start_with(
        config_toml: &str,
        backend: Option<Arc<dyn InferenceBackend>>,
    ) -> TestEnclave {
        let config = EnclaveConfig::from_toml(config_toml).unwrap();
        let provider = SimulatedProvider::with_image_bytes(
            IMAGE,
            config.to_canonical_toml().as_bytes(),
            &mut OsRng,
        );
        let measurement = provider.measurement();
        let backend = backend.unwrap_or_else(|| {
            Arc::new(DeterministicTestBackend::new(
                config.test_backend_reply_tokens,
            ))
        });
        let enclave =
            Arc::new(Enclave::new(config, Arc::new(provider), backend, &mut OsRng).unwrap());
        let dir = unique_dir();
        let path = dir.join("enclave.sock");
        let listener = Listener::bind(&ListenAddr::Unix(path.clone()))
            .await
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(enclave.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        TestEnclave {
            enclave,
            dir,
            path,
            measurement,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn connect(&self) -> HostConn {
        HostConn::connect(&self.path).await
    }

    fn policy(&self) -> Policy {
        cocoon_test_kit::simulated::policy(Some(&self.measurement))
    }

    /// Fetch the evidence over `conn` and verify it under the pinned policy.
    async fn verified(&self, conn: &mut HostConn) -> VerifiedEnclave {
        conn.send(0, FrameType::EvidenceRequest, &[]).await;
        let f = conn.recv().await.expect("connection closed");
        assert_eq!((f.stream_id, f.kind), (0, FrameType::EvidenceResponse));
        verify(&f.payload, &self.policy(), now()).expect("evidence verifies")
    }

    /// Stop serving and wait for `serve` to return.
    async fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("serve returns after shutdown")
                .unwrap();
        }
    }
}

impl Drop for TestEnclave {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host's side of one connection.
struct HostConn {
    rd: OwnedReadHalf,
    wr: Option<OwnedWriteHalf>,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl HostConn {
    async fn connect(path: &Path) -> HostConn {
        let (rd, wr) = UnixStream::connect(path).await.unwrap().into_split();
        HostConn {
            rd,
            wr: Some(wr),
            decoder: FrameDecoder::new(),
            buf: vec![0; 1 << 16],
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.as_mut().unwrap().write_all(bytes).await.unwrap();
    }

    async fn send(&mut self, stream_id: u32, kind: FrameType, payload: &[u8]) {
        self.send_raw(&frame::encode(stream_id, kind, payload).unwrap())
            .await;
    }

    /// The next frame, or `None` once the enclave closed the connection.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.decoder.next_frame().expect("enclave frames decode") {
                return Some(f);
            }
            let n = tokio::time::timeout(RECV_TIMEOUT, self.rd.read(&mut self.buf))
                .await
                .expect("timed out waiting for the enclave")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.decoder.push(&self.buf[..n]).unwrap();
        }
    }

    /// Read frames into `responses` until every one is done. A frame for a
    /// stream not in the map fails the test.
    async fn drive(&mut self, responses: &mut HashMap<u32, Response>) {
        while responses.values().any(|r| !r.done()) {
            let f = self.recv().await.expect("connection closed mid-response");
            responses
                .get_mut(&f.stream_id)
                .unwrap_or_else(|| panic!("frame for unexpected stream {}", f.stream_id))
                .on_frame(f);
        }
    }

    /// Send one request on `stream_id` and read its whole response.
    async fn exchange(
        &mut self,
        stream_id: u32,
        request: &[u8],
        session: ClientSession,
    ) -> Response {
        self.send(stream_id, FrameType::Request, request).await;
        let mut m = HashMap::from([(stream_id, Response::new(session))]);
        self.drive(&mut m).await;
        m.remove(&stream_id).unwrap()
    }
}

/// What the host and the client saw of one stream.
struct Response {
    opener: ResponseOpener,
    texts: Vec<String>,
    embeddings: Vec<(u32, Vec<f32>)>,
    host_receipt: Option<Vec<u8>>,
    end: Option<(FinishReason, Vec<u8>)>,
    error: Option<String>,
    chunks: u64,
}

impl Response {
    fn new(session: ClientSession) -> Response {
        Response {
            opener: session.response_opener(),
            texts: vec![],
            embeddings: vec![],
            host_receipt: None,
            end: None,
            error: None,
            chunks: 0,
        }
    }

    fn done(&self) -> bool {
        self.end.is_some() || self.error.is_some()
    }

    fn on_frame(&mut self, f: Frame) {
        assert!(
            !self.done(),
            "{:?} frame after the end of the stream",
            f.kind
        );
        match f.kind {
            FrameType::ResponseChunk => {
                let c = self.opener.open_chunk(&f.payload).expect("chunk opens");
                self.chunks += 1;
                if self.host_receipt.is_some() {
                    assert!(c.last, "only the final chunk may follow the Receipt frame");
                }
                match ResponseEvent::decode(&c.data, c.last).expect("event decodes") {
                    ResponseEvent::Text(t) => self.texts.push(t),
                    ResponseEvent::Embedding { index, vector } => {
                        self.embeddings.push((index, vector))
                    }
                    ResponseEvent::End { finish, receipt } => {
                        assert!(
                            self.host_receipt.is_some(),
                            "the final chunk arrived before the Receipt frame"
                        );
                        self.opener.finish().expect("stream complete");
                        self.end = Some((finish, receipt));
                    }
                    other => panic!("unexpected event {other:?}"),
                }
            }
            FrameType::Receipt => {
                assert!(self.host_receipt.is_none(), "two Receipt frames");
                self.host_receipt = Some(f.payload);
            }
            FrameType::Error => self.error = Some(String::from_utf8(f.payload).unwrap()),
            other => panic!("unexpected {other:?} frame on a request stream"),
        }
    }

    /// The End's finish and the verified receipt, checked against the
    /// host's copy and the request.
    fn receipt(
        &self,
        v: &VerifiedEnclave,
        request_id: RequestId,
        meta: &BillingMeta,
    ) -> (FinishReason, UsageReceipt) {
        assert!(self.error.is_none(), "stream failed: {:?}", self.error);
        let (finish, receipt) = self.end.clone().expect("stream ended");
        assert_eq!(
            self.host_receipt.as_ref(),
            Some(&receipt),
            "the host's receipt equals the client's"
        );
        let r = verify_receipt(&receipt, &v.claims().receipt_public_key)
            .expect("receipt verifies under the attested key");
        assert_eq!(r.request_id, request_id);
        assert_eq!(r.model, meta.model);
        assert_eq!(r.client_account, meta.client_account);
        assert_eq!(r.total_tokens, r.prompt_tokens + r.completion_tokens);
        let t = now().0;
        assert!(
            r.time <= t && r.time + 120 >= t,
            "receipt time {} vs now {t}",
            r.time
        );
        (finish, r)
    }
}

/// The default configuration's price of the test model (1, 1, 2 nanoton
/// per token); the other test backends' models are unpriced (0).
fn default_price(model: &str) -> UnitPrice {
    if model == MODEL {
        UnitPrice {
            prompt: 1,
            cached: 1,
            completion: 2,
        }
    } else {
        UnitPrice::default()
    }
}

fn meta(model: &str, max_tokens: u32) -> BillingMeta {
    BillingMeta {
        model: model.into(),
        max_tokens,
        price_quote_id: "q-test-1".into(),
        unit_price: default_price(model),
        multiplier_milli: 1000,
        client_account: test_account().id().0,
        expires_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300,
    }
}

fn user(text: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage {
            role: Role::System,
            content: "answer briefly".into(),
        },
        ChatMessage {
            role: Role::User,
            content: text.into(),
        },
    ]
}

/// The paying account of the tests' requests.
fn test_account() -> &'static AccountKey {
    static KEY: std::sync::OnceLock<AccountKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| AccountKey::generate(&mut OsRng))
}

/// Seal `body` to the verified enclave and sign it as the billed account
/// (`m.client_account` must be [`test_account`]'s, or `signer` another
/// key); returns the `Request` frame's payload, the session and the id.
fn seal_signed(
    v: &VerifiedEnclave,
    m: &BillingMeta,
    body: &[u8],
    signer: &AccountKey,
) -> (Vec<u8>, ClientSession, RequestId) {
    let pk = HpkePublicKey::from_bytes(&v.claims().hpke_public_key).unwrap();
    let digest = EvidenceDigest::of_claims(v.claims_cbor());
    let (req, session) = seal_request(&pk, &digest, m, body, &mut OsRng).unwrap();
    let id = req.request_id();
    let signed = SignedRequest {
        sealed: req.to_cbor(),
        evidence: digest.0,
        account_key: signer.public_key_sec1(),
        signature: signer.sign_request(&id),
    };
    (signed.to_cbor(), session, id)
}

/// [`seal_signed`] by the test account.
fn seal(v: &VerifiedEnclave, m: &BillingMeta, body: &[u8]) -> (Vec<u8>, ClientSession, RequestId) {
    seal_signed(v, m, body, test_account())
}

fn chat_body(messages: &[ChatMessage]) -> Vec<u8> {
    InferenceRequest::Chat {
        messages: messages.to_vec(),
        sampling: Default::default(),
    }
    .to_cbor()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_verifies_under_a_pinned_simulated_policy_and_names_the_enclave() {
    let te = TestEnclave::start("").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let claims = v.claims();
    assert_eq!(*claims, te.enclave.claims());
    assert_eq!(v.claims_cbor(), te.enclave.bundle().claims_cbor.as_slice());
    assert_eq!(
        EvidenceDigest::of_claims(v.claims_cbor()),
        te.enclave.evidence_digest()
    );
    assert_eq!(claims.image_id, "cocoon-dev-unmeasured");
    assert_eq!(
        claims.model_digests,
        vec![DeterministicTestBackend::model_digest()]
    );
    assert_eq!(claims.config_digest, EnclaveConfig::default().digest());
    assert_eq!(claims.gpu_evidence_digest, None);
    assert_eq!(claims.client_nonce, None);
    assert!(claims.epoch.abs_diff(now().0) < 120);
    assert_eq!(claims.hpke_public_key.len(), 32);
    assert_eq!(claims.receipt_public_key.len(), 65);
    assert_eq!(te.enclave.provider_kind(), "simulated");

    // The same evidence under a policy pinning another measurement fails:
    // the pin is really checked.
    let wrong = cocoon_test_kit::simulated::policy(Some(&[0; 48]));
    assert!(verify(&te.enclave.bundle_cbor(), &wrong, now()).is_err());
    // And the default stance (no opt-in) refuses it.
    let no_opt_in = Policy::from_toml(
        "release = \"x\"\nmax_evidence_age = \"skip\"\n[snp]\nmeasurements = \"skip\"\nmin_tcb = \"skip\"\nvmpl = 0\nreport_data = \"skip\"\nhost_data = \"skip\"\nid_key_digests = \"skip\"\nauthor_key_digests = \"skip\"\nsmt = \"allowed\"\nrevocation = \"skip\"\n",
    )
    .unwrap();
    assert!(verify(&te.enclave.bundle_cbor(), &no_opt_in, now()).is_err());

    // A client nonce is refused on stream 0; the connection stays usable.
    c.send(0, FrameType::EvidenceRequest, &[1, 2, 3]).await;
    let f = c.recv().await.unwrap();
    assert_eq!((f.stream_id, f.kind), (0, FrameType::Error));
    assert_eq!(
        String::from_utf8(f.payload).unwrap(),
        "evidence for a client nonce is asked for on a stream of its own, not stream 0"
    );
    let again = te.verified(&mut c).await;
    assert_eq!(again.claims(), claims);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_sealed_tokens_then_the_receipt_then_the_end() {
    let te = TestEnclave::start(
        "[prices.\"cocoon-deterministic-test\"]\nprompt = 11\ncompletion = 13\n",
    )
    .await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let backend = DeterministicTestBackend::new(48);
    let mut last_seq = 0;
    for (stream, prompt) in [(1u32, "what is a cocoon"), (2, "and a butterfly?")] {
        let messages = user(prompt);
        let m = BillingMeta {
            unit_price: UnitPrice {
                prompt: 11,
                cached: 11,
                completion: 13,
            },
            ..meta(MODEL, 256)
        };
        let (req, session, id) = seal(&v, &m, &chat_body(&messages));
        let r = c.exchange(stream, &req, session).await;
        let (finish, receipt) = r.receipt(&v, id, &m);
        assert_eq!(finish, FinishReason::Stop);
        let expected = backend.reply(&messages);
        assert_eq!(r.texts, expected, "one chunk per token, in order");
        assert!(r
            .texts
            .concat()
            .starts_with(DeterministicTestBackend::PREAMBLE));
        assert_eq!(r.chunks, 48 + 1);
        let prompt_words = messages
            .iter()
            .map(|m| m.content.split_whitespace().count() as u64)
            .sum::<u64>();
        assert_eq!(receipt.prompt_tokens, prompt_words);
        assert_eq!(receipt.completion_tokens, 48);
        assert_eq!(receipt.total_tokens, prompt_words + 48);
        assert_eq!(
            receipt.unit_price,
            UnitPrice {
                prompt: 11,
                cached: 11,
                completion: 13
            }
        );
        assert!(
            receipt.enclave_seq > last_seq,
            "enclave_seq strictly increases"
        );
        last_seq = receipt.enclave_seq;
    }
    assert_eq!(last_seq, 2, "the counter starts at 1 at boot");

    // A receipt does not verify under another key (the check can fail).
    let other = TestEnclave::start("").await;
    let m = BillingMeta {
        unit_price: UnitPrice {
            prompt: 11,
            cached: 11,
            completion: 13,
        },
        ..meta(MODEL, 4)
    };
    let (req, session, _) = seal(&v, &m, &chat_body(&user("x")));
    let r = c.exchange(3, &req, session).await;
    let (_, receipt) = r.end.unwrap_or_else(|| panic!("{:?}", r.error));
    assert!(verify_receipt(&receipt, &other.enclave.claims().receipt_public_key).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_streamed_one_per_input() {
    let te = TestEnclave::start("").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let inputs: Vec<String> = vec!["one two three".into(), "four".into(), "five six".into()];
    let m = meta(MODEL, 0);
    let body = InferenceRequest::Embeddings {
        inputs: inputs.clone(),
    }
    .to_cbor();
    let (req, session, id) = seal(&v, &m, &body);
    let r = c.exchange(7, &req, session).await;
    let (finish, receipt) = r.receipt(&v, id, &m);
    assert_eq!(finish, FinishReason::Stop);
    assert!(r.texts.is_empty());
    assert_eq!(r.embeddings.len(), 3);
    for (i, (index, vector)) in r.embeddings.iter().enumerate() {
        assert_eq!(*index as usize, i);
        assert_eq!(vector.len(), DeterministicTestBackend::EMBEDDING_DIM);
        assert_eq!(vector, &DeterministicTestBackend::embedding(&inputs[i]));
        let norm: f32 = vector.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    assert_eq!((receipt.prompt_tokens, receipt.completion_tokens), (6, 0));
    assert_eq!(
        receipt.unit_price,
        UnitPrice {
            prompt: 1,
            cached: 1,
            completion: 2
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_on_one_connection() {
    let te = TestEnclave::start("max_concurrent = 16\ntest_backend_reply_tokens = 64\n").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let backend = DeterministicTestBackend::new(64);
    let mut wire = Vec::new();
    let mut responses = HashMap::new();
    let mut expected = HashMap::new();
    for i in 0..200u32 {
        let stream = 1000 + i * 3;
        let messages = user(&format!("question number {i}"));
        let m = meta(MODEL, if i % 10 == 0 { 20 } else { 1000 });
        let (req, session, id) = seal(&v, &m, &chat_body(&messages));
        frame::encode_into(stream, FrameType::Request, &req, &mut wire).unwrap();
        responses.insert(stream, Response::new(session));
        expected.insert(stream, (id, m, backend.reply(&messages)));
    }
    // Write everything from another task while this one reads.
    let mut wr = c.wr.take().unwrap();
    let writer = tokio::spawn(async move {
        wr.write_all(&wire).await.unwrap();
        wr
    });
    c.drive(&mut responses).await;
    c.wr = Some(writer.await.unwrap());
    let mut seqs = std::collections::HashSet::new();
    for (stream, r) in &responses {
        let (id, m, reply) = &expected[stream];
        let (finish, receipt) = r.receipt(&v, *id, m);
        let n = if m.max_tokens == 20 { 20 } else { 64 };
        assert_eq!(r.texts, reply[..n], "stream {stream}");
        assert_eq!(receipt.completion_tokens, n as u64);
        assert_eq!(
            finish,
            if n == 20 {
                FinishReason::Length
            } else {
                FinishReason::Stop
            }
        );
        assert!(
            seqs.insert(receipt.enclave_seq),
            "receipt numbers are unique"
        );
    }
    assert_eq!(seqs.len(), 200);
    // Still serving on the same connection.
    let m = meta(MODEL, 3);
    let (req, session, id) = seal(&v, &m, &chat_body(&user("after")));
    let r = c.exchange(1000, &req, session).await;
    assert_eq!(r.receipt(&v, id, &m).1.completion_tokens, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sealed_to_another_enclave_gets_only_an_error_frame() {
    let a = TestEnclave::start("").await;
    let b = TestEnclave::start("").await;
    let mut ca = a.connect().await;
    let mut cb = b.connect().await;
    let _va = a.verified(&mut ca).await;
    let vb = b.verified(&mut cb).await;
    let m = meta(MODEL, 16);
    let (req, session, _) = seal(&vb, &m, &chat_body(&user("hello")));
    let r = ca.exchange(5, &req, session).await;
    let err = r.error.expect("an Error frame");
    assert!(err.contains("that this enclave did not issue"), "{err}");
    assert!(
        err.contains(&hex::encode(a.enclave.evidence_digest().0)),
        "{err}"
    );
    assert_eq!(r.chunks, 0);
    assert!(r.host_receipt.is_none());
    // Nothing more for stream 5: the next frame is the answer to this.
    ca.send(0, FrameType::EvidenceRequest, &[]).await;
    let f = ca.recv().await.unwrap();
    assert_eq!((f.stream_id, f.kind), (0, FrameType::EvidenceResponse));
    // Bytes that are not a sealed request at all.
    ca.send(6, FrameType::Request, b"\xa0").await;
    let f = ca.recv().await.unwrap();
    assert_eq!((f.stream_id, f.kind), (6, FrameType::Error));
    // The same request does open at the enclave it was sealed to.
    let (req, session, id) = seal(&vb, &m, &chat_body(&user("hello")));
    let r = cb.exchange(5, &req, session).await;
    assert_eq!(r.receipt(&vb, id, &m).1.completion_tokens, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_gets_an_error_frame_on_any_connection() {
    let te = TestEnclave::start("").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let m = meta(MODEL, 8);
    let (req, session, id) = seal(&v, &m, &chat_body(&user("once only")));
    let r = c.exchange(1, &req, session).await;
    r.receipt(&v, id, &m);
    for conn in [&mut c, &mut te.connect().await] {
        conn.send(2, FrameType::Request, &req).await;
        let f = conn.recv().await.unwrap();
        assert_eq!((f.stream_id, f.kind), (2, FrameType::Error));
        let text = String::from_utf8(f.payload).unwrap();
        assert!(text.starts_with("replayed request"), "{text}");
        assert!(text.contains(&id.to_string()), "{text}");
    }
}

/// Read the one frame the enclave answers a refused request with.
async fn refusal(c: &mut HostConn, stream: u32, payload: &[u8]) -> String {
    c.send(stream, FrameType::Request, payload).await;
    let f = c.recv().await.expect("an answer");
    assert_eq!((f.stream_id, f.kind), (stream, FrameType::Error), "{f:?}");
    String::from_utf8(f.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_billed_account_can_sign_its_requests() {
    let te = TestEnclave::start("").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let m = meta(MODEL, 8);
    let other = AccountKey::generate(&mut OsRng);
    // Signed by account A (another key), naming account B (the test
    // account) as the payer.
    let (req, _, _) = seal_signed(&v, &m, &chat_body(&user("bill b")), &other);
    let text = refusal(&mut c, 1, &req).await;
    assert!(
        text.starts_with("the request is not authorized by the account it bills"),
        "{text}"
    );
    assert!(text.contains(&hex::encode(test_account().id().0)), "{text}");
    // B's key presented with A's signature.
    let mut forged = SignedRequest::from_cbor(&req).unwrap();
    forged.account_key = test_account().public_key_sec1();
    let text = refusal(&mut c, 2, &forged.to_cbor()).await;
    assert!(text.contains("signature does not verify"), "{text}");
    // B's genuine signature of another request, moved onto this one.
    let (genuine, _, _) = seal(&v, &m, &chat_body(&user("real")));
    let genuine = SignedRequest::from_cbor(&genuine).unwrap();
    forged.signature = genuine.signature;
    let text = refusal(&mut c, 3, &forged.to_cbor()).await;
    assert!(text.contains("signature does not verify"), "{text}");
    // A bare sealed request, as before accounts signed for the enclave.
    let text = refusal(&mut c, 4, &forged.sealed).await;
    assert!(text.starts_with("not a signed request"), "{text}");
    // Nothing was served: the genuine request still is.
    let (req, session, id) = seal(&v, &m, &chat_body(&user("real")));
    let r = c.exchange(5, &req, session).await;
    assert_eq!(
        r.receipt(&v, id, &m).1.client_account,
        test_account().id().0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_too_long_lived_requests_are_refused() {
    let te = TestEnclave::start("max_request_lifetime_secs = 60\n").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let t = now().0;
    for (i, (expires_at, expect)) in [
        (t - 1, "the request expired at"),
        (t - 3600, "the request expired at"),
        (
            t + 120,
            "more than the enclave's maximum request lifetime of 60 s",
        ),
        (
            u64::MAX,
            "more than the enclave's maximum request lifetime of 60 s",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = meta(MODEL, 8);
        m.expires_at = expires_at;
        let (req, _, _) = seal(&v, &m, &chat_body(&user("when")));
        let text = refusal(&mut c, i as u32 + 1, &req).await;
        assert!(text.contains(expect), "{expires_at}: {text}");
    }
    let mut m = meta(MODEL, 8);
    m.expires_at = t + 50;
    let (req, session, id) = seal(&v, &m, &chat_body(&user("in time")));
    c.exchange(9, &req, session).await.receipt(&v, id, &m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replay_memory_refuses_new_requests_and_forgets_only_expired_ids() {
    let te = TestEnclave::start("replay_window = 4\n").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let t = now().0;
    let mut served = Vec::new();
    for i in 0..4u32 {
        let mut m = meta(MODEL, 4);
        m.expires_at = t + 3;
        let (req, session, id) = seal(&v, &m, &chat_body(&user(&format!("q{i}"))));
        c.exchange(i + 1, &req, session).await.receipt(&v, id, &m);
        served.push(req);
    }
    // Full: a new request is refused, nothing is forgotten to make room.
    let (fresh, _, _) = seal(&v, &meta(MODEL, 4), &chat_body(&user("new")));
    let text = refusal(&mut c, 10, &fresh).await;
    assert!(text.contains("remembers 4 unexpired requests"), "{text}");
    for (i, req) in served.iter().enumerate() {
        let text = refusal(&mut c, 11 + i as u32, req).await;
        assert!(text.starts_with("replayed request"), "{text}");
    }
    // Once they expired there is room again, and the expired ones are
    // refused as expired, not served again.
    tokio::time::sleep(Duration::from_millis(
        (t + 4).saturating_sub(now().0) * 1000 + 100,
    ))
    .await;
    let m = meta(MODEL, 4);
    let (req, session, id) = seal(&v, &m, &chat_body(&user("new")));
    c.exchange(20, &req, session).await.receipt(&v, id, &m);
    for (i, req) in served.iter().enumerate() {
        let text = refusal(&mut c, 21 + i as u32, req).await;
        assert!(text.starts_with("the request expired at"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshed_and_nonce_evidence_keep_the_keys_and_every_issued_digest_opens() {
    let te = TestEnclave::start("").await;
    let mut c = te.connect().await;
    let boot = te.verified(&mut c).await;
    assert_eq!(boot.claims().refresh, 0);
    let refreshed = {
        let e = te.enclave.clone();
        tokio::task::spawn_blocking(move || e.refresh_evidence().unwrap())
            .await
            .unwrap()
    };
    let now_v = te.verified(&mut c).await;
    assert_eq!(now_v.claims().refresh, 1);
    assert_eq!(
        EvidenceDigest::of_claims(now_v.claims_cbor()),
        refreshed.digest
    );
    assert_eq!(
        now_v.claims().hpke_public_key,
        boot.claims().hpke_public_key
    );
    assert_eq!(
        now_v.claims().receipt_public_key,
        boot.claims().receipt_public_key
    );
    assert_eq!(now_v.claims().epoch, boot.claims().epoch);
    assert!(now_v.claims().issued_at >= boot.claims().issued_at);
    // A report for a client nonce, on a stream of its own.
    c.send(7, FrameType::EvidenceRequest, b"my nonce").await;
    let f = c.recv().await.unwrap();
    assert_eq!((f.stream_id, f.kind), (7, FrameType::EvidenceResponse));
    let nonce_v = verify(&f.payload, &te.policy(), now()).unwrap();
    assert_eq!(
        nonce_v.claims().client_nonce.as_deref(),
        Some(&b"my nonce"[..])
    );
    assert_eq!(
        nonce_v.claims().hpke_public_key,
        boot.claims().hpke_public_key
    );
    // Not on stream 0, not empty, not too long.
    c.send(0, FrameType::EvidenceRequest, b"x").await;
    let f = c.recv().await.unwrap();
    assert_eq!((f.stream_id, f.kind), (0, FrameType::Error));
    c.send(8, FrameType::EvidenceRequest, &[1; 65]).await;
    let f = c.recv().await.unwrap();
    assert_eq!((f.stream_id, f.kind), (8, FrameType::Error));
    // Requests sealed to each digest it issued open.
    let m = meta(MODEL, 4);
    for (i, v) in [&boot, &now_v, &nonce_v].into_iter().enumerate() {
        let (req, session, id) = seal(v, &m, &chat_body(&user(&format!("to {i}"))));
        c.exchange(10 + i as u32, &req, session)
            .await
            .receipt(v, id, &m);
    }
    // A digest it never issued is refused by name.
    let (req, _, _) = seal(&boot, &m, &chat_body(&user("elsewhere")));
    let mut other = SignedRequest::from_cbor(&req).unwrap();
    other.evidence = [0x5a; 32];
    let text = refusal(&mut c, 20, &other.to_cbor()).await;
    assert!(text.contains("that this enclave did not issue"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_stream_ids_and_too_many_streams_are_refused() {
    let te = TestEnclave::start(
        "max_concurrent = 1\nmax_streams_per_connection = 2\ntest_backend_reply_tokens = 100000000\n",
    )
    .await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let m = meta(MODEL, u32::MAX);
    for stream in [1, 2] {
        let (req, _, _) = seal(&v, &m, &chat_body(&user(&format!("long {stream}"))));
        c.send(stream, FrameType::Request, &req).await;
    }
    let (req, _, _) = seal(&v, &m, &chat_body(&user("third")));
    c.send(3, FrameType::Request, &req).await;
    let (req, _, _) = seal(&v, &m, &chat_body(&user("again on 1")));
    c.send(1, FrameType::Request, &req).await;
    c.send(0, FrameType::Request, &req).await;
    let mut errors = HashMap::new();
    while errors.len() < 3 {
        let f = c.recv().await.unwrap();
        if f.kind == FrameType::Error {
            errors.insert(f.stream_id, String::from_utf8(f.payload).unwrap());
        } else {
            assert_eq!((f.stream_id, f.kind), (1, FrameType::ResponseChunk));
        }
    }
    assert_eq!(
        errors[&3],
        "too many open streams on this connection (limit 2)"
    );
    assert_eq!(
        errors[&1],
        "stream id 1 is already in use on this connection"
    );
    assert_eq!(errors[&0], "requests need a stream id other than 0");
    // Dropping the connection cancels the endless streams (the test ends
    // without waiting for 10^8 tokens).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_the_connection_and_the_enclave_keeps_serving() {
    let te = TestEnclave::start("").await;
    let v = {
        let mut c = te.connect().await;
        te.verified(&mut c).await
    };
    let mut unknown_type = frame::encode(1, FrameType::Cancel, &[]).unwrap();
    unknown_type[8] = 0x7f;
    let mut oversize = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1];
    oversize.push(FrameType::Request.to_u8());
    let host_only = [
        FrameType::ResponseChunk,
        FrameType::Receipt,
        FrameType::EvidenceResponse,
    ]
    .map(|k| frame::encode(4, k, b"x").unwrap());
    let mut cases = vec![unknown_type, oversize];
    cases.extend(host_only);
    for bad in cases {
        let mut c = te.connect().await;
        c.send(0, FrameType::EvidenceRequest, &[]).await;
        let f = c.recv().await.expect("evidence");
        assert_eq!(f.kind, FrameType::EvidenceResponse);
        c.send_raw(&bad).await;
        assert!(
            c.recv().await.is_none(),
            "connection closed after {bad:02x?}"
        );
        // A new connection is served.
        let mut c = te.connect().await;
        let m = meta(MODEL, 5);
        let (req, session, id) = seal(&v, &m, &chat_body(&user("still there?")));
        let r = c.exchange(9, &req, session).await;
        assert_eq!(r.receipt(&v, id, &m).1.completion_tokens, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_stream_and_frees_its_slot() {
    // One request at a time: the second request can only run once the
    // cancelled one has really stopped (10^8 tokens would take minutes).
    let te =
        TestEnclave::start("max_concurrent = 1\ntest_backend_reply_tokens = 100000000\n").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let m = meta(MODEL, u32::MAX);
    let (req, session, _) = seal(&v, &m, &chat_body(&user("go on forever")));
    c.send(5, FrameType::Request, &req).await;
    let mut long = Response::new(session);
    while long.chunks < 10 {
        let f = c.recv().await.unwrap();
        assert_eq!(f.stream_id, 5);
        long.on_frame(f);
    }
    c.send(5, FrameType::Cancel, &[]).await;
    let short_meta = meta(MODEL, 3);
    let (req, session, id) = seal(&v, &short_meta, &chat_body(&user("short")));
    c.send(7, FrameType::Request, &req).await;
    let mut short = Response::new(session);
    let started = Instant::now();
    while !short.done() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the cancelled stream still holds the only request slot"
        );
        let f = c.recv().await.unwrap();
        match f.stream_id {
            5 => {
                assert_eq!(
                    short.chunks, 0,
                    "stream 5 frames after the cancel was handled"
                );
                long.on_frame(f);
            }
            7 => short.on_frame(f),
            s => panic!("frame for stream {s}"),
        }
    }
    assert_eq!(short.receipt(&v, id, &short_meta).1.completion_tokens, 3);
    assert!(long.end.is_none() && long.host_receipt.is_none() && long.error.is_none());
    // Nothing more arrives for stream 5.
    c.send(0, FrameType::EvidenceRequest, &[]).await;
    let f = c.recv().await.unwrap();
    assert_eq!((f.stream_id, f.kind), (0, FrameType::EvidenceResponse));
    // Cancelling an unknown or finished stream is harmless.
    c.send(7, FrameType::Cancel, &[]).await;
    c.send(12345, FrameType::Cancel, &[]).await;
    let m = meta(MODEL, 2);
    let (req, session, id) = seal(&v, &m, &chat_body(&user("after cancel")));
    let r = c.exchange(7, &req, session).await;
    assert_eq!(r.receipt(&v, id, &m).1.completion_tokens, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_cuts_the_completion_with_finish_length() {
    let te = TestEnclave::start("").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let messages = user("cut me short");
    let reply = DeterministicTestBackend::new(48).reply(&messages);
    // (max_tokens 0 is refused before the model runs: see `misbehaving`.)
    for (stream, max) in [(1u32, 7u32), (2, 1), (4, 47)] {
        let m = meta(MODEL, max);
        let (req, session, id) = seal(&v, &m, &chat_body(&messages));
        let r = c.exchange(stream, &req, session).await;
        let (finish, receipt) = r.receipt(&v, id, &m);
        assert_eq!(finish, FinishReason::Length, "max_tokens {max}");
        assert_eq!(receipt.completion_tokens, u64::from(max));
        assert_eq!(r.texts, reply[..max as usize]);
    }
    let m = meta(MODEL, 48);
    let (req, session, id) = seal(&v, &m, &chat_body(&messages));
    let r = c.exchange(5, &req, session).await;
    assert_eq!(
        r.receipt(&v, id, &m).0,
        FinishReason::Stop,
        "exactly at the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_bad_prices_and_bad_bodies_are_refused_without_a_receipt() {
    let te = TestEnclave::start("").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let mut dear = meta(MODEL, 10);
    dear.unit_price.completion += 1;
    let cases: [(BillingMeta, Vec<u8>, &str); 4] = [
        (
            meta("gpt-imaginary", 10),
            chat_body(&user("hi")),
            "model \"gpt-imaginary\" is not served by this enclave",
        ),
        (
            dear,
            chat_body(&user("hi")),
            "the request's prices are refused by this enclave",
        ),
        (
            meta(MODEL, 10),
            b"this is not CBOR".to_vec(),
            "the request body is not a valid chat or embeddings request",
        ),
        (
            meta(MODEL, 10),
            InferenceRequest::Chat {
                messages: vec![],
                sampling: Default::default(),
            }
            .to_cbor(),
            "the request body is not a valid chat or embeddings request",
        ),
    ];
    for (i, (m, body, expect)) in cases.into_iter().enumerate() {
        let (req, session, _) = seal(&v, &m, &body);
        let r = c.exchange(i as u32 + 1, &req, session).await;
        let text = r
            .error
            .as_deref()
            .unwrap_or_else(|| panic!("case {i}: no error frame"));
        assert!(text.starts_with(expect), "{text}");
        assert!(!text.contains("this is not CBOR"));
        assert!(
            r.host_receipt.is_none() && r.end.is_none(),
            "case {i}: nothing signed"
        );
        assert_eq!(r.chunks, 0);
        // Refused requests never enter the replay memory: the same bytes
        // are refused for the same reason again, not as a replay.
        let unused_session = seal(&v, &m, &body).1;
        let again = c.exchange(i as u32 + 10, &req, unused_session).await;
        assert!(again.error.as_deref().unwrap().starts_with(expect));
    }
}

/// A backend that misbehaves on purpose, by model name: `greedy` ignores
/// `max_tokens` and over-reports, `failing` fails after three tokens,
/// `panicking` panics after two, `bad-embeddings` returns too few vectors.
struct UnrulyBackend;

impl InferenceBackend for UnrulyBackend {
    fn models(&self) -> Vec<ModelDigest> {
        ["greedy", "failing", "panicking", "bad-embeddings"]
            .map(|n| ModelDigest {
                name: n.into(),
                sha256: [7; 32],
                version: None,
                tokenizer_sha256: None,
            })
            .to_vec()
    }

    fn count_tokens(&self, _model: &str, text: &str) -> Result<u64, BackendError> {
        Ok(text.split_whitespace().count() as u64)
    }

    fn chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        _max_tokens: u32,
        _sampling: &Sampling,
        emit: &mut dyn FnMut(Generated<'_>) -> ControlFlow<()>,
    ) -> Result<ChatOutcome, BackendError> {
        let prompt_tokens = messages
            .iter()
            .map(|m| m.content.split_whitespace().count() as u64)
            .sum();
        let stop_after = match model {
            "greedy" => 100,
            "failing" => 3,
            "panicking" => 2,
            _ => 0,
        };
        for i in 0..stop_after {
            // Keeps going whatever emit says.
            let _ = emit(Generated::text(&format!(" w{i}")));
        }
        match model {
            "greedy" => Ok(ChatOutcome {
                prompt_tokens,
                cached_tokens: 0,
                completion_tokens: 1000,
                finish: Finish::Stop,
            }),
            "failing" => Err(BackendError::Failed("device lost".into())),
            "panicking" => panic!("backend bug"),
            _ => Err(BackendError::Unsupported {
                model: model.into(),
                operation: "chat",
            }),
        }
    }

    fn embed(&self, _model: &str, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), BackendError> {
        Ok((vec![vec![0.0; 4]; inputs.len().saturating_sub(1)], 9))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enclave_holds_a_misbehaving_backend_to_the_contract() {
    let te = TestEnclave::start_with("", Some(Arc::new(UnrulyBackend))).await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    // Greedy: ignores max_tokens and claims 1000 tokens; the enclave sends
    // max_tokens chunks and bills max_tokens.
    let m = meta("greedy", 5);
    let (req, session, id) = seal(&v, &m, &chat_body(&user("one two")));
    let r = c.exchange(1, &req, session).await;
    let (finish, receipt) = r.receipt(&v, id, &m);
    assert_eq!(finish, FinishReason::Length);
    assert_eq!(r.texts.len(), 5);
    assert_eq!((receipt.prompt_tokens, receipt.completion_tokens), (4, 5));
    assert_eq!(
        receipt.unit_price,
        UnitPrice::default(),
        "no price configured"
    );
    // Failing after 3 tokens: the stream still ends with a receipt, which
    // charges nothing (a retry must not pay twice).
    let m = meta("failing", 50);
    let (req, session, id) = seal(&v, &m, &chat_body(&user("one two")));
    let r = c.exchange(2, &req, session).await;
    let (finish, receipt) = r.receipt(&v, id, &m);
    assert_eq!(
        finish,
        FinishReason::Failed("inference failed: device lost".into())
    );
    assert_eq!(r.texts.len(), 3);
    assert_eq!((receipt.prompt_tokens, receipt.completion_tokens), (0, 0));
    assert_eq!(receipt.charge_nanoton(), Some(0));
    // Panicking after 2 tokens: same, and the enclave keeps serving.
    let m = meta("panicking", 50);
    let (req, session, id) = seal(&v, &m, &chat_body(&user("one two")));
    let r = c.exchange(3, &req, session).await;
    let (finish, receipt) = r.receipt(&v, id, &m);
    assert!(
        matches!(finish, FinishReason::Failed(ref e) if !e.contains("backend bug")),
        "{finish:?}"
    );
    assert_eq!((receipt.prompt_tokens, receipt.completion_tokens), (0, 0));
    // Wrong number of embeddings: refused before any is sent, nothing billed.
    let m = meta("bad-embeddings", 0);
    let body = InferenceRequest::Embeddings {
        inputs: vec!["a".into(), "b".into()],
    }
    .to_cbor();
    let (req, session, id) = seal(&v, &m, &body);
    let r = c.exchange(4, &req, session).await;
    let (finish, receipt) = r.receipt(&v, id, &m);
    assert!(matches!(finish, FinishReason::Failed(_)), "{finish:?}");
    assert!(r.embeddings.is_empty());
    assert_eq!((receipt.prompt_tokens, receipt.completion_tokens), (0, 0));
    // max_tokens 0: refused before the model runs, nothing charged.
    let m = meta("greedy", 0);
    let (req, session, id) = seal(&v, &m, &chat_body(&user("one two")));
    let r = c.exchange(5, &req, session).await;
    let (finish, receipt) = r.receipt(&v, id, &m);
    assert!(
        matches!(
            finish,
            FinishReason::Refused {
                code: RefusalCode::InvalidMaxTokens,
                ..
            }
        ),
        "{finish:?}"
    );
    assert!(r.texts.is_empty());
    assert_eq!((receipt.prompt_tokens, receipt.completion_tokens), (0, 0));
    assert_eq!(receipt.enclave_seq, 5, "every served request got a receipt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let mut te = TestEnclave::start("test_backend_reply_tokens = 3000\n").await;
    let mut c = te.connect().await;
    let v = te.verified(&mut c).await;
    let m = meta(MODEL, 5000);
    let (req, session, id) = seal(&v, &m, &chat_body(&user("finish me")));
    c.send(1, FrameType::Request, &req).await;
    let mut r = Response::new(session);
    let f = c.recv().await.unwrap();
    r.on_frame(f);
    let stop = te.stop.take().unwrap();
    let _ = stop.send(());
    // Wait until the listener is gone, then try a new request on the old
    // connection: refused.
    let gone = Instant::now();
    while te.path.exists() {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "listener still bound"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (req2, _, _) = seal(&v, &m, &chat_body(&user("too late")));
    c.send(2, FrameType::Request, &req2).await;
    let mut refused = None;
    while !r.done() || refused.is_none() {
        let f = c.recv().await.expect("connection stays up while draining");
        if f.stream_id == 2 {
            assert_eq!(f.kind, FrameType::Error);
            refused = Some(String::from_utf8(f.payload).unwrap());
        } else {
            r.on_frame(f);
        }
    }
    assert_eq!(r.receipt(&v, id, &m).1.completion_tokens, 3000);
    assert!(refused.unwrap().contains("shutting down"));
    te.shutdown().await;
    assert!(
        c.recv().await.is_none(),
        "connections are closed after the drain"
    );
    assert!(UnixStream::connect(&te.path).await.is_err());
}

/// The real binary: banner, ready line, evidence, SIGTERM.
#[test]
fn the_binary_announces_itself_serves_and_exits_cleanly_on_sigterm() {
    let dir = unique_dir();
    let sock = dir.join("bin.sock");
    let cfg = dir.join("enclave.toml");
    std::fs::write(
        &cfg,
        "image_id = \"bin-test\"\ntest_backend_reply_tokens = 5\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cocoon-enclave"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--config")
        .arg(&cfg)
        .args(["--tee", "simulated", "--print-evidence-digest"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = false;
    let ready = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the binary prints a ready line");
        if line.contains("SIMULATED TEE — NOT CONFIDENTIAL") {
            banner = true;
        }
        if line.starts_with("ready ") {
            break line;
        }
    };
    assert!(banner, "banner before the ready line");
    let expected_prefix = format!("ready listen=unix:{} evidence_digest=", sock.display());
    assert!(ready.starts_with(&expected_prefix), "{ready}");
    let digest_hex = ready[expected_prefix.len()..].to_owned();
    assert_eq!(digest_hex.len(), 64);
    let mut stdout_line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut stdout_line)
        .unwrap();
    assert_eq!(stdout_line.trim(), digest_hex);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = HostConn::connect(&sock).await;
        c.send(0, FrameType::EvidenceRequest, &[]).await;
        let f = c.recv().await.unwrap();
        assert_eq!(f.kind, FrameType::EvidenceResponse);
        let policy = cocoon_test_kit::simulated::policy(None);
        let v = verify(&f.payload, &policy, now()).unwrap();
        assert_eq!(
            hex::encode(EvidenceDigest::of_claims(v.claims_cbor()).0),
            digest_hex
        );
        assert_eq!(v.claims().image_id, "bin-test");
        let config = EnclaveConfig::load(&cfg).unwrap();
        assert_eq!(v.claims().config_digest, config.digest());
        let m = meta(MODEL, 100);
        let (req, session, id) = seal(&v, &m, &chat_body(&user("zebrafish-secret-prompt")));
        let r = c.exchange(1, &req, session).await;
        assert_eq!(r.receipt(&v, id, &m).1.completion_tokens, 5);
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the binary did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code.code(), Some(0));
    reader.join().unwrap();
    let rest = rx.try_iter().collect::<Vec<_>>().join("\n");
    assert!(rest.contains("SIGTERM"), "{rest}");
    assert!(rest.contains("request served"), "{rest}");
    assert!(
        !rest.contains("zebrafish") && !rest.contains(DeterministicTestBackend::PREAMBLE),
        "plaintext never reaches the log"
    );
    assert!(!sock.exists(), "the socket file is removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_binary_refuses_usage_errors_with_exit_64() {
    let bin = env!("CARGO_BIN_EXE_cocoon-enclave");
    for args in [
        vec!["--listen", "unix:/tmp/never.sock", "--tee", "sev-snp"],
        vec!["--listen", "unix:/tmp/never.sock"],
        vec!["--listen", "tcp:1", "--tee", "simulated"],
        vec!["--tee", "simulated"],
        vec!["--no-such-flag"],
    ] {
        let out = Command::new(bin).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty(), "{args:?}: a message");
        assert!(!err.contains("ready "), "{args:?}");
    }
    // A hardware provider whose interface is absent: a boot failure (70)
    // that says what is missing, and no simulated-TEE banner.
    let out = Command::new(bin)
        .args([
            "--tee",
            "configfs-tsm",
            "--tsm-root",
            "/nonexistent/tsm/report",
            "--listen",
            "vsock:5000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(70));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/tsm/report is not a directory: configfs-tsm needs Linux 6.7"),
        "{err}"
    );
    assert!(!err.contains("SIMULATED"), "{err}");
    // It finds libtorch by itself (its rpath, enclave/build.rs): no
    // LD_LIBRARY_PATH needed.
    let help = Command::new(bin)
        .arg("--help")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert_eq!(
        help.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("configfs-tsm") && help.contains("NOT CONFIDENTIAL"),
        "{help}"
    );
    let dir = unique_dir();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "max_concurent = 3\n").unwrap();
    let out = Command::new(bin)
        .args([
            "--tee",
            "simulated",
            "--listen",
            "unix:/tmp/never.sock",
            "--config",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_concurent"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// One line of a wire transcript: who sent it, the stream, the type, the
/// payload's length, and the payload itself where it does not depend on
/// this boot's keys, the clock or random nonces (text with request ids and
/// digests masked, or the price table's bytes).
fn transcript_line(from: &str, f: &Frame) -> String {
    let shown = match f.kind {
        FrameType::Error => {
            let text = String::from_utf8_lossy(&f.payload).to_string();
            let mut out = String::new();
            let mut run = String::new();
            for ch in text.chars().chain(std::iter::once(' ')) {
                if ch.is_ascii_hexdigit() {
                    run.push(ch);
                    continue;
                }
                if run.len() >= 32 {
                    out.push_str("<hex>");
                } else {
                    out.push_str(&run);
                }
                run.clear();
                out.push(ch);
            }
            format!(" text={:?}", out.trim_end())
        }
        FrameType::PriceTable | FrameType::PriceTableRequest | FrameType::Cancel => {
            format!(" payload={}", hex::encode(&f.payload))
        }
        _ => String::new(),
    };
    format!(
        "{from} {} {:?} len={}{shown}",
        f.stream_id,
        f.kind,
        f.payload.len()
    )
}

/// The frames a scripted host exchange puts on the wire, in both
/// directions, compared with the transcript recorded before the connection
/// state machine replaced the hand-written frame handling
/// (`tests/wire/enclave_transcript.txt`; set `COCOON_RECORD_WIRE=1` to
/// write it anew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_exchange_matches_the_recorded_transcript() {
    let te = TestEnclave::start("test_backend_reply_tokens = 5\n").await;
    let mut c = te.connect().await;
    let mut lines: Vec<String> = Vec::new();
    async fn step(
        c: &mut HostConn,
        lines: &mut Vec<String>,
        f: Frame,
        answers: usize,
    ) -> Vec<Frame> {
        lines.push(transcript_line("host", &f));
        c.send(f.stream_id, f.kind, &f.payload).await;
        let mut got = Vec::new();
        for _ in 0..answers {
            let a = c.recv().await.expect("an answer");
            lines.push(transcript_line("enclave", &a));
            got.push(a);
        }
        got
    }
    let ev = step(
        &mut c,
        &mut lines,
        Frame::new(0, FrameType::EvidenceRequest, vec![]),
        1,
    )
    .await;
    let v = verify(&ev[0].payload, &te.policy(), now()).expect("evidence verifies");
    step(
        &mut c,
        &mut lines,
        Frame::new(0, FrameType::PriceTableRequest, vec![]),
        1,
    )
    .await;
    // A chat: 5 tokens, the receipt, the final chunk; then its
    // acknowledgement and the signed tab.
    let m = meta(MODEL, 64);
    let (req, _session, id) = seal(&v, &m, &chat_body(&user("hello there")));
    let got = step(
        &mut c,
        &mut lines,
        Frame::new(1, FrameType::Request, req.clone()),
        7,
    )
    .await;
    assert_eq!(got[5].kind, FrameType::Receipt);
    let ack = cocoon_protocol::tabs::ReceiptAck {
        receipts: vec![(id, m.client_account)],
    };
    step(
        &mut c,
        &mut lines,
        Frame::new(0, FrameType::ReceiptAck, ack.to_bytes()),
        1,
    )
    .await;
    // The same acknowledgement again counts nothing and signs the same tab.
    step(
        &mut c,
        &mut lines,
        Frame::new(0, FrameType::ReceiptAck, ack.to_bytes()),
        1,
    )
    .await;
    // The replayed request, on a fresh stream.
    step(
        &mut c,
        &mut lines,
        Frame::new(2, FrameType::Request, req),
        1,
    )
    .await;
    // Refusals: stream 0, a body that is no signed request, a nonce on
    // stream 0, an acknowledgement off stream 0, a malformed one, a price
    // table request off stream 0.
    step(
        &mut c,
        &mut lines,
        Frame::new(0, FrameType::Request, vec![1]),
        1,
    )
    .await;
    step(
        &mut c,
        &mut lines,
        Frame::new(3, FrameType::Request, vec![0xa0]),
        1,
    )
    .await;
    step(
        &mut c,
        &mut lines,
        Frame::new(0, FrameType::EvidenceRequest, vec![7; 8]),
        1,
    )
    .await;
    step(
        &mut c,
        &mut lines,
        Frame::new(4, FrameType::ReceiptAck, ack.to_bytes()),
        1,
    )
    .await;
    step(
        &mut c,
        &mut lines,
        Frame::new(0, FrameType::ReceiptAck, vec![0xff]),
        1,
    )
    .await;
    step(
        &mut c,
        &mut lines,
        Frame::new(5, FrameType::PriceTableRequest, vec![]),
        1,
    )
    .await;
    // Evidence for a client nonce on a stream of its own.
    step(
        &mut c,
        &mut lines,
        Frame::new(6, FrameType::EvidenceRequest, vec![9; 32]),
        1,
    )
    .await;
    // A cancel for a stream that is not open changes nothing; a second
    // chat on stream 1 (free again) is served.
    step(
        &mut c,
        &mut lines,
        Frame::new(9, FrameType::Cancel, vec![]),
        0,
    )
    .await;
    let (req, _session, _) = seal(&v, &m, &chat_body(&user("again")));
    step(
        &mut c,
        &mut lines,
        Frame::new(1, FrameType::Request, req),
        7,
    )
    .await;
    // A frame only the enclave may send closes the connection.
    step(
        &mut c,
        &mut lines,
        Frame::new(1, FrameType::Receipt, vec![]),
        0,
    )
    .await;
    assert!(
        c.recv().await.is_none(),
        "the enclave closed the connection"
    );
    lines.push("closed".into());
    let got = lines.join("\n") + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wire/enclave_transcript.txt");
    cocoon_test_kit::matches_recording(&path, &got, "the wire exchange");
}
