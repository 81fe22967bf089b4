//! An in-test provider: the host agent's HTTP API (`cocoon_protocol::api`)
//! served with axum on 127.0.0.1:0 over a simulated enclave built from
//! `cocoon-protocol` and `cocoon-attestation` directly (no host-agent or
//! enclave crate), that can misbehave on demand.
//!
//! The simulated enclave does what the real one does: its keys are made at
//! "boot", its claims name them, a simulated report binds the claims
//! (`report_data = claims_report_data(claims)`) and is signed with ECDSA
//! P-256 by a key inside it. A request is opened with `open_request`, the
//! answer is streamed as `ResponseEvent` chunks sealed by the request's
//! `ResponseSealer`, and the last chunk carries a receipt signed by the
//! claims' receipt key.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cocoon_attestation::bundle::{Claims, ModelDigest};
use cocoon_attestation::simulated::SimulatedReport;
use cocoon_protocol::account::{verify_receipts_query, verify_request_auth, AccountId};
use cocoon_protocol::api::{
    encode_chunk_record, EvidenceList, ReceiptEntry, ReceiptList, ACCOUNT_KEY_HEADER,
    ACCOUNT_SIGNATURE_HEADER, ACCOUNT_TIME_HEADER, CBOR_CONTENT_TYPE, CHUNKS_CONTENT_TYPE,
    EVIDENCE_DIGEST_HEADER,
};
use cocoon_protocol::message::{FinishReason, InferenceRequest, RefusalCode, ResponseEvent};
use cocoon_protocol::rand_core::OsRng;
use cocoon_protocol::receipt::{ReceiptSigner, UnitPrice, UsageReceipt};
use cocoon_protocol::seal::{open_request, EvidenceDigest, HpkeSecretKey, SealedRequest};
use cocoon_protocol::RequestId;
use cocoon_verifier::Policy;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};

/// The simulated launch measurement.
pub use cocoon_test_kit::simulated::{self, MEASUREMENT};
/// The model the test enclave serves.
pub const MODEL: &str = "tiny-chat";
/// The embeddings model it serves.
pub const EMBED_MODEL: &str = "tiny-embed";
/// Prices in nanoton per token.
pub const PRICE: UnitPrice = UnitPrice {
    prompt: 100,
    cached: 100,
    completion: 300,
};

/// A policy that opts in to the simulated TEE and pins its measurement.
pub fn sim_policy_toml() -> String {
    simulated::policy_toml(Some(&MEASUREMENT))
}

/// A policy that opts in to the simulated TEE.
pub fn sim_policy() -> Policy {
    simulated::policy(Some(&MEASUREMENT))
}

/// A production-shaped policy: SEV-SNP only, no simulated opt-in.
pub fn default_policy_toml() -> String {
    "release = \"cocoon-test\"\nmax_evidence_age = \"skip\"\n[snp]\nmeasurements = \"skip\"\nmin_tcb = \"skip\"\nvmpl = 0\nreport_data = \"skip\"\nhost_data = \"skip\"\nid_key_digests = \"skip\"\nauthor_key_digests = \"skip\"\nsmt = \"allowed\"\nrevocation = \"skip\"\n".into()
}

/// A production-shaped policy: SEV-SNP only, no simulated opt-in.
pub fn default_policy() -> Policy {
    Policy::from_toml(&default_policy_toml()).unwrap()
}

/// A simulated enclave: keys made at boot, claims naming them, evidence
/// binding the claims.
pub struct SimEnclave {
    pub hpke: HpkeSecretKey,
    pub receipts: ReceiptSigner,
    pub report_key: SigningKey,
    pub claims: Claims,
    pub claims_cbor: Vec<u8>,
    pub bundle: Vec<u8>,
    pub seq: u64,
}

use simulated::{bundle as bundle_bytes, sign as sign_report};

impl SimEnclave {
    pub fn boot(epoch: u64) -> SimEnclave {
        SimEnclave::boot_priced(epoch, PRICE)
    }

    /// An enclave whose claims bind `price` for both models.
    pub fn boot_priced(epoch: u64, price: UnitPrice) -> SimEnclave {
        let hpke = HpkeSecretKey::generate(&mut OsRng);
        let receipts = ReceiptSigner::generate(&mut OsRng);
        let report_key = SigningKey::random(&mut OsRng);
        let claims = Claims {
            hpke_public_key: hpke.public_key().to_bytes().to_vec(),
            receipt_public_key: receipts.public_key_sec1(),
            image_id: "cocoon-test-image".into(),
            model_digests: vec![
                ModelDigest {
                    name: MODEL.into(),
                    sha256: [0x11; 32],
                    version: None,
                    tokenizer_sha256: None,
                },
                ModelDigest {
                    name: EMBED_MODEL.into(),
                    sha256: [0x22; 32],
                    version: None,
                    tokenizer_sha256: None,
                },
            ],
            config_digest: [4; 32],
            gpu_evidence_digest: None,
            epoch,
            issued_at: epoch,
            refresh: 0,
            client_nonce: None,
            disk_verity_root: None,
            // The provider's prices, as a release that takes them from the
            // provider binds them: what the sheet must offer.
            provider_settings: Some(
                cocoon_protocol::settings::ProviderSettings {
                    prices: [(MODEL.to_string(), price), (EMBED_MODEL.to_string(), price)]
                        .into_iter()
                        .collect(),
                    payment_contract: None,
                    max_concurrent: None,
                }
                .to_cbor(),
            ),
        };
        let claims_cbor = claims.to_cbor();
        let (report, signature) =
            sign_report(&Self::report(&report_key, &claims_cbor), &report_key);
        let bundle = bundle_bytes(report, signature, claims_cbor.clone());
        SimEnclave {
            hpke,
            receipts,
            report_key,
            claims,
            claims_cbor,
            bundle,
            seq: 0,
        }
    }

    fn report(key: &SigningKey, claims_cbor: &[u8]) -> SimulatedReport {
        simulated::report(claims_cbor, key, MEASUREMENT)
    }

    pub fn digest(&self) -> EvidenceDigest {
        EvidenceDigest::of_claims(&self.claims_cbor)
    }

    /// This enclave's genuine report and signature with `claims_cbor`
    /// spliced in: the claims are not the ones the report binds.
    pub fn spliced_bundle(&self, claims_cbor: &[u8]) -> Vec<u8> {
        let (report, signature) = sign_report(
            &Self::report(&self.report_key, &self.claims_cbor),
            &self.report_key,
        );
        bundle_bytes(report, signature, claims_cbor.to_vec())
    }

    /// A bundle whose report signature does not verify.
    pub fn badly_signed_bundle(&self) -> Vec<u8> {
        let (report, _) = sign_report(
            &Self::report(&self.report_key, &self.claims_cbor),
            &self.report_key,
        );
        let other = SigningKey::random(&mut OsRng);
        let sig: Signature = other.sign(&report);
        bundle_bytes(report, sig.to_bytes().to_vec(), self.claims_cbor.clone())
    }
}

/// What the provider does wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misbehavior {
    None,
    /// Flip one bit of chunk `n`'s ciphertext.
    FlipCiphertextBit(usize),
    /// Leave out chunk `n`.
    DropChunk(usize),
    /// Send chunks `a` and `b` in each other's place.
    SwapChunks(usize, usize),
    /// Send chunk `n` twice.
    DuplicateChunk(usize),
    /// End the body before the last chunk.
    DropLastChunk,
    /// End the body in the middle of the last chunk record.
    CutMidRecord,
    /// Add a record after the last chunk.
    AppendAfterLast,
    /// Answer with the chunks of the previous response.
    ReplayPreviousResponse,
    /// The receipt is signed with a key that is not the attested one.
    ForgeReceipt,
    /// The receipt's payload is edited after signing (more tokens).
    InflateSignedReceipt,
    /// The (attested) enclave signs more completion tokens than allowed.
    OverLimitTokens,
    /// The enclave signs a receipt naming another request.
    WrongRequestId,
    /// The enclave signs a receipt billing another account.
    WrongAccount,
    /// The enclave signs a receipt naming another model.
    WrongModel,
    /// The enclave ends with an error.
    EnclaveError,
    /// The evidence list shows another genuine enclave, while requests go to
    /// this one.
    SwapEvidence,
    /// The evidence list shows this enclave's report with the other
    /// enclave's claims (keys) spliced in.
    SpliceClaims,
    /// `429` with `retry-after: 7`.
    RateLimit,
    /// The price sheet offers a base prompt price one nanoton above the one
    /// the enclave's verified claims bind (its provider settings).
    SheetPriceNotClaimed,
    /// Before the next request, restart the enclave (new keys, new
    /// evidence): the request sealed to the old keys gets `409`.
    RestartOnNextRequest,
    /// Always `409`.
    AlwaysConflict,
    /// Answer every request with this status.
    Status(u16),
    /// The ledger lists a receipt of another account.
    LedgerForeignReceipt,
    /// The ledger lists a receipt whose signature does not verify.
    LedgerForgedReceipt,
    /// The (attested) enclave charges twice the prices the request
    /// accepted.
    Overcharge,
}

pub struct ProviderState {
    pub enclave: SimEnclave,
    pub other: SimEnclave,
    pub misbehavior: Misbehavior,
    /// More bundles listed after the enclave's own.
    pub extra_evidence: Vec<Vec<u8>>,
    pub posts: usize,
    pub evidence_gets: usize,
    /// Requests the enclave opened.
    pub opened: usize,
    /// Why requests did not open.
    pub open_failures: Vec<String>,
    /// Evidence digests requests named.
    pub digests_seen: Vec<String>,
    pub ledger: Vec<(AccountId, ReceiptEntry)>,
    pub last_response: Option<Vec<Vec<u8>>>,
    /// Text pieces of every chat answer (before the echo).
    pub answer: Vec<String>,
    /// Pause between streamed records.
    pub pace: Duration,
    /// The prices the enclave's claims bind and the sheet offers.
    pub price: UnitPrice,
    /// The release manifest served at `GET /v1/release` (404 when none).
    pub release: Option<Vec<u8>>,
}

impl ProviderState {
    pub fn restart(&mut self) {
        let epoch = self.enclave.claims.epoch + 1;
        self.enclave = SimEnclave::boot_priced(epoch, self.price);
    }
}

pub struct TestProvider {
    pub url: String,
    pub state: Arc<Mutex<ProviderState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

type Shared = Arc<Mutex<ProviderState>>;

impl TestProvider {
    pub async fn start() -> TestProvider {
        TestProvider::start_priced(PRICE, Duration::from_millis(2)).await
    }

    /// A provider whose enclave binds `price` and that pauses `pace`
    /// before each streamed record (so the first part comes `pace` after
    /// the request).
    pub async fn start_priced(price: UnitPrice, pace: Duration) -> TestProvider {
        let state = Arc::new(Mutex::new(ProviderState {
            enclave: SimEnclave::boot_priced(1, price),
            other: SimEnclave::boot(1),
            misbehavior: Misbehavior::None,
            extra_evidence: vec![],
            posts: 0,
            evidence_gets: 0,
            opened: 0,
            open_failures: vec![],
            digests_seen: vec![],
            ledger: vec![],
            last_response: None,
            answer: vec!["The answer ".into(), "is ".into(), "42.".into()],
            pace,
            price,
            release: None,
        }));
        let app = Router::new()
            .route("/v1/evidence", get(evidence))
            .route("/v1/requests", post(requests))
            .route("/v1/receipts", get(receipts))
            .route("/v1/prices", get(prices))
            .route("/v1/release", get(release))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Chunk records are small writes: send them at once (no Nagle), as
        // the host agent does.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        TestProvider {
            url,
            state,
            shutdown: Some(tx),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, ProviderState> {
        self.state.lock().unwrap()
    }

    pub fn set(&self, m: Misbehavior) {
        self.state().misbehavior = m;
    }

    pub fn posts(&self) -> usize {
        self.state().posts
    }

    pub fn evidence_gets(&self) -> usize {
        self.state().evidence_gets
    }

    pub fn opened(&self) -> usize {
        self.state().opened
    }

    pub fn digest(&self) -> EvidenceDigest {
        self.state().enclave.digest()
    }

    pub fn restart(&self) {
        self.state().restart();
    }
}

fn text(status: StatusCode, reason: &str) -> Response {
    (status, format!("{reason}\n")).into_response()
}

async fn evidence(State(s): State<Shared>) -> Response {
    let mut st = s.lock().unwrap();
    st.evidence_gets += 1;
    let mut list = match st.misbehavior {
        Misbehavior::SwapEvidence => vec![st.other.bundle.clone()],
        Misbehavior::SpliceClaims => vec![st.enclave.spliced_bundle(&st.other.claims_cbor)],
        _ => vec![st.enclave.bundle.clone()],
    };
    list.extend(st.extra_evidence.iter().cloned());
    (
        StatusCode::OK,
        [("content-type", CBOR_CONTENT_TYPE)],
        EvidenceList(list).to_cbor(),
    )
        .into_response()
}

async fn release(State(s): State<Shared>) -> Response {
    match s.lock().unwrap().release.clone() {
        Some(b) => (StatusCode::OK, [("content-type", "application/json")], b).into_response(),
        None => text(StatusCode::NOT_FOUND, "no release manifest"),
    }
}

/// A sheet with every listed enclave at [`PRICE`], multiplier 1.
async fn prices(State(s): State<Shared>) -> Response {
    use cocoon_protocol::pricing::{PriceSheet, PriceTable, SheetEntry};
    let st = s.lock().unwrap();
    let offered = if st.misbehavior == Misbehavior::SheetPriceNotClaimed {
        UnitPrice {
            prompt: st.price.prompt + 1,
            ..st.price
        }
    } else {
        st.price
    };
    let table = PriceTable {
        models: [
            (MODEL.to_string(), offered),
            (EMBED_MODEL.to_string(), st.price),
        ]
        .into_iter()
        .collect(),
        min_multiplier_milli: 1000,
        max_multiplier_milli: 3000,
    };
    let enclaves = [st.enclave.digest(), st.other.digest()]
        .into_iter()
        .map(|d| SheetEntry {
            evidence_digest: d.0,
            table: table.clone(),
            multiplier_milli: 1000,
        })
        .collect();
    let sheet = PriceSheet {
        quote_id: "q-test".into(),
        issued_at: 1_795_000_000,
        valid_until: 1_795_000_060,
        utilisation_milli: 0,
        enclaves,
        settlement: None,
    };
    (
        StatusCode::OK,
        [("content-type", CBOR_CONTENT_TYPE)],
        sheet.to_cbor(),
    )
        .into_response()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

async fn requests(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (records, pace) = {
        let mut st = s.lock().unwrap();
        match serve_request(&mut st, &headers, &body) {
            Ok(r) => (r, st.pace),
            Err(resp) => return resp,
        }
    };
    let stream = futures_util::stream::unfold(records.into_iter(), move |mut it| async move {
        let next = it.next()?;
        tokio::time::sleep(pace).await;
        Some((Ok::<Bytes, std::convert::Infallible>(Bytes::from(next)), it))
    });
    (
        StatusCode::OK,
        [("content-type", CHUNKS_CONTENT_TYPE)],
        Body::from_stream(stream),
    )
        .into_response()
}

// The error is the HTTP answer itself; its size does not matter in a test.
#[allow(clippy::result_large_err)]
fn serve_request(
    st: &mut ProviderState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<Vec<u8>>, Response> {
    st.posts += 1;
    match st.misbehavior {
        Misbehavior::RateLimit => {
            let mut r = text(
                StatusCode::TOO_MANY_REQUESTS,
                "rate limited: 10 requests per minute for this account",
            );
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
            return Err(r);
        }
        Misbehavior::AlwaysConflict => {
            return Err(text(
                StatusCode::CONFLICT,
                "evidence digest not served here (fetch the evidence again)",
            ))
        }
        Misbehavior::Status(code) => {
            return Err(text(
                StatusCode::from_u16(code).unwrap(),
                &format!("status {code} on demand"),
            ))
        }
        Misbehavior::RestartOnNextRequest => {
            st.restart();
            st.misbehavior = Misbehavior::None;
        }
        _ => {}
    }
    let digest = header(headers, EVIDENCE_DIGEST_HEADER)
        .unwrap_or("")
        .to_string();
    st.digests_seen.push(digest.clone());
    // A misbehaving host that routes by nothing: it forwards the request to
    // its own enclave whatever digest it was sealed to.
    if st.misbehavior != Misbehavior::SwapEvidence
        && digest != hex::encode(st.enclave.digest().as_bytes())
    {
        return Err(text(
            StatusCode::CONFLICT,
            "evidence digest not served here (fetch the evidence again)",
        ));
    }
    let sealed = SealedRequest::from_cbor(body)
        .map_err(|e| text(StatusCode::BAD_REQUEST, &format!("malformed request: {e}")))?;
    let meta = sealed
        .billing_meta()
        .map_err(|e| text(StatusCode::BAD_REQUEST, &format!("malformed metadata: {e}")))?;
    let key = hex::decode(header(headers, ACCOUNT_KEY_HEADER).unwrap_or(""))
        .map_err(|_| text(StatusCode::UNAUTHORIZED, "bad account key"))?;
    let sig = hex::decode(header(headers, ACCOUNT_SIGNATURE_HEADER).unwrap_or(""))
        .map_err(|_| text(StatusCode::UNAUTHORIZED, "bad account signature"))?;
    verify_request_auth(
        &key,
        &AccountId(meta.client_account),
        &sealed.request_id(),
        &sig,
    )
    .map_err(|e| text(StatusCode::UNAUTHORIZED, &e.to_string()))?;

    if st.misbehavior == Misbehavior::ReplayPreviousResponse {
        if let Some(prev) = st.last_response.clone() {
            return Ok(records(&prev));
        }
    }

    // The enclave.
    let digest = st.enclave.digest();
    let (meta, plaintext, session) = match open_request(&st.enclave.hpke, &digest, &sealed) {
        Ok(v) => v,
        Err(e) => {
            st.open_failures.push(e.to_string());
            return Err(text(
                StatusCode::BAD_GATEWAY,
                &format!("the enclave refused the request: {e}"),
            ));
        }
    };
    st.opened += 1;
    let request = InferenceRequest::from_cbor(&plaintext).unwrap();
    let served = st
        .enclave
        .claims
        .model_digests
        .iter()
        .any(|m| m.name == meta.model);
    let mut events = Vec::new();
    let (mut prompt_tokens, mut completion_tokens, mut finish) = match (&request, served) {
        (_, false) => (
            0,
            0,
            FinishReason::Refused {
                code: RefusalCode::ModelNotFound,
                message: format!("unknown model {:?}", meta.model),
            },
        ),
        (InferenceRequest::Chat { messages, .. }, true) => {
            let prompt = messages.iter().map(|m| words(&m.content)).sum::<u64>();
            let last = messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default();
            let mut pieces = st.answer.clone();
            pieces.push(format!(" (you asked: {last})"));
            let mut finish = FinishReason::Stop;
            if pieces.len() > meta.max_tokens as usize {
                pieces.truncate(meta.max_tokens as usize);
                finish = FinishReason::Length;
            }
            let n = pieces.len() as u64;
            events.extend(pieces.into_iter().map(ResponseEvent::Text));
            (prompt, n, finish)
        }
        (InferenceRequest::Embeddings { inputs }, true) => {
            for (i, input) in inputs.iter().enumerate() {
                events.push(ResponseEvent::Embedding {
                    index: i as u32,
                    vector: vec![input.len() as f32, i as f32, 0.5],
                });
            }
            (inputs.iter().map(|s| words(s)).sum(), 0, FinishReason::Stop)
        }
        _ => (
            0,
            0,
            FinishReason::Refused {
                code: RefusalCode::InvalidRequest,
                message: "unsupported request".into(),
            },
        ),
    };
    if st.misbehavior == Misbehavior::EnclaveError {
        events.clear();
        completion_tokens = 0;
        prompt_tokens = 0;
        finish = FinishReason::Failed("the model backend failed".into());
    }
    st.enclave.seq += 1;
    let request_id = session.request_id();
    let mut receipt = UsageReceipt {
        request_id,
        model: meta.model.clone(),
        prompt_tokens,
        cached_tokens: 0,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        unit_price: meta.unit_price,
        multiplier_milli: meta.multiplier_milli,
        time: 1_795_000_000 + st.enclave.seq,
        enclave_seq: st.enclave.seq,
        client_account: meta.client_account,
    };
    match st.misbehavior {
        Misbehavior::OverLimitTokens => {
            receipt.completion_tokens = u64::from(meta.max_tokens) + 5;
            receipt.total_tokens = receipt.prompt_tokens + receipt.completion_tokens;
        }
        Misbehavior::WrongRequestId => receipt.request_id = RequestId([0xee; 32]),
        Misbehavior::WrongAccount => receipt.client_account = [0xaa; 32],
        Misbehavior::WrongModel => receipt.model = "expensive-model".into(),
        Misbehavior::Overcharge => {
            receipt.multiplier_milli *= 2;
            receipt.unit_price = receipt.unit_price.scaled(2000).unwrap();
        }
        _ => {}
    }
    let mut receipt_bytes = match st.misbehavior {
        Misbehavior::ForgeReceipt => ReceiptSigner::generate(&mut OsRng).sign(&receipt).unwrap(),
        _ => st.enclave.receipts.sign(&receipt).unwrap(),
    };
    if st.misbehavior == Misbehavior::InflateSignedReceipt {
        receipt_bytes = inflate(&receipt_bytes, &receipt);
    }
    let account = AccountId(meta.client_account);
    let ledger_seq = st.ledger.len() as u64 + 1;
    st.ledger.push((
        account,
        ReceiptEntry {
            ledger_seq,
            receipt: receipt_bytes.clone(),
            receipt_public_key: st.enclave.receipts.public_key_sec1(),
        },
    ));
    events.push(ResponseEvent::End {
        finish,
        receipt: receipt_bytes,
    });
    let mut sealer = session.response_sealer(&mut OsRng).unwrap();
    let n = events.len();
    let mut chunks: Vec<Vec<u8>> = events
        .iter()
        .enumerate()
        .map(|(i, e)| sealer.seal_chunk(&e.to_cbor(), i + 1 == n).unwrap())
        .collect();
    st.last_response = Some(chunks.clone());
    match st.misbehavior.clone() {
        Misbehavior::FlipCiphertextBit(i) => {
            let last = chunks[i].len() - 1;
            chunks[i][last - 20] ^= 0x04;
        }
        Misbehavior::DropChunk(i) => {
            chunks.remove(i);
        }
        Misbehavior::SwapChunks(a, b) => chunks.swap(a, b),
        Misbehavior::DuplicateChunk(i) => {
            let c = chunks[i].clone();
            chunks.insert(i + 1, c);
        }
        Misbehavior::DropLastChunk => {
            chunks.pop();
        }
        _ => {}
    }
    let mut out = records(&chunks);
    match st.misbehavior {
        Misbehavior::CutMidRecord => {
            let last = out.pop().unwrap();
            out.push(last[..last.len() / 2].to_vec());
        }
        Misbehavior::AppendAfterLast => out.push(records(&[vec![0u8; 40]]).remove(0)),
        _ => {}
    }
    Ok(out)
}

/// One chunk record per chunk.
fn records(chunks: &[Vec<u8>]) -> Vec<Vec<u8>> {
    chunks
        .iter()
        .map(|c| {
            let mut r = Vec::new();
            encode_chunk_record(c, &mut r).unwrap();
            r
        })
        .collect()
}

/// The signed receipt with its payload replaced by one billing more
/// tokens, the signature left as it was.
fn inflate(signed: &[u8], receipt: &UsageReceipt) -> Vec<u8> {
    let genuine = receipt.to_cbor();
    // Same CBOR length (values under 24 are one byte), more tokens.
    let mut more = receipt.clone();
    assert!(more.total_tokens < 23, "a small receipt to edit");
    more.prompt_tokens = 23 - more.completion_tokens;
    more.total_tokens = 23;
    let inflated = more.to_cbor();
    // The payload is a byte string inside the COSE structure; swap it.
    let at = signed
        .windows(genuine.len())
        .position(|w| w == genuine.as_slice())
        .unwrap();
    assert_eq!(genuine.len(), inflated.len(), "same-length edit");
    let mut out = signed.to_vec();
    out[at..at + genuine.len()].copy_from_slice(&inflated);
    out
}

async fn receipts(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let st = s.lock().unwrap();
    let key = hex::decode(header(&headers, ACCOUNT_KEY_HEADER).unwrap_or("")).unwrap_or_default();
    let sig =
        hex::decode(header(&headers, ACCOUNT_SIGNATURE_HEADER).unwrap_or("")).unwrap_or_default();
    let time: u64 = header(&headers, ACCOUNT_TIME_HEADER)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let account = match verify_receipts_query(&key, time, &sig, now, 300) {
        Ok(a) => a,
        Err(e) => return text(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let after: u64 = q.get("after").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(100);
    let mut list: Vec<ReceiptEntry> = st
        .ledger
        .iter()
        .filter(|(a, e)| {
            e.ledger_seq > after
                && (*a == account || st.misbehavior == Misbehavior::LedgerForeignReceipt)
        })
        .map(|(_, e)| e.clone())
        .take(limit)
        .collect();
    if st.misbehavior == Misbehavior::LedgerForgedReceipt {
        if let Some(e) = list.last_mut() {
            let other = ReceiptSigner::generate(&mut OsRng);
            let r = cocoon_protocol::receipt::verify_receipt(&e.receipt, &e.receipt_public_key)
                .unwrap();
            e.receipt = other.sign(&r).unwrap();
        }
    }
    (
        StatusCode::OK,
        [("content-type", CBOR_CONTENT_TYPE)],
        ReceiptList(list).to_cbor(),
    )
        .into_response()
}
