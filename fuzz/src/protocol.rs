//! The `frame_decoder`, `sealed_request` and `receipt` targets: the bytes of
//! `cocoon-protocol` that an untrusted host (or a client, for the enclave)
//! controls. Built without default features, so the response AEAD is the
//! pure-Rust `aes-gcm` (no aws-lc C code under the sanitizer).

use std::hint::black_box;
use std::sync::OnceLock;

use cocoon_protocol::frame::{encode, FrameDecoder, FrameError, HEADER_LEN, MAX_PAYLOAD};
use cocoon_protocol::receipt::{verify_receipt, ReceiptSigner, ReceiptVerifier, UsageReceipt};
use cocoon_protocol::request::SignedRequest;
use cocoon_protocol::seal::{
    open_request, BillingMeta, EvidenceDigest, HpkeSecretKey, SealedRequest,
};

/// `frame_decoder`: the first byte picks how the rest is cut into pushes
/// (its low 4 bits + 1 bytes per push, 0 meaning all at once) and whether a
/// decoder with a 256-byte limit is used; the rest is the byte stream.
/// Every frame that comes out must re-encode to exactly the bytes it came
/// from, the decoder must never hold more than it was given, and the same
/// stream pushed whole must give the same frames and the same verdict.
pub fn frame_decoder(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(ctl & 0x0f);
    let small = ctl & 0x10 != 0;
    let new = || {
        if small {
            FrameDecoder::with_max_payload(256)
        } else {
            FrameDecoder::new()
        }
    };

    let (frames, err) = decode(new(), stream, step);
    let (whole, whole_err) = decode(new(), stream, 0);
    assert_eq!(frames, whole, "frames depend on how the input was cut");
    assert_eq!(err, whole_err, "verdict depends on how the input was cut");

    // Frames are the input's prefix, byte for byte.
    let mut again = Vec::new();
    for f in &frames {
        assert!(f.payload.len() <= if small { 256 } else { MAX_PAYLOAD });
        again.extend_from_slice(&encode(f.stream_id, f.kind, &f.payload).expect("re-encode"));
    }
    assert!(
        stream.starts_with(&again),
        "re-encoded frames differ from the input"
    );
    if let Some(e) = err {
        black_box(e.to_string());
    }
}

fn decode(
    mut d: FrameDecoder,
    stream: &[u8],
    step: usize,
) -> (Vec<cocoon_protocol::frame::Frame>, Option<FrameError>) {
    let mut frames = Vec::new();
    let pieces: Box<dyn Iterator<Item = &[u8]>> = if step == 0 {
        Box::new(std::iter::once(stream))
    } else {
        Box::new(stream.chunks(step))
    };
    let mut pushed = 0usize;
    for piece in pieces {
        pushed += piece.len();
        if let Err(e) = d.push(piece) {
            while let Ok(Some(f)) = d.next_frame() {
                frames.push(f);
            }
            return (frames, Some(e));
        }
        assert!(
            d.buffered() <= pushed,
            "decoder holds more than it was given"
        );
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
        assert!(
            d.buffered() < HEADER_LEN + MAX_PAYLOAD,
            "a whole frame left buffered"
        );
    }
    let end = d.finish().err();
    (frames, end)
}

fn enclave_key() -> &'static HpkeSecretKey {
    static KEY: OnceLock<HpkeSecretKey> = OnceLock::new();
    KEY.get_or_init(|| HpkeSecretKey::derive(b"cocoon-fuzz fixed enclave HPKE key ikm"))
}

/// `sealed_request`: the input as a signed request (the enclave's `Request`
/// frame payload), as a sealed request's wire form
/// ([`SealedRequest::from_cbor`]) and as billing metadata. What decodes
/// must be canonical (re-encode to the input) and, as a request, must fail
/// to open under a fixed enclave key (a fuzzer cannot forge AES-GCM).
pub fn sealed_request(data: &[u8]) {
    signed_request(data);
    match BillingMeta::from_cbor(data) {
        Ok(m) => assert_eq!(m.to_cbor(), data, "billing metadata not canonical"),
        Err(e) => {
            black_box(e.to_string());
        }
    }
    let r = match SealedRequest::from_cbor(data) {
        Ok(r) => r,
        Err(e) => {
            black_box(e.to_string());
            return;
        }
    };
    assert_eq!(r.to_cbor(), data, "sealed request not canonical");
    assert!(
        r.billing_meta().is_ok(),
        "decoded request with bad metadata"
    );
    black_box(r.request_id());
    let opened = open_request(enclave_key(), &EvidenceDigest([0; 32]), &r);
    assert!(opened.is_err(), "a fuzzed request opened: AEAD bypass");
}

/// `sealed_request` (second half): the input as the enclave's `Request`
/// frame payload, a sealed request with the account's key and signature.
/// Decoding is strict and canonical, and authorization never succeeds: the
/// fuzzer cannot make an account signature.
fn signed_request(data: &[u8]) {
    match SignedRequest::from_cbor(data) {
        Ok(r) => assert_eq!(r.to_cbor(), data, "signed request not canonical"),
        Err(e) => {
            black_box(e.to_string());
            return;
        }
    }
    match SignedRequest::authorize(data) {
        Ok(a) => panic!(
            "a fuzzed request was authorized for account {}",
            a.account()
        ),
        Err(e) => {
            black_box(e.to_string());
        }
    }
}

fn receipt_signer() -> &'static (ReceiptSigner, Vec<u8>) {
    static KEY: OnceLock<(ReceiptSigner, Vec<u8>)> = OnceLock::new();
    KEY.get_or_init(|| {
        let s = ReceiptSigner::from_scalar(&[0x42; 32]).expect("fixed receipt key");
        let pk = s.public_key_sec1();
        (s, pk)
    })
}

/// `receipt`: (1) the input as a signed receipt, verified with a fixed key
/// (COSE parsing, header checks, signature; acceptance would be a forgery);
/// (2) the input as a receipt *payload*: decoded strictly, and when it
/// decodes, signed with the fixed key and verified back to the same value.
pub fn receipt(data: &[u8]) {
    let (signer, pk) = receipt_signer();
    match verify_receipt(data, pk) {
        Ok(r) => panic!("a fuzzed receipt verified under the fixed key: {r:?}"),
        Err(e) => {
            black_box(e.to_string());
        }
    }
    match UsageReceipt::from_cbor(data) {
        Ok(r) => {
            assert_eq!(r.to_cbor(), data, "receipt payload not canonical");
            let signed = signer.sign(&r).expect("a decoded receipt signs");
            let back = ReceiptVerifier::new(pk)
                .expect("fixed key")
                .verify(&signed)
                .expect("own signature verifies");
            assert_eq!(back, r);
            black_box(r.charge_nanoton());
        }
        Err(e) => {
            black_box(e.to_string());
        }
    }
}

/// `message`: the plaintext formats the enclave decodes from a client
/// (request body) and the client decodes from the enclave (response
/// events), each under both values of the chunk's last flag. Whatever
/// decodes must re-encode to exactly the input (canonical), an `end`
/// event must decode only as a last chunk, and a `refused` end only with a
/// known code.
pub fn message(data: &[u8]) {
    use cocoon_protocol::message::{FinishReason, InferenceRequest, RefusalCode, ResponseEvent};
    match InferenceRequest::from_cbor(data) {
        Ok(r) => assert_eq!(r.to_cbor(), data, "request body not canonical"),
        Err(e) => {
            black_box(e.to_string());
        }
    }
    for last in [false, true] {
        match ResponseEvent::decode(data, last) {
            Ok(ev) => {
                assert_eq!(ev.to_cbor(), data, "event not canonical");
                assert_eq!(ev.is_end(), last, "end event outside the last chunk");
                // A refusal decodes only with a code this version knows.
                if let ResponseEvent::End {
                    finish: FinishReason::Refused { code, .. },
                    ..
                } = &ev
                {
                    assert_eq!(RefusalCode::from_name(code.as_str()), Some(*code));
                }
            }
            Err(e) => {
                black_box(e.to_string());
            }
        }
    }
}

/// `api`: the host API bodies a client decodes (evidence list, receipt
/// list) and the chunk-record stream of a response, cut at every step the
/// first byte picks. Records that come out must re-encode to the input's
/// prefix.
pub fn api(data: &[u8]) {
    use cocoon_protocol::api::{
        encode_chunk_record, ChunkRecordDecoder, EvidenceList, ReceiptList,
    };
    if let Ok(l) = EvidenceList::from_cbor(data) {
        assert_eq!(EvidenceList::from_cbor(&l.to_cbor()).as_ref(), Ok(&l));
    }
    if let Ok(l) = ReceiptList::from_cbor(data) {
        assert_eq!(ReceiptList::from_cbor(&l.to_cbor()).as_ref(), Ok(&l));
    }
    let Some((&ctl, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(ctl) + 1;
    let mut d = ChunkRecordDecoder::new();
    let mut again = Vec::new();
    'feed: for piece in body.chunks(step) {
        d.push(piece);
        loop {
            match d.next_record() {
                Ok(Some(r)) => {
                    encode_chunk_record(&r, &mut again).expect("decoded record re-encodes")
                }
                Ok(None) => break,
                Err(e) => {
                    black_box(e.to_string());
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(
        &body[..again.len()],
        &again[..],
        "records are not the input's prefix"
    );
    black_box(d.finish().is_ok());
}

/// `settlement`: the bytes a host or an enclave takes from the other side
/// for pricing and settlement: the price table (enclave → host), the price
/// sheet (host → client), receipt acknowledgements (host → enclave), tab
/// updates (enclave → host) and signed authorizations (client → host). Each
/// must decode to something that re-encodes to exactly the input, or be
/// refused without a panic.
pub fn settlement(data: &[u8]) {
    use cocoon_protocol::pricing::{PriceSheet, PriceTable};
    use cocoon_protocol::settlement::{SignedAuthorization, SignedTab};
    use cocoon_protocol::tabs::{ReceiptAck, TabUpdate};
    match PriceTable::from_cbor(data) {
        Ok(t) => {
            assert_eq!(t.to_cbor(), data, "price table not canonical");
            t.validate().expect("a decoded table is valid");
        }
        Err(e) => {
            black_box(e.to_string());
        }
    }
    if let Ok(s) = PriceSheet::from_cbor(data) {
        assert_eq!(s.to_cbor(), data, "price sheet not canonical");
        for e in &s.enclaves {
            for m in e.table.models.keys() {
                black_box(e.offer(m).is_ok());
            }
        }
    }
    if let Ok(a) = ReceiptAck::from_bytes(data) {
        assert_eq!(a.to_bytes(), data, "acknowledgement does not round-trip");
    }
    if let Ok(u) = TabUpdate::from_bytes(data) {
        assert_eq!(u.to_bytes(), data, "tab update does not round-trip");
    }
    if let Ok(a) = SignedAuthorization::from_bytes(data) {
        assert_eq!(&a.to_bytes()[..], data, "authorization does not round-trip");
        black_box(a.verify(&[4; 65]).is_ok());
    }
    if let Ok(t) = SignedTab::from_bytes(data) {
        assert_eq!(&t.to_bytes()[..], data, "tab does not round-trip");
    }
}

/// `local_auth`: the request headers the local HTTP endpoints check first
/// (`cocoon-client serve`, the host's operator API): the input as a `Host`
/// header value and as an `Authorization` value, and as the text of a
/// token file. A host that parses is non-empty and inside the input; the
/// allow list agrees with the parse; a bearer credential is a non-empty
/// piece of the input; a token that parses matches itself and authorizes
/// the header made from it.
pub fn local_auth(data: &[u8]) {
    use cocoon_protocol::local_auth::{
        bearer_credentials, parse_host_header, AllowedHosts, BearerToken, Credentials,
    };
    let hosts = AllowedHosts::loopback().with("box.example");
    let permitted = hosts.permits(Some(data));
    match parse_host_header(data) {
        Some(h) => {
            assert!(!h.host.is_empty(), "an empty host parsed");
            let text = std::str::from_utf8(data).expect("a parsed header is text");
            assert!(text.contains(h.host), "the host is not from the input");
        }
        None => assert!(!permitted, "an unparsable Host was permitted"),
    }
    let token = BearerToken::parse(&"t".repeat(40)).expect("a fixed token parses");
    match bearer_credentials(data) {
        Credentials::Bearer(t) => {
            assert!(!t.is_empty(), "an empty bearer token");
            assert!(
                data.windows(t.len()).any(|w| w == t),
                "the bearer token is not from the input"
            );
            assert_eq!(token.authorizes(Some(data)), token.matches(t));
        }
        _ => assert!(
            !token.authorizes(Some(data)),
            "a non-bearer value authorized"
        ),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = BearerToken::parse(text) {
            assert!(t.matches(t.reveal().as_bytes()));
            let header = format!("Bearer {}", t.reveal());
            assert!(t.authorizes(Some(header.as_bytes())));
            black_box(format!("{t:?}"));
        }
    }
}

/// `provider_settings`: the bytes the enclave takes from the host on its
/// settings port, and the text of a provider's settings file. Settings
/// that decode are canonical (they re-encode to the input), valid, and
/// what a release with wide bounds would accept or refuse without
/// panicking; TOML that parses encodes to settings that decode back equal.
pub fn provider_settings(data: &[u8]) {
    use cocoon_protocol::settings::ProviderSettings;
    if let Ok(s) = ProviderSettings::from_cbor(data) {
        assert_eq!(s.to_cbor(), data, "settings are not canonical");
        assert!(s.validate().is_ok(), "decoded settings are invalid");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = ProviderSettings::from_toml(text) {
            let back = ProviderSettings::from_cbor(&s.to_cbor()).expect("encoded settings decode");
            assert_eq!(back, s, "settings do not round-trip");
        }
    }
}

/// `release_manifest`: the bytes a host serves at `GET /v1/release`.
/// A manifest that decodes is canonical (it re-encodes to the input, its
/// hash is the input's SHA-256), has one digest per measurement, and a
/// policy derived from it (simulated TEE allowed, to reach every branch)
/// admits exactly its digests.
pub fn release_manifest(data: &[u8]) {
    use cocoon_protocol::release::ReleaseManifest;
    use cocoon_verifier::policy::derive::{from_releases, LocalRules};
    use sha2::Digest as _;
    let Ok(m) = ReleaseManifest::from_canonical(data) else {
        return;
    };
    assert_eq!(
        m.to_canonical().expect("a decoded manifest encodes"),
        data,
        "not canonical"
    );
    let hash: [u8; 32] = sha2::Sha256::digest(data).into();
    assert_eq!(m.manifest_hash().expect("hash"), hash);
    let digests = m.measurement_digests();
    assert_eq!(digests.len(), m.measurements.len());
    let r = m.reference().expect("reference values");
    let rules = LocalRules {
        allow_simulated: true,
        ..LocalRules::default()
    };
    let d = from_releases(&[r], &rules).expect("a manifest with measurements derives a policy");
    assert_eq!(d.accepted().len(), digests.len());
    for (a, (p, dg)) in d.accepted().iter().zip(&digests) {
        assert_eq!((a.digest.0.byte(), a.digest.1), (*p, *dg));
    }
}
