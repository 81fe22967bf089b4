//! The public HTTP API, as `cocoon_protocol::api` documents it:
//! `GET /v1/evidence`, `POST /v1/requests`, `GET /v1/receipts`, and the
//! probes `/live`, `/ready`, `/metrics`.
//!
//! Owns request admission: the body limit, decoding the sealed request, the
//! routing headers, the account signature, the per-account limits, the
//! replay check, the client's deposit on a host that checks it
//! ([`crate::deposits`]), and turning every refusal into a status with a
//! one-line `text/plain` reason. Forwarding and the receipt rule are `relay`'s. The
//! handlers log request ids, sizes, accounts and models, never a body.
//!
//! Checks run cheapest first, one function per stage: draining (`503`),
//! body size (`413`), decoding (`400`), headers (`400`), no verified
//! enclave (`503`), unknown evidence digest (`409`), account signature
//! (`401`), expiry by the host's clock (`400`), prices (`412`), replay
//! (`409`), payment on a settling host (the authorization's cap, then the
//! deposit on chain: `402`, or `503` when the chain cannot be read),
//! account limits (`429`;
//! after the replay check, so nobody can spend an account's allowance by
//! replaying its requests), a free stream on the enclave (`503`).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cocoon_protocol::account::{
    verify_evidence_nonce, verify_receipts_query, verify_request_auth, AccountId,
    ACCOUNT_SIGNATURE_LEN,
};
use cocoon_protocol::api::{
    ReceiptList, ACCOUNT_KEY_HEADER, ACCOUNT_SIGNATURE_HEADER, ACCOUNT_TIME_HEADER,
    CBOR_CONTENT_TYPE, CHUNKS_CONTENT_TYPE, EVIDENCE_DIGEST_HEADER, EVIDENCE_PATH, LIVE_PATH,
    MAX_RECEIPTS_PER_PAGE, METRICS_PATH, READY_PATH, RECEIPTS_PATH, REQUESTS_PATH,
};
use cocoon_protocol::api::{
    AUTHORIZATION_HEADER, EVIDENCE_NONCE_PATH, MAX_CLIENT_NONCE, PRICES_PATH,
};
use cocoon_protocol::api::{JSON_CONTENT_TYPE, RELEASE_PATH};
use cocoon_protocol::request::SignedRequest;
use cocoon_protocol::seal::{BillingMeta, EvidenceDigest, LifetimeError, SealedRequest};
use cocoon_protocol::settlement::{compress_p256, ContractAddress, SignedAuthorization};
use cocoon_protocol::RequestId;
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{info, warn};

use crate::broker::ReadyEnclave;
use crate::metrics::Outcome;
use crate::ratelimit::AccountPermit;
use crate::relay::{pump, Exchange, Expected, Head};
use crate::timings::{Stage, Timeline};
use crate::App;

/// A refused request: status, metrics outcome, one-line reason, and for
/// `429`/`503` when to retry.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// How it is counted.
    pub outcome: Outcome,
    /// One line, no request content.
    pub reason: String,
    /// Seconds for `retry-after`.
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// A refusal without `retry-after`.
    pub fn new(status: StatusCode, outcome: Outcome, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            outcome,
            reason: reason.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after = Some(secs);
        self
    }
}

/// A one-line `text/plain` answer.
pub(crate) fn text(status: StatusCode, reason: &str) -> Response {
    let mut line = reason.replace(['\n', '\r'], " ");
    line.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        line,
    )
        .into_response()
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = text(self.status, &self.reason);
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// The public router.
pub(crate) fn router(app: Arc<App>) -> Router {
    probes(Router::new())
        .route(EVIDENCE_PATH, get(evidence))
        .route(EVIDENCE_NONCE_PATH, get(nonce_evidence))
        .route(REQUESTS_PATH, post(submit))
        .route(RECEIPTS_PATH, get(receipts))
        .route(PRICES_PATH, get(prices))
        .route(RELEASE_PATH, get(release))
        .fallback(not_found)
        .with_state(app)
}

/// `/live`, `/ready`, `/metrics`.
pub(crate) fn probes(r: Router<Arc<App>>) -> Router<Arc<App>> {
    r.route(LIVE_PATH, get(live))
        .route(READY_PATH, get(ready))
        .route(METRICS_PATH, get(metrics))
}

pub(crate) async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn live() -> Response {
    text(StatusCode::OK, "live")
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.is_draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if app.broker.ready_count() == 0 {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no enclave with verified evidence yet",
        )
    } else {
        text(StatusCode::OK, "ready")
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(app.ledger.stats()),
    )
        .into_response()
}

async fn prices(State(app): State<Arc<App>>) -> Response {
    let now = app.clock.unix_secs();
    let utilisation = app.pricing.publish(now);
    let sheet = crate::pricing::sheet(
        &app.broker.ready_enclaves(),
        utilisation,
        now,
        app.settlement,
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CBOR_CONTENT_TYPE)],
        sheet.to_cbor(),
    )
        .into_response()
}

/// `GET /v1/release`: the release manifest's canonical bytes, exactly as
/// stored (a client hashes them to find the release in the registry).
async fn release(State(app): State<Arc<App>>) -> Response {
    match &app.release_manifest {
        Some(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, JSON_CONTENT_TYPE)],
            bytes.clone(),
        )
            .into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            "this host serves no release manifest (started without --release-manifest)",
        ),
    }
}

async fn evidence(State(app): State<Arc<App>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CBOR_CONTENT_TYPE)],
        app.broker.evidence_list().to_cbor(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct NonceQuery {
    nonce: String,
}

/// `GET /v1/evidence/nonce?nonce=HEX`: a report of the enclave the
/// evidence digest header names, bound to the client's nonce. Signed by an
/// account (so the rate limit is per account), checked for its time like a
/// receipts query.
async fn nonce_evidence(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<NonceQuery>, QueryRejection>,
) -> Response {
    let nonce = match query
        .map_err(|e| format!("bad query: {}", e.body_text()))
        .and_then(|Query(q)| hex::decode(q.nonce).map_err(|_| "the nonce is not hex".into()))
    {
        Ok(n) if (1..=MAX_CLIENT_NONCE).contains(&n.len()) => n,
        Ok(n) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "a client nonce is 1 to {MAX_CLIENT_NONCE} bytes, not {}",
                    n.len()
                ),
            )
        }
        Err(reason) => return text(StatusCode::BAD_REQUEST, &reason),
    };
    let auth = || -> Result<AccountId, String> {
        let (pk, time, sig) = signed_query(&headers)?;
        verify_evidence_nonce(
            &pk,
            &nonce,
            time,
            &sig,
            app.clock.unix_secs(),
            app.limits.receipts_query_max_skew_secs,
        )
        .map_err(|e| e.to_string())
    };
    let account = match auth() {
        Ok(a) => a,
        Err(reason) => return text(StatusCode::UNAUTHORIZED, &reason),
    };
    let digest = match header_str(&headers, EVIDENCE_DIGEST_HEADER)
        .and_then(|v| hex::decode(v).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
    {
        Some(d) => EvidenceDigest(d),
        None => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("missing {EVIDENCE_DIGEST_HEADER} header (32 bytes of hex)"),
            )
        }
    };
    let Some(ready) = app.broker.route(&digest) else {
        return text(
            StatusCode::CONFLICT,
            &format!(
                "evidence {} is not served here; fetch /v1/evidence again",
                hex::encode(digest.0)
            ),
        );
    };
    let _permit = match app.nonce_limiter.admit(account, app.clock.instant()) {
        Ok(p) => p,
        Err(l) => {
            let mut r = text(StatusCode::TOO_MANY_REQUESTS, &l.reason);
            if let Ok(v) = header::HeaderValue::from_str(&l.retry_after_secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
    };
    match app.broker.nonce_evidence(&ready, &nonce).await {
        Ok(bundle) => {
            info!(account = %account, enclave = ready.label(), "evidence made for a client nonce");
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, CBOR_CONTENT_TYPE)],
                bundle,
            )
                .into_response()
        }
        Err(e) => {
            warn!(enclave = ready.label(), error = %e, "evidence for a client nonce failed");
            text(
                StatusCode::BAD_GATEWAY,
                &format!("evidence for the nonce could not be made: {e}"),
            )
        }
    }
}

/// The account key, time and signature headers of a signed query
/// (receipts, evidence for a nonce), decoded.
fn signed_query(headers: &HeaderMap) -> Result<(Vec<u8>, u64, Vec<u8>), String> {
    let pk = header_str(headers, ACCOUNT_KEY_HEADER)
        .and_then(|v| hex::decode(v).ok())
        .ok_or(format!("missing or non-hex {ACCOUNT_KEY_HEADER} header"))?;
    let time = header_str(headers, ACCOUNT_TIME_HEADER)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or(format!(
            "missing or non-decimal {ACCOUNT_TIME_HEADER} header"
        ))?;
    let sig = header_str(headers, ACCOUNT_SIGNATURE_HEADER)
        .and_then(|v| hex::decode(v).ok())
        .ok_or(format!(
            "missing or non-hex {ACCOUNT_SIGNATURE_HEADER} header"
        ))?;
    Ok((pk, time, sig))
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn hex_header(
    h: &HeaderMap,
    name: &str,
    status: StatusCode,
    outcome: Outcome,
) -> Result<Vec<u8>, Refusal> {
    let v = header_str(h, name)
        .ok_or_else(|| Refusal::new(status, outcome, format!("missing {name} header")))?;
    hex::decode(v).map_err(|_| Refusal::new(status, outcome, format!("{name} is not hex")))
}

async fn submit(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let timeline = Timeline::start();
    match admit_and_forward(&app, &headers, body, timeline).await {
        Ok(r) => r,
        Err(refusal) => {
            app.metrics
                .request(refusal.outcome, refusal.status.as_u16());
            info!(status = refusal.status.as_u16(), reason = %refusal.reason, "request refused");
            refusal.into_response()
        }
    }
}

/// Admission, stage by stage (cheapest first, as the module doc lists
/// them), then forwarding. Each stage refuses with its own status. The
/// timeline counts the time of each in its [`Stage`].
async fn admit_and_forward(
    app: &Arc<App>,
    headers: &HeaderMap,
    body: Body,
    mut t: Timeline,
) -> Result<Response, Refusal> {
    refuse_while_draining(app)?;
    let bytes = read_body(app, headers, body).await?;
    let request = decode_request(bytes)?;
    t.lap(Stage::Http);
    let (digest, ready) = route(app, headers)?;
    t.lap(Stage::Route);
    let signer = authenticate(headers, &request)?;
    refuse_expired(&request.meta, app.clock.unix_secs())?;
    check_prices(app, &ready, &request.meta)?;
    let replay = claim_request_id(app, request.request_id)?;
    let reservation = reserve_payment(app, &ready, headers, &signer, &request).await?;
    let account = admit_account(app, request.account)?;
    t.lap(Stage::Account);
    let (permit, in_flight) = take_stream(app, &ready).await?;
    let guards = crate::RequestGuards {
        _permit: permit,
        _account: account,
        _in_flight: in_flight,
        _replay: replay,
        reservation,
    };
    forward(app, request, digest, ready, signer, guards, t).await
}

/// `503` for a request that arrives while the host drains.
fn refuse_while_draining(app: &App) -> Result<(), Refusal> {
    if app.is_draining() {
        return Err(unavailable("draining").retry_after(1));
    }
    Ok(())
}

/// A `503` refusal.
fn unavailable(reason: &str) -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Outcome::Unavailable,
        reason,
    )
}

/// A `400` refusal.
fn bad_request(reason: String) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, Outcome::BadRequest, reason)
}

/// A `401` refusal.
fn unauthorized(reason: String) -> Refusal {
    Refusal::new(StatusCode::UNAUTHORIZED, Outcome::Unauthorized, reason)
}

/// The body, bounded by `max_request_bytes` (`413` over it, announced or
/// not; `400` when it cannot be read).
async fn read_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, Refusal> {
    let limit = app.limits.max_request_bytes;
    let too_large = |got: String| {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::TooLarge,
            format!("request body of {got} bytes is over the {limit}-byte limit"),
        )
    };
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large(len.to_string()));
        }
    }
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(too_large("more than that".into()))
        }
        Err(_) => return Err(bad_request("could not read the request body".into())),
    };
    app.metrics.add_bytes_in(bytes.len());
    Ok(bytes)
}

/// A request body decoded: the sealed request's bytes and the billing
/// metadata the host may read.
struct Incoming {
    /// The sealed request as the client sent it.
    bytes: Bytes,
    /// Its readable billing metadata.
    meta: BillingMeta,
    /// Its id (SHA-256 of the sealed request).
    request_id: RequestId,
    /// The paying account the metadata names.
    account: AccountId,
}

/// Decode the sealed request and its billing metadata (`400`).
fn decode_request(bytes: Bytes) -> Result<Incoming, Refusal> {
    let sealed = SealedRequest::from_cbor(&bytes).map_err(|e| bad_request(e.to_string()))?;
    let meta = sealed
        .billing_meta()
        .map_err(|e| bad_request(e.to_string()))?;
    Ok(Incoming {
        request_id: sealed.request_id(),
        account: AccountId(meta.client_account),
        meta,
        bytes,
    })
}

/// The ready enclave the evidence digest header names: `400` without a
/// well-formed header, `503` while no enclave is ready, `409` for evidence
/// not (or no longer) served here.
fn route(app: &App, headers: &HeaderMap) -> Result<(EvidenceDigest, Arc<ReadyEnclave>), Refusal> {
    let digest_bytes = hex_header(
        headers,
        EVIDENCE_DIGEST_HEADER,
        StatusCode::BAD_REQUEST,
        Outcome::BadRequest,
    )?;
    let digest =
        EvidenceDigest(digest_bytes.try_into().map_err(|_| {
            bad_request(format!("{EVIDENCE_DIGEST_HEADER} must be 32 bytes of hex"))
        })?);
    if app.broker.ready_count() == 0 {
        return Err(unavailable("no enclave with verified evidence is ready").retry_after(1));
    }
    let Some(ready) = app.broker.route(&digest) else {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            Outcome::UnknownEvidence,
            format!(
                "evidence {} is not served here; fetch /v1/evidence again",
                hex::encode(digest.0)
            ),
        ));
    };
    Ok((digest, ready))
}

/// The account key and signature that authorise a request.
struct Signer {
    /// The account's public key (SEC1), as sent.
    key: Vec<u8>,
    /// Its signature of the request id.
    signature: [u8; ACCOUNT_SIGNATURE_LEN],
}

/// The paying account signed exactly this request (`401`).
fn authenticate(headers: &HeaderMap, request: &Incoming) -> Result<Signer, Refusal> {
    let key = hex_header(
        headers,
        ACCOUNT_KEY_HEADER,
        StatusCode::UNAUTHORIZED,
        Outcome::Unauthorized,
    )?;
    let sig = hex_header(
        headers,
        ACCOUNT_SIGNATURE_HEADER,
        StatusCode::UNAUTHORIZED,
        Outcome::Unauthorized,
    )?;
    verify_request_auth(&key, &request.account, &request.request_id, &sig)
        .map_err(|e| unauthorized(e.to_string()))?;
    let signature = sig
        .as_slice()
        .try_into()
        .map_err(|_| unauthorized("the account signature is not 64 bytes".into()))?;
    Ok(Signer { key, signature })
}

/// `400` for a request that lapsed by this host's clock (`now`, Unix
/// seconds; the enclave would refuse it too: it checks expiry and lifetime
/// by its own clock).
fn refuse_expired(meta: &BillingMeta, now: u64) -> Result<(), Refusal> {
    if let Err(e @ LifetimeError::Expired { .. }) = meta.check_lifetime(now, u64::MAX) {
        return Err(bad_request(e.to_string()));
    }
    Ok(())
}

/// Prices: exactly the enclave's measured table under a multiplier the
/// host published recently (`412`; the enclave checks the table again).
fn check_prices(app: &App, ready: &ReadyEnclave, meta: &BillingMeta) -> Result<(), Refusal> {
    let floor = app.pricing.floor(app.clock.unix_secs());
    crate::pricing::check_prices(ready, meta, floor).map_err(|reason| {
        Refusal::new(
            StatusCode::PRECONDITION_FAILED,
            Outcome::PriceRefused,
            reason,
        )
    })
}

/// Replay: `409` for a request id in flight now or already billed (`500`
/// when the ledger cannot say). The guard keeps the id in flight.
fn claim_request_id(app: &Arc<App>, request_id: RequestId) -> Result<crate::ReplayGuard, Refusal> {
    let replayed = || Refusal::new(StatusCode::CONFLICT, Outcome::Replayed, "replayed request");
    let guard = app.mark_in_flight(request_id).ok_or_else(replayed)?;
    match app.ledger.contains_now(request_id) {
        Ok(false) => Ok(guard),
        Ok(true) => Err(replayed()),
        Err(e) => {
            warn!(error = %e, "ledger read failed");
            Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Outcome::Internal,
                "the ledger cannot be read",
            ))
        }
    }
}

/// The account's rate and stream limits (`429`; after the replay check,
/// so replaying someone's request cannot spend their allowance).
fn admit_account(app: &App, account: AccountId) -> Result<AccountPermit, Refusal> {
    app.limiter
        .admit(account, app.clock.instant())
        .map_err(|l| {
            Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                Outcome::RateLimited,
                l.reason,
            )
            .retry_after(l.retry_after_secs)
        })
}

/// A stream on the enclave within the queue timeout (`503` when busy),
/// counted in flight before the drain check, so a drain that starts now
/// either refuses this request (`503`) or waits for it.
async fn take_stream(
    app: &Arc<App>,
    ready: &ReadyEnclave,
) -> Result<(OwnedSemaphorePermit, crate::InFlightGuard), Refusal> {
    let permit = tokio::time::timeout(
        app.limits.queue_timeout,
        ready.permits().clone().acquire_owned(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or_else(|| unavailable("the enclave is busy").retry_after(1))?;
    let in_flight = app.in_flight_guard();
    refuse_while_draining(app)?;
    Ok((permit, in_flight))
}

/// Forward an admitted request (with the account's signature: the enclave
/// checks it again) and answer with the stream the relay starts (`502`
/// when the enclave cannot be reached).
async fn forward(
    app: &Arc<App>,
    request: Incoming,
    digest: EvidenceDigest,
    ready: Arc<ReadyEnclave>,
    signer: Signer,
    guards: crate::RequestGuards,
    mut timeline: Timeline,
) -> Result<Response, Refusal> {
    info!(
        request_id = %request.request_id,
        account = %request.account,
        model = %request.meta.model,
        max_tokens = request.meta.max_tokens,
        bytes = request.bytes.len(),
        enclave = ready.label(),
        "forwarding request"
    );
    let signed = SignedRequest {
        sealed: request.bytes.to_vec(),
        evidence: digest.0,
        account_key: signer.key,
        signature: signer.signature,
    }
    .to_cbor();
    let stream = ready.connection().open_stream(&signed).await.map_err(|e| {
        Refusal::new(
            StatusCode::BAD_GATEWAY,
            Outcome::EnclaveError,
            format!("could not forward to the enclave: {e}"),
        )
    })?;
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    timeline.lap(Stage::Route);
    let exchange = Exchange {
        app: app.clone(),
        ready,
        stream,
        expected: Expected::of(request.request_id, &request.meta),
        sent_at: tokio::time::Instant::now(),
        timeline,
        guards: Some(guards),
    };
    tokio::spawn(pump(exchange, head_tx));
    answer(head_rx).await
}

/// The relay's first word on a forwarded request: the streamed body, or
/// its refusal (`500` when it ended without one).
async fn answer(head: tokio::sync::oneshot::Receiver<Head>) -> Result<Response, Refusal> {
    match head.await {
        Ok(Head::Stream(rx)) => {
            // The body ends with the record marked last, at once (hyper
            // writes it and the end of the chunked body together).
            let stream = futures_util::stream::unfold(Some(rx), |rx| async move {
                let mut rx = rx?;
                let r = rx.recv().await?;
                let rest = (!r.last).then_some(rx);
                Some((Ok::<_, std::convert::Infallible>(r.bytes), rest))
            });
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, CHUNKS_CONTENT_TYPE)],
                Body::from_stream(stream),
            )
                .into_response())
        }
        Ok(Head::Fail(r)) => Err(r),
        Err(_) => Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Outcome::Internal,
            "the request ended without an answer",
        )),
    }
}

/// Payment, on a settling host: the account's authorization of this
/// enclave's key must leave room for the request's worst-case cost (`402`;
/// `500` when the ledger fails). Nothing to check on a host that does not
/// settle.
async fn reserve_payment(
    app: &Arc<App>,
    ready: &ReadyEnclave,
    headers: &HeaderMap,
    signer: &Signer,
    request: &Incoming,
) -> Result<Option<crate::Reservation>, Refusal> {
    let Some(contract) = app.settlement else {
        return Ok(None);
    };
    let key = ready.receipt_public_key().to_vec();
    let auth = check_authorization(headers, &signer.key, &request.meta, contract, &key)?;
    let cap = stored_cap(app, &key, &signer.key, &request.meta, &auth).await?;
    let account = request.meta.client_account;
    if !app.spend.known(&key, &account) {
        let committed = app
            .ledger
            .spent(key.clone(), account)
            .await
            .map_err(ledger_failed)?;
        app.spend.load(&key, &account, committed);
    }
    let cost = crate::pricing::max_cost(&request.meta, request.bytes.len());
    app.spend
        .reserve(&key, &account, cost, cap)
        .map_err(|spent| {
            payment_required(format!(
                "the authorization's cap of {cap} nanoton for this enclave would be passed: {spent} spent or reserved, this request may cost up to {cost}; sign a higher cap"
            ))
        })?;
    let mut reservation = crate::Reservation {
        app: app.clone(),
        key,
        account,
        reserved: cost,
        charged: std::sync::atomic::AtomicU64::new(0),
        deposit: None,
    };
    // The cap's reservation is given back (the guard's drop) if the
    // deposit refuses.
    if let Some(deposits) = &app.deposits {
        let hold = deposits
            .reserve(&app.ledger, &app.metrics, &app.clock, account, cost)
            .await
            .map_err(deposit_refused)?;
        reservation.deposit = Some(hold);
    }
    Ok(Some(reservation))
}

/// The refusal of the deposit check: `402` when the deposit does not cover
/// the request, `503` (retry in a few seconds) when the chain cannot be
/// read, `500` when the ledger cannot.
fn deposit_refused(r: crate::deposits::DepositRefusal) -> Refusal {
    use crate::deposits::DepositRefusal as R;
    match r {
        R::NoDeposit { .. } | R::Insufficient { .. } => payment_required(r.to_string()),
        R::ChainUnavailable(_) => {
            warn!(reason = %r, "deposit check failed");
            unavailable(&r.to_string()).retry_after(5)
        }
        R::Ledger(e) => ledger_failed(e),
    }
}

/// A `402` refusal.
fn payment_required(reason: String) -> Refusal {
    Refusal::new(
        StatusCode::PAYMENT_REQUIRED,
        Outcome::PaymentRequired,
        reason,
    )
}

/// The `500` of a ledger failure during payment admission.
fn ledger_failed(e: crate::ledger::LedgerError) -> Refusal {
    warn!(error = %e, "ledger failed during payment admission");
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        Outcome::Internal,
        "the ledger cannot be used",
    )
}

/// The authorization header: signed by the request's account key, for
/// this account, this host's contract and the enclave receipt key `key`
/// the request is sealed to (`402`).
fn check_authorization(
    headers: &HeaderMap,
    client_key: &[u8],
    meta: &BillingMeta,
    contract: ContractAddress,
    key: &[u8],
) -> Result<SignedAuthorization, Refusal> {
    let raw = hex_header(
        headers,
        AUTHORIZATION_HEADER,
        StatusCode::PAYMENT_REQUIRED,
        Outcome::PaymentRequired,
    )?;
    let auth = SignedAuthorization::from_bytes(&raw)
        .map_err(|e| payment_required(format!("{AUTHORIZATION_HEADER}: {e}")))?;
    auth.verify(client_key)
        .map_err(|e| payment_required(format!("{AUTHORIZATION_HEADER}: {e}")))?;
    if auth.auth.account != meta.client_account {
        return Err(payment_required(
            "the authorization names another account".into(),
        ));
    }
    if auth.auth.contract != contract {
        return Err(payment_required(format!(
            "the authorization is for contract {}, this host settles with {contract}",
            auth.auth.contract
        )));
    }
    if compress_p256(key).ok() != Some(auth.auth.enclave_key) {
        return Err(payment_required(
            "the authorization names another enclave receipt key than the one this request is sealed to".into(),
        ));
    }
    Ok(auth)
}

/// The cap in force for (`key`, the account): the stored one, raised to
/// this authorization's (a durable write only when the cap rises: clients
/// send the same authorization with every request).
async fn stored_cap(
    app: &App,
    key: &[u8],
    client_key: &[u8],
    meta: &BillingMeta,
    auth: &SignedAuthorization,
) -> Result<u64, Refusal> {
    match app.spend.cap(key, &meta.client_account) {
        Some(stored) if stored >= auth.auth.cap => Ok(stored),
        _ => {
            let cap = app
                .ledger
                .store_authorization(
                    key.to_vec(),
                    crate::ledger::StoredAuthorization {
                        account: meta.client_account,
                        cap: auth.auth.cap,
                        signed: auth.to_bytes().to_vec(),
                        client_public_key: client_key.to_vec(),
                    },
                )
                .await
                .map_err(ledger_failed)?;
            app.spend.set_cap(key, &meta.client_account, cap);
            Ok(cap)
        }
    }
}

#[derive(Debug, Deserialize)]
struct ReceiptsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn receipts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<ReceiptsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("bad query: {}", e.body_text()),
            )
        }
    };
    let auth = || -> Result<AccountId, String> {
        let (pk, time, sig) = signed_query(&headers)?;
        verify_receipts_query(
            &pk,
            time,
            &sig,
            app.clock.unix_secs(),
            app.limits.receipts_query_max_skew_secs,
        )
        .map_err(|e| e.to_string())
    };
    let account = match auth() {
        Ok(a) => a,
        Err(reason) => return text(StatusCode::UNAUTHORIZED, &reason),
    };
    let limit = q
        .limit
        .unwrap_or(MAX_RECEIPTS_PER_PAGE)
        .min(MAX_RECEIPTS_PER_PAGE);
    match app.ledger.receipts_for(account.0, q.after, limit).await {
        Ok(entries) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, CBOR_CONTENT_TYPE)],
            ReceiptList(entries).to_cbor(),
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "ledger read failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the ledger cannot be read",
            )
        }
    }
}
