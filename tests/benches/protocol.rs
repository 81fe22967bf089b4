//! The wire protocol's costs, each beside the raw primitive, in one run:
//!
//! * the response stream (`ResponseSealer` / `ResponseOpener`) on 1 MiB in
//!   16 KiB chunks against raw AES-256-GCM over the same bytes: aws-lc-rs
//!   (`LessSafeKey`, the fastest that builds here; goal: ours ≥ 0.8× its
//!   throughput) and RustCrypto `aes-gcm` for reference;
//! * one request's HPKE work at 1 KiB: `seal_request` (X25519 setup, seal,
//!   metadata CBOR, request id) and `open_request` against the `hpke` crate
//!   alone with the same suite, and with DHKEM(P-256) for comparison;
//! * one receipt verification (what the ledger pays per append).
//!
//! `cargo bench -p cocoon-tests --bench protocol`

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::KeyInit;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use cocoon_protocol::receipt::{ReceiptSigner, ReceiptVerifier, UnitPrice, UsageReceipt};
use cocoon_protocol::seal::{
    open_request, seal_request, BillingMeta, EvidenceDigest, HpkeSecretKey, SealedRequest,
};
use cocoon_protocol::stream::{ResponseOpener, ResponseSealer, CHUNK_HEADER_LEN, CHUNK_TAG_LEN};
use cocoon_protocol::RequestId;
use cocoon_tests::bench::{interleaved, mode, ms};
use criterion::{Criterion, Throughput};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::OsRng;

const STREAM_BYTES: usize = 1 << 20;
const CHUNK: usize = 16 << 10;
const REQUEST_BYTES: usize = 1 << 10;
/// Requests per timed call in the HPKE loop (one is ~0.1 ms).
const REQUESTS_PER_CALL: usize = 10;
const GOAL_STREAM: f64 = 0.85;

type X25519 = hpke::kem::X25519HkdfSha256;
type P256 = hpke::kem::DhP256HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aes = hpke::aead::AesGcm256;

fn meta() -> BillingMeta {
    BillingMeta {
        model: "minilm".into(),
        max_tokens: 256,
        price_quote_id: "quote-1".into(),
        unit_price: UnitPrice {
            prompt: 1,
            cached: 1,
            completion: 2,
        },
        multiplier_milli: 1000,
        client_account: [7; 32],
        expires_at: 1_800_000_000,
    }
}

/// A sealer and an opener of one endless response (the stream never sends
/// its last chunk, so both can be reused round after round).
fn stream_pair() -> (ResponseSealer, ResponseOpener) {
    let sk = HpkeSecretKey::generate(&mut OsRng);
    let d = EvidenceDigest::of_claims(b"claims");
    let (req, client) = seal_request(sk.public_key(), &d, &meta(), b"q", &mut OsRng).unwrap();
    let (_, _, enclave) = open_request(&sk, &d, &req).unwrap();
    (
        enclave.response_sealer(&mut OsRng).unwrap(),
        client.response_opener(),
    )
}

struct Raw {
    aws: LessSafeKey,
    rc: aes_gcm::Aes256Gcm,
    seq: u64,
}

impl Raw {
    fn new(key: &[u8; 32]) -> Raw {
        Raw {
            aws: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap()),
            rc: aes_gcm::Aes256Gcm::new_from_slice(key).unwrap(),
            seq: 0,
        }
    }
    fn nonce(&mut self) -> [u8; 12] {
        self.seq += 1;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.seq.to_be_bytes());
        n
    }
    /// aws-lc-rs: each chunk sealed in place (the data already in the buffer).
    fn aws_seal(&mut self, buf: &mut [u8]) -> bool {
        let mut ok = true;
        for chunk in buf.chunks_mut(CHUNK) {
            let n = Nonce::assume_unique_for_key(self.nonce());
            ok &= self
                .aws
                .seal_in_place_separate_tag(n, Aad::from(&[0u8; 41]), chunk)
                .is_ok();
        }
        ok
    }
    fn aws_round_trip(&mut self, buf: &mut Vec<u8>, data: &[u8]) -> bool {
        let mut ok = true;
        for chunk in data.chunks(CHUNK) {
            let nonce = self.nonce();
            buf.clear();
            buf.extend_from_slice(chunk);
            let tag = self.aws.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[0u8; 41]),
                buf,
            );
            let Ok(tag) = tag else { return false };
            buf.extend_from_slice(tag.as_ref());
            ok &= self
                .aws
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&[0u8; 41]),
                    buf,
                )
                .is_ok();
        }
        ok
    }
    /// RustCrypto `aes-gcm`: the same, in place.
    fn rc_seal(&mut self, buf: &mut [u8]) -> bool {
        let mut ok = true;
        for chunk in buf.chunks_mut(CHUNK) {
            let n = self.nonce();
            ok &= self
                .rc
                .encrypt_in_place_detached(&n.into(), &[0u8; 41], chunk)
                .is_ok();
        }
        ok
    }
}

fn ours_seal(s: &mut ResponseSealer, data: &[u8]) -> bool {
    data.chunks(CHUNK).all(|c| {
        s.seal_chunk(black_box(c), false)
            .is_ok_and(|v| v.len() > c.len())
    })
}

fn ours_seal_into(s: &mut ResponseSealer, out: &mut Vec<u8>, data: &[u8]) -> bool {
    data.chunks(CHUNK)
        .all(|c| s.seal_chunk_into(black_box(c), false, out).is_ok())
}

/// The enclave's path: each chunk's data already lies behind its header
/// room (the enclave encodes its event there) and is sealed where it lies.
/// Each buffer holds the last round's sealed chunk; dropping its tag leaves
/// header room and data again, at no cost.
fn ours_seal_in_place(s: &mut ResponseSealer, bufs: &mut [Vec<u8>]) -> bool {
    bufs.iter_mut().all(|b| {
        b.truncate(b.len() - CHUNK_TAG_LEN);
        s.seal_in_place(black_box(b), false).is_ok()
    })
}

fn ours_round_trip(
    s: &mut ResponseSealer,
    o: &mut ResponseOpener,
    buf: &mut Vec<u8>,
    data: &[u8],
) -> bool {
    data.chunks(CHUNK).all(|c| {
        s.seal_chunk_into(black_box(c), false, buf).is_ok()
            && o.open_chunk_in_place(buf)
                .is_ok_and(|_| buf.len() == c.len())
    })
}

struct Hpke {
    ours_sk: HpkeSecretKey,
    x_sk: <X25519 as hpke::Kem>::PrivateKey,
    x_pk: <X25519 as hpke::Kem>::PublicKey,
    p_sk: <P256 as hpke::Kem>::PrivateKey,
    p_pk: <P256 as hpke::Kem>::PublicKey,
    digest: EvidenceDigest,
    info: Vec<u8>,
    aad: Vec<u8>,
    body: Vec<u8>,
}

impl Hpke {
    fn new() -> Hpke {
        let ours_sk = HpkeSecretKey::generate(&mut OsRng);
        let (x_sk, x_pk) = X25519::gen_keypair(&mut OsRng);
        let (p_sk, p_pk) = P256::gen_keypair(&mut OsRng);
        let digest = EvidenceDigest::of_claims(b"claims");
        let mut info = b"cocoon-request-v1".to_vec();
        info.extend_from_slice(digest.as_bytes());
        Hpke {
            ours_sk,
            x_sk,
            x_pk,
            p_sk,
            p_pk,
            digest,
            info,
            aad: meta().to_cbor(),
            body: vec![0x61; REQUEST_BYTES],
        }
    }

    fn ours_seal(&self) -> Option<SealedRequest> {
        seal_request(
            self.ours_sk.public_key(),
            &self.digest,
            &meta(),
            black_box(&self.body),
            &mut OsRng,
        )
        .ok()
        .map(|(r, _)| r)
    }

    fn ours_seal_open(&self) -> bool {
        self.ours_seal().is_some_and(|r| {
            open_request(&self.ours_sk, &self.digest, &r)
                .is_ok_and(|(_, b, _)| b.len() == REQUEST_BYTES)
        })
    }

    fn raw_seal_open<Kem: hpke::Kem>(&self, sk: &Kem::PrivateKey, pk: &Kem::PublicKey) -> bool {
        let Ok((enc, mut ctx)) =
            hpke::setup_sender::<Aes, Kdf, Kem, _>(&OpModeS::Base, pk, &self.info, &mut OsRng)
        else {
            return false;
        };
        let Ok(ct) = ctx.seal(black_box(&self.body), &self.aad) else {
            return false;
        };
        // The receiver gets `enc` as bytes, like ours.
        let Ok(enc) = Kem::EncappedKey::from_bytes(&enc.to_bytes()) else {
            return false;
        };
        let Ok(mut rx) =
            hpke::setup_receiver::<Aes, Kdf, Kem>(&OpModeR::Base, sk, &enc, &self.info)
        else {
            return false;
        };
        rx.open(&ct, &self.aad)
            .is_ok_and(|b| b.len() == REQUEST_BYTES)
    }

    fn raw_seal<Kem: hpke::Kem>(&self, pk: &Kem::PublicKey) -> bool {
        hpke::setup_sender::<Aes, Kdf, Kem, _>(&OpModeS::Base, pk, &self.info, &mut OsRng)
            .ok()
            .and_then(|(_, mut ctx)| ctx.seal(black_box(&self.body), &self.aad).ok())
            .is_some()
    }
}

fn times(n: usize, f: impl Fn() -> bool) -> bool {
    (0..n).all(|_| f())
}

fn main() {
    let mode = mode(200);
    let data = vec![0x5a_u8; STREAM_BYTES];
    let key = [9u8; 32];
    let mut raw = Raw::new(&key);
    let (mut sealer, _) = stream_pair();
    let hp = Hpke::new();
    let signer = ReceiptSigner::generate(&mut OsRng);
    let receipt = signer
        .sign(&UsageReceipt {
            request_id: RequestId([1; 32]),
            model: "minilm".into(),
            prompt_tokens: 100,
            cached_tokens: 0,
            completion_tokens: 200,
            total_tokens: 300,
            unit_price: UnitPrice {
                prompt: 10,
                cached: 10,
                completion: 30,
            },
            multiplier_milli: 1000,
            time: 1_795_000_000,
            enclave_seq: 1,
            client_account: [7; 32],
        })
        .unwrap();
    let verifier = ReceiptVerifier::new(&signer.public_key_sec1()).unwrap();
    assert!(hp.ours_seal_open() && hp.raw_seal_open::<X25519>(&hp.x_sk, &hp.x_pk));
    assert!(hp.raw_seal_open::<P256>(&hp.p_sk, &hp.p_pk));

    let mut out = Vec::with_capacity(CHUNK + 64);
    let mut raw_buf = data.clone();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("response_stream_1MiB_16KiB_chunks");
        g.throughput(Throughput::Bytes(STREAM_BYTES as u64));
        g.bench_function("ours seal_chunk", |b| {
            b.iter(|| ours_seal(&mut sealer, &data))
        });
        g.bench_function("ours seal_chunk_into", |b| {
            b.iter(|| ours_seal_into(&mut sealer, &mut out, &data))
        });
        g.bench_function("raw aws-lc-rs seal", |b| {
            b.iter(|| raw.aws_seal(&mut raw_buf))
        });
        g.bench_function("raw aes-gcm seal", |b| b.iter(|| raw.rc_seal(&mut raw_buf)));
        g.finish();
        let mut g = c.benchmark_group("request_1KiB");
        g.bench_function("ours seal_request", |b| b.iter(|| hp.ours_seal()));
        g.bench_function("hpke X25519 seal", |b| {
            b.iter(|| hp.raw_seal::<X25519>(&hp.x_pk))
        });
        g.bench_function("hpke P-256 seal", |b| {
            b.iter(|| hp.raw_seal::<P256>(&hp.p_pk))
        });
        g.finish();
        c.bench_function("receipt verify", |b| b.iter(|| verifier.verify(&receipt)));
    }
    c.final_summary();
    if mode.rounds == 0 {
        return;
    }

    // Stream: seal only, then seal + open, each beside the raw primitive.
    // Every path its own state, so the closures borrow nothing in common.
    let (mut sealer_into, _) = stream_pair();
    let (mut sealer_in_place, _) = stream_pair();
    // Past chunk 0 (whose header also carries the response nonce), every
    // chunk's header room is the same.
    assert!(sealer_in_place.seal_chunk(b"", false).is_ok());
    let mut in_place_bufs: Vec<Vec<u8>> = data
        .chunks(CHUNK)
        .map(|c| {
            let mut b = Vec::with_capacity(CHUNK_HEADER_LEN + CHUNK + CHUNK_TAG_LEN);
            b.resize(CHUNK_HEADER_LEN, 0);
            b.extend_from_slice(c);
            assert!(sealer_in_place.seal_in_place(&mut b, false).is_ok());
            b
        })
        .collect();
    let mut raw_rc = Raw::new(&key);
    let mut rc_buf = data.clone();
    let s = interleaved(
        mode.rounds,
        &mut [
            &mut || ours_seal(&mut sealer, &data),
            &mut || ours_seal_into(&mut sealer_into, &mut out, &data),
            &mut || raw.aws_seal(&mut raw_buf),
            &mut || raw_rc.rc_seal(&mut rc_buf),
            &mut || ours_seal_in_place(&mut sealer_in_place, &mut in_place_bufs),
        ],
    );
    // A fresh pair: the opener must see every chunk its sealer made.
    let (mut sealer_rt, mut opener) = stream_pair();
    let mut buf_a = Vec::with_capacity(CHUNK + 64);
    let mut buf_b = Vec::with_capacity(CHUNK + 64);
    let rt = interleaved(
        mode.rounds,
        &mut [
            &mut || ours_round_trip(&mut sealer_rt, &mut opener, &mut buf_a, &data),
            &mut || raw.aws_round_trip(&mut buf_b, &data),
        ],
    );
    let hpke_rounds = mode.rounds.clamp(2, 100);
    let h = interleaved(
        hpke_rounds,
        &mut [
            &mut || times(REQUESTS_PER_CALL, || hp.ours_seal().is_some()),
            &mut || times(REQUESTS_PER_CALL, || hp.raw_seal::<X25519>(&hp.x_pk)),
            &mut || times(REQUESTS_PER_CALL, || hp.raw_seal::<P256>(&hp.p_pk)),
            &mut || times(REQUESTS_PER_CALL, || hp.ours_seal_open()),
            &mut || {
                times(REQUESTS_PER_CALL, || {
                    hp.raw_seal_open::<X25519>(&hp.x_sk, &hp.x_pk)
                })
            },
            &mut || {
                times(REQUESTS_PER_CALL, || {
                    hp.raw_seal_open::<P256>(&hp.p_sk, &hp.p_pk)
                })
            },
        ],
    );
    let r = interleaved(
        hpke_rounds,
        &mut [&mut || times(REQUESTS_PER_CALL, || verifier.verify(&receipt).is_ok())],
    );

    let gbps = |d: Duration| STREAM_BYTES as f64 / d.as_secs_f64() / 1e9;
    let x = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    let per = |d: Duration| d / REQUESTS_PER_CALL as u32;
    println!();
    if !mode.measuring {
        println!(
            "(test mode: a smoke run of the ratio loop, not a measurement; use `cargo bench`)"
        );
    }
    println!(
        "Response stream, 1 MiB in 16 KiB chunks: medians of {} interleaved rounds (throughput ratio = raw time / ours time)",
        mode.rounds
    );
    println!("  seal:");
    println!(
        "    ours seal_chunk (new Vec per chunk) {} ({:.2} GB/s): {:.3}x raw aws-lc-rs",
        ms(s[0]),
        gbps(s[0]),
        x(s[0], s[2])
    );
    println!(
        "    ours seal_chunk_into (reused buffer) {} ({:.2} GB/s): {:.3}x raw aws-lc-rs",
        ms(s[1]),
        gbps(s[1]),
        x(s[1], s[2])
    );
    println!(
        "    ours seal_in_place (the enclave's path: data encoded behind the header room) {} ({:.2} GB/s): {:.3}x raw aws-lc-rs",
        ms(s[4]),
        gbps(s[4]),
        x(s[4], s[2])
    );
    println!(
        "    raw aws-lc-rs AES-256-GCM in place {} ({:.2} GB/s)",
        ms(s[2]),
        gbps(s[2])
    );
    println!(
        "    raw RustCrypto aes-gcm in place {} ({:.2} GB/s): ours seal_chunk is {:.2}x its throughput",
        ms(s[3]),
        gbps(s[3]),
        x(s[0], s[3])
    );
    println!("  seal + open:");
    println!(
        "    ours {} vs raw aws-lc-rs {}: {:.3}x raw throughput",
        ms(rt[0]),
        ms(rt[1]),
        x(rt[0], rt[1])
    );
    println!(
        "Request, 1 KiB body: medians of {hpke_rounds} rounds of {REQUESTS_PER_CALL} requests, per request"
    );
    println!(
        "  client seal: ours seal_request (X25519) {} | hpke X25519 {} ({:.3}x ours) | hpke P-256 {} ({:.2}x ours)",
        ms(per(h[0])),
        ms(per(h[1])),
        h[1].as_secs_f64() / h[0].as_secs_f64(),
        ms(per(h[2])),
        h[2].as_secs_f64() / h[0].as_secs_f64()
    );
    println!(
        "  seal + open: ours {} | hpke X25519 {} ({:.3}x ours) | hpke P-256 {} ({:.2}x ours)",
        ms(per(h[3])),
        ms(per(h[4])),
        h[4].as_secs_f64() / h[3].as_secs_f64(),
        ms(per(h[5])),
        h[5].as_secs_f64() / h[3].as_secs_f64()
    );
    println!(
        "Receipt verify (ES256, COSE_Sign1, strict payload): {} per receipt",
        ms(per(r[0]))
    );
    if mode.measuring {
        let ratio = x(s[4], s[2]);
        println!(
            "  stream goal: ours seal_in_place (the enclave's path) >= {GOAL_STREAM:.2}x raw aws-lc-rs throughput: {}",
            if ratio >= GOAL_STREAM {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}
