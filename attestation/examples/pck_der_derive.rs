//! Side by side: the hand walker behind [`PckExtensions::from_der`] and the
//! same decode written with `der`'s derive (`#[derive(Sequence)]` for the
//! `(OID, value)` pairs, `der`'s INTEGER, OCTET STRING and OID decoders for
//! the values), on the SGX extensions of the real PCK certificates in the
//! shared TDX vectors. Prints, for a set of malformed inputs, what each one
//! says, then the time ratio measured in one run (these machines are shared,
//! so only the ratio means anything).
//!
//! ```text
//! cargo run --release -p cocoon-attestation --example pck_der_derive
//! ```
//!
//! Vectors: `$COCOON_VECTORS`, or `../shared/vectors` beside the workspace.
//! This is an evaluation, not product code: the derive version lives here
//! only.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use cocoon_attestation::tdx::{PckExtensions, Quote, SgxType, SGX_EXTENSIONS_OID};
use der::asn1::{AnyRef, ObjectIdentifier, OctetStringRef};
use der::{Decode, Sequence, Tag, Tagged};
use x509_cert::Certificate;

/// `SEQUENCE { OBJECT IDENTIFIER, ANY }`: every SGX extension and every TCB
/// component has this shape.
#[derive(Sequence)]
struct Entry<'a> {
    id: ObjectIdentifier,
    value: AnyRef<'a>,
}

/// The OIDs the derive version dispatches on.
struct Oids {
    top: [ObjectIdentifier; 7],
    tcb: Vec<ObjectIdentifier>,
}

impl Oids {
    fn new() -> Oids {
        let base = ObjectIdentifier::new_unwrap(SGX_EXTENSIONS_OID);
        let arc = |o: ObjectIdentifier, n| o.push_arc(n).expect("short OID");
        let top = [0, 1, 2, 3, 4, 5, 6].map(|n| arc(base, n));
        let tcb = (0..=18).map(|n| arc(top[2], n)).collect();
        Oids { top, tcb }
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T, name: &str) -> Result<(), String> {
    if slot.replace(v).is_some() {
        return Err(format!("SGX extension {name} appears more than once"));
    }
    Ok(())
}

fn octets<const N: usize>(v: AnyRef<'_>, name: &str) -> Result<[u8; N], String> {
    let o = v
        .decode_as::<OctetStringRef<'_>>()
        .map_err(|e| format!("{name}: {e}"))?;
    <[u8; N]>::try_from(o.as_bytes())
        .map_err(|_| format!("{name} is {} bytes, expected {N}", o.as_bytes().len()))
}

/// The derive version: the same rules as the hand walker (required parts
/// exactly once, unknown ones skipped), with `der`'s errors.
fn derive_from_der(ext: &[u8], oids: &Oids) -> Result<PckExtensions, String> {
    let items = Vec::<Entry<'_>>::from_der(ext).map_err(|e| e.to_string())?;
    let (mut ppid, mut tcb, mut pceid, mut fmspc, mut sgx_type, mut instance) =
        (None, None, None, None, None, None);
    for item in items {
        match oids.top.iter().position(|o| *o == item.id) {
            Some(1) => set_once(&mut ppid, octets::<16>(item.value, "PPID")?, "PPID")?,
            Some(2) => {
                let comps = item
                    .value
                    .decode_as::<Vec<Entry<'_>>>()
                    .map_err(|e| format!("TCB: {e}"))?;
                let mut svn: [Option<u8>; 16] = [None; 16];
                let (mut pcesvn, mut cpusvn) = (None, None);
                for c in comps {
                    match oids.tcb.iter().position(|o| *o == c.id) {
                        Some(n @ 1..=16) => {
                            let v = c
                                .value
                                .decode_as::<u8>()
                                .map_err(|e| format!("TCB component {n}: {e}"))?;
                            set_once(&mut svn[n - 1], v, "TCB component")?;
                        }
                        Some(17) => {
                            let v = c
                                .value
                                .decode_as::<u16>()
                                .map_err(|e| format!("PCESVN: {e}"))?;
                            set_once(&mut pcesvn, v, "PCESVN")?;
                        }
                        Some(18) => {
                            set_once(&mut cpusvn, octets::<16>(c.value, "CPUSVN")?, "CPUSVN")?
                        }
                        _ => {}
                    }
                }
                let mut comp = [0u8; 16];
                for (i, (o, s)) in comp.iter_mut().zip(svn).enumerate() {
                    *o = s.ok_or(format!("SGX extension TCB component {} is missing", i + 1))?;
                }
                let pcesvn = pcesvn.ok_or("SGX extension PCESVN is missing")?;
                let cpusvn = cpusvn.ok_or("SGX extension CPUSVN is missing")?;
                set_once(&mut tcb, (comp, pcesvn, cpusvn), "TCB")?;
            }
            Some(3) => set_once(&mut pceid, octets::<2>(item.value, "PCE-ID")?, "PCE-ID")?,
            Some(4) => set_once(&mut fmspc, octets::<6>(item.value, "FMSPC")?, "FMSPC")?,
            Some(5) => {
                if item.value.tag() != Tag::Enumerated {
                    return Err(format!("SGX type: tag {}", item.value.tag()));
                }
                // der 0.7 has no unsigned ENUMERATED outside a derived enum
                // with every value listed; read it as an INTEGER's contents.
                let any =
                    AnyRef::new(Tag::Integer, item.value.value()).map_err(|e| e.to_string())?;
                let v = any
                    .decode_as::<u64>()
                    .map_err(|e| format!("SGX type: {e}"))?;
                let t = match v {
                    0 => SgxType::Standard,
                    1 => SgxType::Scalable,
                    2 => SgxType::ScalableWithIntegrity,
                    n => SgxType::Unknown(n),
                };
                set_once(&mut sgx_type, t, "SGX type")?;
            }
            Some(6) => set_once(
                &mut instance,
                octets::<16>(item.value, "platform instance ID")?,
                "platform instance ID",
            )?,
            _ => {}
        }
    }
    let (comp, pcesvn, cpusvn) = tcb.ok_or("SGX extension TCB is missing")?;
    Ok(PckExtensions {
        ppid: ppid.ok_or("SGX extension PPID is missing")?,
        sgx_tcb_comp_svn: comp,
        pcesvn,
        cpusvn,
        pceid: pceid.ok_or("SGX extension PCE-ID is missing")?,
        fmspc: fmspc.ok_or("SGX extension FMSPC is missing")?,
        sgx_type: sgx_type.ok_or("SGX extension SGX type is missing")?,
        platform_instance_id: instance,
    })
}

fn vectors() -> PathBuf {
    std::env::var_os("COCOON_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors"))
        })
}

/// The SGX extensions value of every PCK leaf in the TDX vectors.
fn real_extensions() -> Vec<Vec<u8>> {
    let oid = ObjectIdentifier::new_unwrap(SGX_EXTENSIONS_OID);
    let mut out = Vec::new();
    for f in [
        "tdx/dcap-qvl/tdx_quote",
        "tdx/dcap-qvl/sgx_quote",
        "tdx/go-tdx-guest/quote_v5_sample.dat",
        "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
        "tdx/trustee-gnr/tdx_quote_6.dat",
    ] {
        let Ok(bytes) = std::fs::read(vectors().join(f)) else {
            eprintln!("skipped {f}: not found");
            continue;
        };
        let Ok((q, _)) = Quote::parse_prefix(&bytes) else {
            eprintln!("skipped {f}: not a quote");
            continue;
        };
        let pem = q.pck_cert_chain_pem();
        let pem = &pem[..pem.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)];
        let chain = Certificate::load_pem_chain(pem).expect("PEM chain");
        let ext = chain[0]
            .tbs_certificate
            .extensions
            .as_ref()
            .expect("extensions");
        let value = ext
            .iter()
            .find(|e| e.extn_id == oid)
            .expect("SGX extensions");
        out.push(value.extn_value.as_bytes().to_vec());
    }
    out
}

fn main() {
    let oids = Oids::new();
    let exts = real_extensions();
    assert!(
        !exts.is_empty(),
        "no TDX vectors found under {}",
        vectors().display()
    );
    for e in &exts {
        assert_eq!(
            Ok(PckExtensions::from_der(e).expect("hand walker")),
            derive_from_der(e, &oids),
            "the two decoders disagree"
        );
    }

    // Strictness: what each says about inputs the profile or DER forbids.
    let good = &exts[0];
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut appended = good.clone();
    appended.push(0);
    cases.push(("trailing byte", appended));
    cases.push(("truncated", good[..good.len() - 1].to_vec()));
    let mut indefinite = good.clone();
    indefinite[1] = 0x80;
    cases.push(("indefinite length", indefinite));
    cases.push((
        "non-minimal length",
        vec![0x30, 0x81, 0x05, 0x04, 0x03, 1, 2, 3],
    ));
    cases.push(("multi-byte tag", vec![0x1F, 0x01, 0x00]));
    cases.push(("SET for SEQUENCE", vec![0x31, 0x00]));
    cases.push(("empty SEQUENCE", vec![0x30, 0x00]));
    // A second FMSPC entry appended inside the outer SEQUENCE.
    let fmspc_entry = {
        let mut e = vec![0x06, 0x0A];
        e.extend_from_slice(&[0x2A, 0x86, 0x48, 0x86, 0xF8, 0x4D, 0x01, 0x0D, 0x01, 0x04]);
        e.extend_from_slice(&[0x04, 0x06, 0, 0, 0, 0, 0, 0]);
        let mut s = vec![0x30, e.len() as u8];
        s.extend(e);
        s
    };
    let mut dup_body = seq_contents(good).to_vec();
    dup_body.extend_from_slice(&fmspc_entry);
    cases.push(("duplicate FMSPC", seq(&dup_body)));
    // The first TCB component's INTEGER made negative, in place.
    let first_comp = find(
        good,
        &[
            0x2A, 0x86, 0x48, 0x86, 0xF8, 0x4D, 0x01, 0x0D, 0x01, 0x02, 0x01, 0x02, 0x01,
        ],
    );
    if let Some(at) = first_comp {
        let mut neg = good.clone();
        neg[at + 13] = 0x80;
        cases.push(("negative TCB component", neg));
    }
    println!("{:<24} {:<58} der derive", "input", "hand walker");
    for (name, bytes) in &cases {
        let hand = PckExtensions::from_der(bytes)
            .map(|_| "accepted".to_string())
            .unwrap_or_else(|e| e.to_string());
        let derive = derive_from_der(bytes, &oids)
            .map(|_| "accepted".to_string())
            .unwrap_or_else(|e| e);
        println!("{name:<24} {hand:<58} {derive}");
    }

    // Timing: both over the same values, interleaved rounds, best of each.
    let rounds = 15;
    let per_round = 20_000 / exts.len().max(1);
    let (mut best_hand, mut best_derive) = (f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            for e in &exts {
                black_box(PckExtensions::from_der(black_box(e)).is_ok());
            }
        }
        best_hand = best_hand.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..per_round {
            for e in &exts {
                black_box(derive_from_der(black_box(e), &oids).is_ok());
            }
        }
        best_derive = best_derive.min(t.elapsed().as_secs_f64());
    }
    let n = (per_round * exts.len()) as f64;
    println!(
        "\n{} PCK extension values x {per_round}: hand walker {:.2} us, der derive {:.2} us per decode; derive / hand = {:.2}",
        exts.len(),
        best_hand / n * 1e6,
        best_derive / n * 1e6,
        best_derive / best_hand
    );
}

/// The contents of a DER SEQUENCE (well-formed input assumed: a vector).
fn seq_contents(b: &[u8]) -> &[u8] {
    let header = match b[1] {
        l if l < 0x80 => 2,
        l => 2 + usize::from(l & 0x7F),
    };
    &b[header..]
}

fn seq(body: &[u8]) -> Vec<u8> {
    let n = body.len();
    let mut out = vec![0x30];
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(body);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
