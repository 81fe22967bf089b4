//! The sealed request path through `cocoon-protocol`, end to end in one
//! process: a client seals to the key named in an enclave's claims, the
//! host carries frames it cannot read, the enclave opens, streams and signs
//! a receipt, and the client and host check what they get. Then every
//! tampering a malicious host can try on those bytes, each of which must be
//! detected by the client or refused by the enclave or the ledger check.

use cocoon_attestation::bundle::{Claims, EvidenceBundle, ModelDigest, PlatformEvidence};
use cocoon_protocol::frame::{self, Frame, FrameDecoder, FrameError, FrameType, MAX_PAYLOAD};
use cocoon_protocol::receipt::{
    verify_receipt, ReceiptError, ReceiptSigner, ReceiptVerifier, UnitPrice, UsageReceipt,
};
use cocoon_protocol::seal::{
    open_request, seal_request, BillingMeta, EvidenceDigest, HpkePublicKey, HpkeSecretKey,
    SealError, SealedRequest,
};
use cocoon_protocol::stream::{ResponseOpener, StreamError};
use cocoon_protocol::RequestId;
use rand_core::OsRng;

const PROMPT: &[u8] = b"What is the capital of Mongolia? (secret prompt 7f3a)";
const ANSWER: [&str; 3] = ["Ulaanbaatar ", "is the capital ", "(secret answer 91c2)."];

/// An enclave as the protocol sees it: keys made at boot and the claims
/// naming them, carried in a bundle (platform evidence is a placeholder;
/// verifying it is the verifier's job, tested elsewhere).
struct Enclave {
    hpke: HpkeSecretKey,
    receipts: ReceiptSigner,
    bundle: EvidenceBundle,
    seq: u64,
}

impl Enclave {
    fn boot(epoch: u64) -> Enclave {
        let hpke = HpkeSecretKey::generate(&mut OsRng);
        let receipts = ReceiptSigner::generate(&mut OsRng);
        let claims = Claims {
            hpke_public_key: hpke.public_key().to_bytes().to_vec(),
            receipt_public_key: receipts.public_key_sec1(),
            image_id: "cocoon-test-image".into(),
            model_digests: vec![ModelDigest {
                name: "minilm".into(),
                sha256: [3; 32],
                version: None,
                tokenizer_sha256: None,
            }],
            config_digest: [4; 32],
            gpu_evidence_digest: None,
            epoch,
            issued_at: epoch,
            refresh: 0,
            client_nonce: None,
            disk_verity_root: None,
            provider_settings: None,
        };
        let bundle = EvidenceBundle {
            platform: PlatformEvidence::Snp {
                report: vec![0; 1184],
                vek: vec![],
                chain: vec![],
                crl: None,
            },
            gpu: None,
            claims_cbor: claims.to_cbor(),
        };
        Enclave {
            hpke,
            receipts,
            bundle,
            seq: 0,
        }
    }

    fn digest(&self) -> EvidenceDigest {
        EvidenceDigest::of_bundle(&self.bundle)
    }

    /// Serve one Request frame's payload: the response chunks and the
    /// signed receipt, or the reason it was refused.
    fn serve(&mut self, sealed_wire: &[u8]) -> Result<(Vec<Vec<u8>>, Vec<u8>), SealError> {
        let request = SealedRequest::from_cbor(sealed_wire)?;
        let (meta, prompt, session) = open_request(&self.hpke, &self.digest(), &request)?;
        assert_eq!(prompt, PROMPT);
        let request_id = session.request_id();
        let mut sealer = session.response_sealer(&mut OsRng).unwrap();
        let mut chunks = Vec::new();
        for (i, part) in ANSWER.iter().enumerate() {
            chunks.push(sealer.seal_chunk(part.as_bytes(), false).unwrap());
            assert_eq!(sealer.sealed(), i as u64 + 1);
        }
        self.seq += 1;
        let receipt = UsageReceipt {
            request_id,
            model: meta.model.clone(),
            prompt_tokens: 12,
            cached_tokens: 0,
            completion_tokens: 9,
            total_tokens: 21,
            unit_price: meta.unit_price,
            multiplier_milli: meta.multiplier_milli,
            time: 1_795_000_000,
            enclave_seq: self.seq,
            client_account: meta.client_account,
        };
        let signed = self.receipts.sign(&receipt).unwrap();
        // The last chunk carries the client's copy of the receipt.
        chunks.push(sealer.seal_chunk(&signed, true).unwrap());
        Ok((chunks, signed))
    }
}

fn meta() -> BillingMeta {
    BillingMeta {
        model: "minilm".into(),
        max_tokens: 64,
        price_quote_id: "quote-17".into(),
        unit_price: UnitPrice {
            prompt: 100,
            cached: 100,
            completion: 400,
        },
        multiplier_milli: 1000,
        client_account: [0xa1; 32],
        expires_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300,
    }
}

/// What the client does with the evidence it verified: take the HPKE key
/// and the claims digest from it.
fn client_seal(e: &Enclave) -> (SealedRequest, cocoon_protocol::seal::ClientSession) {
    let claims = Claims::from_cbor(&e.bundle.claims_cbor).unwrap();
    let pk = HpkePublicKey::from_bytes(&claims.hpke_public_key).unwrap();
    seal_request(
        &pk,
        &EvidenceDigest::of_claims(&e.bundle.claims_cbor),
        &meta(),
        PROMPT,
        &mut OsRng,
    )
    .unwrap()
}

/// The client reads a whole response: answer text and the receipt, checked
/// against the attested receipt key and its own request.
fn client_read(
    mut opener: ResponseOpener,
    chunks: &[Vec<u8>],
    receipt_key: &[u8],
) -> Result<(String, UsageReceipt), String> {
    let mut text = Vec::new();
    let mut receipt = None;
    for c in chunks {
        let chunk = opener.open_chunk(c).map_err(|e| e.to_string())?;
        if chunk.last {
            receipt = Some(chunk.data);
        } else {
            text.extend_from_slice(&chunk.data);
        }
    }
    opener.finish().map_err(|e| e.to_string())?;
    let receipt = receipt.ok_or("no receipt")?;
    let r = verify_receipt(&receipt, receipt_key).map_err(|e| e.to_string())?;
    if r.request_id != opener.request_id() || r.client_account != meta().client_account {
        return Err("receipt is for another request".into());
    }
    Ok((String::from_utf8(text).unwrap(), r))
}

/// A host's edit of the response chunks it forwards.
type Edit = dyn Fn(&mut Vec<Vec<u8>>);

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sealed_request_path_end_to_end_through_frames() {
    let mut enclave = Enclave::boot(1);
    let (request, session) = client_seal(&enclave);
    let request_wire = request.to_cbor();
    assert!(
        !contains(&request_wire, b"secret prompt"),
        "prompt in clear"
    );

    // Host: reads the billing metadata, forwards the request as a frame.
    let host_view = SealedRequest::from_cbor(&request_wire).unwrap();
    assert_eq!(host_view.billing_meta().unwrap(), meta());
    let host_request_id = host_view.request_id();
    assert_eq!(host_request_id, session.request_id());
    let to_enclave = frame::encode(5, FrameType::Request, &request_wire).unwrap();

    // Enclave: decodes the frame (delivered one byte at a time), serves.
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    for b in &to_enclave {
        dec.push(std::slice::from_ref(b)).unwrap();
        while let Some(f) = dec.next_frame().unwrap() {
            frames.push(f);
        }
    }
    dec.finish().unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0].stream_id, frames[0].kind),
        (5, FrameType::Request)
    );
    let (chunks, host_receipt) = enclave.serve(&frames[0].payload).unwrap();

    // Enclave → host: chunks and the host's receipt copy, as frames.
    let mut back = Vec::new();
    for c in &chunks {
        assert!(!contains(c, b"secret answer"), "answer in clear");
        frame::encode_into(5, FrameType::ResponseChunk, c, &mut back).unwrap();
    }
    frame::encode_into(5, FrameType::Receipt, &host_receipt, &mut back).unwrap();
    let mut dec = FrameDecoder::new();
    dec.push(&back).unwrap();
    let mut to_client = Vec::new();
    let mut ledger = Vec::new();
    while let Some(f) = dec.next_frame().unwrap() {
        match f.kind {
            FrameType::ResponseChunk => to_client.push(f.payload),
            FrameType::Receipt => ledger.push(f.payload),
            other => panic!("unexpected {other:?}"),
        }
    }
    dec.finish().unwrap();

    // Host: checks its receipt copy against the attested key before the ledger.
    let claims = Claims::from_cbor(&enclave.bundle.claims_cbor).unwrap();
    let ledger_key = ReceiptVerifier::new(&claims.receipt_public_key).unwrap();
    let billed = ledger_key.verify(&ledger[0]).unwrap();
    assert_eq!(billed.request_id, host_request_id);
    assert_eq!(billed.charge_nanoton(), Some(12 * 100 + 9 * 400));

    // Client: the answer, and the same receipt the host holds.
    let (text, receipt) = client_read(
        session.response_opener(),
        &to_client,
        &claims.receipt_public_key,
    )
    .unwrap();
    assert_eq!(text, ANSWER.concat());
    assert_eq!(receipt, billed);
}

#[test]
fn tampered_requests_are_refused_by_the_enclave() {
    let mut enclave = Enclave::boot(1);
    let (request, _) = client_seal(&enclave);

    // Flipped ciphertext bit (a sample of positions through the whole body).
    for i in (0..request.ciphertext.len() * 8).step_by(7) {
        let mut r = request.clone();
        r.ciphertext[i / 8] ^= 1 << (i % 8);
        assert_eq!(enclave.serve(&r.to_cbor()).unwrap_err(), SealError::Open);
    }
    // Flipped bit in the billing metadata: either no longer CBOR (the host's
    // own decode refuses it) or different metadata (the enclave refuses it).
    for i in 0..request.meta_cbor.len() * 8 {
        let mut r = request.clone();
        r.meta_cbor[i / 8] ^= 1 << (i % 8);
        assert!(enclave.serve(&r.to_cbor()).is_err(), "meta bit {i}");
    }
    // Billing metadata rewritten by the host (cheaper model, more tokens).
    let mut m = meta();
    m.max_tokens = 4096;
    let mut r = request.clone();
    r.meta_cbor = m.to_cbor();
    assert_eq!(enclave.serve(&r.to_cbor()).unwrap_err(), SealError::Open);
    // Flipped enc.
    let mut r = request.clone();
    r.enc[0] ^= 1;
    assert_eq!(enclave.serve(&r.to_cbor()).unwrap_err(), SealError::Open);
    // Flipped bits of the wire bytes anywhere.
    let wire = request.to_cbor();
    for i in (0..wire.len() * 8).step_by(13) {
        let mut w = wire.clone();
        w[i / 8] ^= 1 << (i % 8);
        assert!(enclave.serve(&w).is_err(), "wire bit {i}");
    }
}

#[test]
fn evidence_from_another_enclave_or_epoch_does_not_open() {
    let enclave = Enclave::boot(1);
    let mut other = Enclave::boot(1);
    // The host shows the client the other enclave's evidence, routes to this one.
    let (request, _) = client_seal(&other);
    assert_eq!(
        open_request(&enclave.hpke, &enclave.digest(), &request).unwrap_err(),
        SealError::Open
    );
    // Same key, but claims of another epoch: the digest in `info` differs.
    let (request, _) = client_seal(&enclave);
    let mut claims = Claims::from_cbor(&enclave.bundle.claims_cbor).unwrap();
    claims.epoch = 2;
    let stale = EvidenceDigest::of_claims(&claims.to_cbor());
    assert_eq!(
        open_request(&enclave.hpke, &stale, &request).unwrap_err(),
        SealError::Open
    );
    // Restarted enclave: new keys, the old request no longer opens.
    other = Enclave::boot(1);
    assert_eq!(
        open_request(&other.hpke, &other.digest(), &request).unwrap_err(),
        SealError::Open
    );
}

#[test]
fn replayed_request_is_one_request_id_and_fresh_response_keys() {
    let mut enclave = Enclave::boot(1);
    let (request, session) = client_seal(&enclave);
    let wire = request.to_cbor();
    let (first, r1) = enclave.serve(&wire).unwrap();
    let (second, r2) = enclave.serve(&wire).unwrap();
    let claims = Claims::from_cbor(&enclave.bundle.claims_cbor).unwrap();
    let a = verify_receipt(&r1, &claims.receipt_public_key).unwrap();
    let b = verify_receipt(&r2, &claims.receipt_public_key).unwrap();
    // The ledger sees the same request id twice and bills once.
    assert_eq!(a.request_id, b.request_id);
    assert_ne!(a.enclave_seq, b.enclave_seq);
    let mut ledger = std::collections::BTreeSet::new();
    assert!(ledger.insert(a.request_id));
    assert!(
        !ledger.insert(b.request_id),
        "replay must be refused by request id"
    );
    // The replayed answer is under other keys: no nonce reuse.
    assert_ne!(first[0][9..41], second[0][9..41], "response nonce");
    assert_ne!(first[1], second[1]);
    // Chunks of the two answers cannot be mixed.
    let mut o = session.response_opener();
    o.open_chunk(&first[0]).unwrap();
    assert_eq!(
        o.open_chunk(&second[1]),
        Err(StreamError::Authentication { seq: 1 })
    );
}

#[test]
fn tampered_response_streams_are_detected_by_the_client() {
    let key = |e: &Enclave| {
        Claims::from_cbor(&e.bundle.claims_cbor)
            .unwrap()
            .receipt_public_key
    };
    let run = |edit: &Edit| -> Result<(String, UsageReceipt), String> {
        let mut enclave = Enclave::boot(1);
        let (request, session) = client_seal(&enclave);
        let (mut chunks, _) = enclave.serve(&request.to_cbor()).unwrap();
        edit(&mut chunks);
        client_read(session.response_opener(), &chunks, &key(&enclave))
    };
    assert!(run(&|_| {}).is_ok());
    let cases: Vec<(&str, Box<Edit>)> = vec![
        ("flipped ciphertext bit", Box::new(|c| c[1][20] ^= 0x10)),
        (
            "flipped tag bit",
            Box::new(|c| *c[2].last_mut().unwrap() ^= 1),
        ),
        ("flipped response nonce", Box::new(|c| c[0][12] ^= 1)),
        ("flipped last flag", Box::new(|c| c[1][8] ^= 1)),
        ("rewritten sequence number", Box::new(|c| c[1][7] = 2)),
        ("replayed chunk", Box::new(|c| c.insert(2, c[1].clone()))),
        ("reordered chunks", Box::new(|c| c.swap(1, 2))),
        ("dropped first chunk", Box::new(|c| drop(c.remove(0)))),
        ("dropped middle chunk", Box::new(|c| drop(c.remove(1)))),
        ("truncated (no last chunk)", Box::new(|c| drop(c.pop()))),
        ("cut inside a chunk", Box::new(|c| c[3].truncate(30))),
        ("chunk after the last", Box::new(|c| c.push(c[3].clone()))),
        ("empty stream", Box::new(|c| c.clear())),
    ];
    for (name, edit) in cases {
        let got = run(&*edit);
        assert!(got.is_err(), "{name}: not detected");
    }
    // A chunk from another stream (another request, same enclave).
    let mut enclave = Enclave::boot(1);
    let (r1, s1) = client_seal(&enclave);
    let (r2, _) = client_seal(&enclave);
    let (mut c1, _) = enclave.serve(&r1.to_cbor()).unwrap();
    let (c2, _) = enclave.serve(&r2.to_cbor()).unwrap();
    c1[2] = c2[2].clone();
    assert!(client_read(s1.response_opener(), &c1, &key(&enclave)).is_err());
}

#[test]
fn forged_and_inflated_receipts_are_refused() {
    let mut enclave = Enclave::boot(1);
    let (request, _) = client_seal(&enclave);
    let (_, genuine) = enclave.serve(&request.to_cbor()).unwrap();
    let claims = Claims::from_cbor(&enclave.bundle.claims_cbor).unwrap();
    let attested = claims.receipt_public_key;
    let receipt = verify_receipt(&genuine, &attested).unwrap();

    // Forged: a receipt the host signed with a key of its own.
    let host_key = ReceiptSigner::generate(&mut OsRng);
    let mut more = receipt.clone();
    more.completion_tokens *= 10;
    more.total_tokens = more.prompt_tokens + more.completion_tokens;
    let forged = host_key.sign(&more).unwrap();
    assert_eq!(
        verify_receipt(&forged, &attested),
        Err(ReceiptError::BadSignature)
    );
    // Another enclave's key (e.g. evidence swapped): not the attested one.
    let other = Enclave::boot(1);
    let other_key = Claims::from_cbor(&other.bundle.claims_cbor)
        .unwrap()
        .receipt_public_key;
    assert_eq!(
        verify_receipt(&genuine, &other_key),
        Err(ReceiptError::BadSignature)
    );

    // Inflated: the genuine signature over an edited payload.
    let ciborium::Value::Tag(18, inner) = ciborium::de::from_reader(&genuine[..]).unwrap() else {
        panic!("not a tagged COSE_Sign1")
    };
    use coset::AsCborValue;
    let mut sign1 = coset::CoseSign1::from_cbor_value(*inner).unwrap();
    sign1.payload = Some(more.to_cbor());
    let mut inflated = Vec::new();
    ciborium::ser::into_writer(
        &ciborium::Value::Tag(18, Box::new(sign1.to_cbor_value().unwrap())),
        &mut inflated,
    )
    .unwrap();
    assert_eq!(
        verify_receipt(&inflated, &attested),
        Err(ReceiptError::BadSignature)
    );
    // Trailing bytes after a genuine receipt.
    let mut trailing = genuine.clone();
    trailing.extend_from_slice(&[0xa0]);
    assert!(verify_receipt(&trailing, &attested).is_err());
    // A receipt for another request does not satisfy the client.
    assert_ne!(receipt.request_id, RequestId([0; 32]));
}

#[test]
fn frames_split_at_every_byte_boundary_and_oversize_refused() {
    let mut enclave = Enclave::boot(1);
    let (request, _) = client_seal(&enclave);
    let (chunks, receipt) = enclave.serve(&request.to_cbor()).unwrap();
    let mut frames = vec![
        Frame::new(0, FrameType::EvidenceRequest, vec![]),
        Frame::new(0, FrameType::EvidenceResponse, enclave.bundle.to_cbor()),
        Frame::new(9, FrameType::Request, request.to_cbor()),
    ];
    frames.extend(
        chunks
            .iter()
            .map(|c| Frame::new(9, FrameType::ResponseChunk, c.clone())),
    );
    frames.push(Frame::new(9, FrameType::Receipt, receipt));
    frames.push(Frame::new(10, FrameType::Cancel, vec![]));
    frames.push(Frame::new(11, FrameType::Error, b"model busy".to_vec()));
    let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode().unwrap()).collect();

    for cut in 0..=wire.len() {
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for part in [&wire[..cut], &wire[cut..]] {
            d.push(part).unwrap();
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        d.finish().unwrap();
        assert_eq!(got, frames, "split at {cut}");
    }

    // Oversize: refused from the header, before the payload arrives.
    let mut header = ((MAX_PAYLOAD + 1) as u32).to_be_bytes().to_vec();
    header.extend_from_slice(&9u32.to_be_bytes());
    header.push(FrameType::Request as u8);
    let mut d = FrameDecoder::new();
    assert!(matches!(d.push(&header), Err(FrameError::Oversize { .. })));
    assert!(d.buffered() <= frame::HEADER_LEN);
    assert!(frame::encode(9, FrameType::Request, &vec![0; MAX_PAYLOAD + 1]).is_err());
}
