//! Differential test: our TDX verifier (`cocoon_verifier::tdx::verify_tdx`,
//! our own DCAP core run cold, and one warm `TdxVerifier` whose caches see
//! every input) against the `dcap-qvl` crate called directly, over every quote vector that
//! comes with complete collateral, the vector itself and more than 10,000
//! deterministic mutations of it (random bit and byte flips anywhere, flips in
//! every field that `Quote::field_ranges` names, length fields off by one,
//! containers grown, flips of every non-base64 byte of the PEM chain and
//! rewrites of it, truncations and extensions), each at the vector's
//! verification time.
//!
//! Our side runs under a policy that skips every reference value and allows
//! every TCB status but Revoked, and `dcap-qvl` with the same `allow_debug`,
//! so only the evidence decides. For every input: ours accepts ⇔ `dcap-qvl`
//! accepts, and when both accept they name the same TCB status.
//!
//! Where the two differ by design, the difference is listed in
//! [`KnownDifference`] with the reason from the specification; the test
//! asserts that ours rejects such an input for exactly that reason, counts
//! the inputs `dcap-qvl` accepts, and fails when an exception never fires
//! (then `dcap-qvl` changed and the exception should go).
//!
//! The collateral handed to `dcap-qvl` is built here, not by our code: from
//! the vector's JSON for the `dcap-qvl` samples; from the PCS responses via
//! `TdxCollateral::from_pcs_responses` for go-tdx-guest (as `tdx_vectors.rs`
//! does), field for field.

use std::time::Instant;

use cocoon_attestation::collateral::TdxCollateral;
use cocoon_attestation::tdx::{ParseError, Quote, TeeType};
use cocoon_tests::{manifest, read_vector};
use cocoon_verifier::policy::{Check, TcbStatus, TdxPolicy};
use cocoon_verifier::tdx::{verify_tdx, TcbFinding, INTEL_ROOT_SHA256};
use cocoon_verifier::TdxVerifier;
use cocoon_verifier::{ReasonKind, UnixTime};
use dcap_qvl::QuoteCollateralV3;
use sha2::Digest;

/// `allow_debug` on both sides.
const ALLOW_DEBUG: bool = false;
/// Random mutations per vector (four vectors, plus the targeted ones).
const RANDOM_PER_VECTOR: usize = 2_500;
/// The least number of mutated inputs the test must run.
const MIN_MUTATIONS: usize = 10_000;

/// One quote vector with its collateral in both forms.
struct Case {
    path: &'static str,
    quote: Vec<u8>,
    ours: TdxCollateral,
    theirs: QuoteCollateralV3,
    now: UnixTime,
}

fn text(rel: &str) -> String {
    String::from_utf8(read_vector(rel)).unwrap()
}

fn verification_time(path: &str) -> UnixTime {
    let m = manifest();
    let e = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} is not in the manifest"));
    UnixTime(
        e["expected"]["verification_time"]["unix"]
            .as_u64()
            .unwrap_or_else(|| panic!("{path} has no verification time")),
    )
}

/// `dcap-qvl`'s collateral from the `dcap-qvl` sample JSON, read here
/// (hex CRLs and signatures, text for the rest), independently of
/// `TdxCollateral::from_dcap_qvl_json`.
fn dcap_json(rel: &str) -> QuoteCollateralV3 {
    let v: serde_json::Value = serde_json::from_slice(&read_vector(rel)).unwrap();
    let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{rel}: {k}"));
    let h = |k: &str| hex::decode(s(k)).unwrap_or_else(|_| panic!("{rel}: {k} is not hex"));
    QuoteCollateralV3 {
        pck_crl_issuer_chain: s("pck_crl_issuer_chain").to_owned(),
        root_ca_crl: h("root_ca_crl"),
        pck_crl: h("pck_crl"),
        tcb_info_issuer_chain: s("tcb_info_issuer_chain").to_owned(),
        tcb_info: s("tcb_info").to_owned(),
        tcb_info_signature: h("tcb_info_signature"),
        qe_identity_issuer_chain: s("qe_identity_issuer_chain").to_owned(),
        qe_identity: s("qe_identity").to_owned(),
        qe_identity_signature: h("qe_identity_signature"),
        pck_certificate_chain: None,
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for name in ["tdx_quote", "tdx_quote_outdated", "sgx_quote"] {
        let path = match name {
            "tdx_quote" => "tdx/dcap-qvl/tdx_quote",
            "tdx_quote_outdated" => "tdx/dcap-qvl/tdx_quote_outdated",
            _ => "tdx/dcap-qvl/sgx_quote",
        };
        let json = format!("tdx/dcap-qvl/{name}_collateral.json");
        let ours = TdxCollateral::from_bytes(&read_vector(&json)).unwrap();
        let theirs = dcap_json(&json);
        // Both readings of the JSON give the same collateral.
        assert_eq!(ours.tcb_info, theirs.tcb_info, "{json}");
        assert_eq!(ours.qe_identity, theirs.qe_identity, "{json}");
        assert_eq!(ours.pck_crl.as_ref(), Some(&theirs.pck_crl), "{json}");
        assert_eq!(
            ours.root_ca_crl.as_ref(),
            Some(&theirs.root_ca_crl),
            "{json}"
        );
        out.push(Case {
            path,
            quote: read_vector(path),
            ours,
            theirs,
            now: verification_time(path),
        });
    }
    let path = "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat";
    let chain = text("tdx/go-tdx-guest/tcb_info_issuer_chain.pem");
    let pck_crl = read_vector("tdx/go-tdx-guest/pckcrl");
    let root_crl = read_vector("tdx/go-tdx-guest/rootcrl.der");
    let pck_crl_chain = text("tdx/go-tdx-guest/pck_crl_issuer_chain.pem");
    let ours = TdxCollateral::from_pcs_responses(
        &read_vector("tdx/go-tdx-guest/sample_tcbInfo_response"),
        &chain,
        &read_vector("tdx/go-tdx-guest/sample_qeIdentity_response"),
        &chain,
        Some(pck_crl.clone()),
        &pck_crl_chain,
        Some(root_crl.clone()),
    )
    .unwrap();
    let theirs = QuoteCollateralV3 {
        pck_crl_issuer_chain: pck_crl_chain,
        root_ca_crl: root_crl,
        pck_crl,
        tcb_info_issuer_chain: chain.clone(),
        tcb_info: ours.tcb_info.clone(),
        tcb_info_signature: ours.tcb_info_signature.clone(),
        qe_identity_issuer_chain: chain,
        qe_identity: ours.qe_identity.clone(),
        qe_identity_signature: ours.qe_identity_signature.clone(),
        pck_certificate_chain: None,
    };
    out.push(Case {
        path,
        quote: read_vector(path),
        ours,
        theirs,
        now: verification_time(path),
    });
    out
}

/// Skips every reference value and allows every status but Revoked.
fn permissive_policy() -> TdxPolicy {
    TdxPolicy {
        mrtd: Check::Skip,
        rtmr: [Check::Skip, Check::Skip, Check::Skip, Check::Skip],
        mrconfigid: Check::Skip,
        mrowner: Check::Skip,
        mrownerconfig: Check::Skip,
        td_attributes: Check::Skip,
        xfam: Check::Skip,
        min_tee_tcb_svn: Check::Skip,
        report_data: Check::Skip,
        allowed_tcb_statuses: TcbStatus::ALL
            .into_iter()
            .filter(|s| *s != TcbStatus::Revoked)
            .collect(),
        max_collateral_age_secs: Check::Skip,
        allow_debug: ALLOW_DEBUG,
    }
}

/// A verdict: the TCB status on acceptance, the reasons on rejection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Accepted(String),
    Rejected(String),
}

impl Verdict {
    fn accepted(&self) -> bool {
        matches!(self, Verdict::Accepted(_))
    }
}

/// Runs both verifiers on one input.
struct Judges {
    root: Vec<u8>,
    policy: TdxPolicy,
    /// Our own DCAP core, one warm verifier for every input (its caches
    /// see every mutated chain and must never serve a wrong verdict).
    core: TdxVerifier,
}

impl Judges {
    fn new() -> Judges {
        let root = read_vector("tdx/intel-root/TrustedRootCA.der");
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&root)),
            INTEL_ROOT_SHA256,
            "dcap-qvl gets the same Intel root as the one our verifier pins"
        );
        Judges {
            root,
            policy: permissive_policy(),
            core: TdxVerifier::new(),
        }
    }

    /// Our verdict, with the rejection's reason kinds for the exceptions.
    fn ours(&self, c: &Case, quote: &[u8]) -> (Verdict, Vec<ReasonKind>) {
        Self::verdict(verify_tdx(quote, &c.ours, &self.policy, c.now))
    }

    /// The verdict of our own DCAP core (`TdxVerifier`, warm).
    fn core(&self, c: &Case, quote: &[u8]) -> (Verdict, Vec<ReasonKind>) {
        Self::verdict(self.core.verify(quote, &c.ours, &self.policy, c.now))
    }

    fn verdict(
        r: Result<
            cocoon_verifier::tdx::VerifiedTdx,
            (cocoon_verifier::Rejection, Option<TcbFinding>),
        >,
    ) -> (Verdict, Vec<ReasonKind>) {
        match r {
            Ok(v) => (Verdict::Accepted(v.tcb_status().name().to_owned()), vec![]),
            Err((r, _)) => (
                Verdict::Rejected(
                    r.reasons()
                        .iter()
                        .map(|x| format!("{:?}: {}", x.kind, x.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                r.reasons().iter().map(|x| x.kind).collect(),
            ),
        }
    }

    fn theirs(&self, c: &Case, quote: &[u8]) -> Verdict {
        let verifier =
            dcap_qvl::verify::QuoteVerifier::new(self.root.clone()).allow_debug(ALLOW_DEBUG);
        match verifier.verify(quote, &c.theirs, c.now.0) {
            Ok(r) => Verdict::Accepted(r.status),
            Err(e) => Verdict::Rejected(format!("{e:#}")),
        }
    }
}

/// Inputs on which ours and `dcap-qvl` differ on purpose. Each is decided
/// from the specification; ours must reject such an input with the given
/// reason kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KnownDifference {
    /// Our verifier is a TDX verifier: an SGX quote (our parser reads TEE
    /// type 0x00) is refused by name ("this is an SGX quote, not a TDX
    /// quote"), while `dcap-qvl` verifies SGX quotes too. Scope, not a bug on
    /// either side.
    SgxQuote,
    /// Bytes inside the signature data (or the QE report certification data)
    /// that no part of the quote uses. The Quote Format tables define the
    /// signature data as exactly the signature, the key and the
    /// certification data, each with its declared size, and Intel's
    /// reference QVL refuses a quote whose parse does not end exactly where
    /// its declared sizes say ("There is additional, not expected data in
    /// quote"). `dcap-qvl` decodes what it needs and ignores the rest, so
    /// these unsigned bytes pass. Ours is right to refuse.
    UnusedBytesInSignatureData,
    /// The certification data type after the attestation key of a version 4
    /// or 5 quote must be 6 (QE report certification data): Quote Format,
    /// and Intel's QVL `Quote::validate` ("Quote v4 supports only 6
    /// certification data type"). `dcap-qvl` never reads that type and
    /// decodes the data as type 6 whatever it says. Ours is right to refuse.
    OuterCertificationDataType,
    /// The first PEM block of the PCK certificate chain (the leaf) must be
    /// labelled `CERTIFICATE` (RFC 7468 section 5.1) for ours to read it as
    /// the PCK certificate; `dcap-qvl` reads a block with any label as a
    /// certificate, so a leaf labelled `X509 CERTIFICATE` passes there. The
    /// DER inside is the same genuine certificate either way; ours refuses
    /// to read a block as something its label says it is not.
    LeafPemLabel,
}

impl KnownDifference {
    /// Which difference, if any, applies to `bytes`, decided from our own
    /// parse of them.
    fn of(bytes: &[u8]) -> Option<KnownDifference> {
        match Quote::parse_prefix(bytes) {
            Ok((q, _)) if q.tee_type() == TeeType::Sgx => Some(KnownDifference::SgxQuote),
            Err(ParseError::UnusedBytes { .. }) => {
                Some(KnownDifference::UnusedBytesInSignatureData)
            }
            Err(ParseError::UnexpectedCertificationDataType { expected: 6, .. }) => {
                Some(KnownDifference::OuterCertificationDataType)
            }
            Ok((q, _))
                if leaf_pem_labels(q.pck_cert_chain_pem())
                    != Some(("CERTIFICATE", "CERTIFICATE")) =>
            {
                Some(KnownDifference::LeafPemLabel)
            }
            _ => None,
        }
    }

    /// The reason kind ours must give.
    fn our_reason(self) -> ReasonKind {
        match self {
            KnownDifference::SgxQuote => ReasonKind::UnknownValue,
            KnownDifference::UnusedBytesInSignatureData
            | KnownDifference::OuterCertificationDataType => ReasonKind::Malformed,
            KnownDifference::LeafPemLabel => ReasonKind::Chain,
        }
    }

    const ALL: [KnownDifference; 4] = [
        KnownDifference::SgxQuote,
        KnownDifference::UnusedBytesInSignatureData,
        KnownDifference::OuterCertificationDataType,
        KnownDifference::LeafPemLabel,
    ];
}

/// The labels on the boundaries of the first PEM block of a chain, found as
/// RFC 7468 (and the `pem` crate `dcap-qvl` uses) find them; `None` when
/// there is no complete first block or a label is not text.
fn leaf_pem_labels(chain: &[u8]) -> Option<(&str, &str)> {
    fn after<'a>(s: &'a [u8], marker: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
        let at = s.windows(marker.len()).position(|w| w == marker)?;
        Some((&s[..at], &s[at + marker.len()..]))
    }
    let (_, rest) = after(chain, b"-----BEGIN ")?;
    let (begin, rest) = after(rest, b"-----")?;
    let (_, rest) = after(rest, b"-----END ")?;
    let (end, _) = after(rest, b"-----")?;
    Some((
        std::str::from_utf8(begin).ok()?,
        std::str::from_utf8(end).ok()?,
    ))
}

use cocoon_tests::Rng;

/// A mutated input and how it was made.
struct Mutation {
    what: String,
    bytes: Vec<u8>,
}

fn add_le(bytes: &mut [u8], at: usize, width: usize, delta: i64) {
    let mut v = [0u8; 8];
    v[..width].copy_from_slice(&bytes[at..at + width]);
    let n = (u64::from_le_bytes(v) as i64).wrapping_add(delta) as u64;
    bytes[at..at + width].copy_from_slice(&n.to_le_bytes()[..width]);
}

/// Every mutation of one vector, deterministically from `seed`.
fn mutations(c: &Case, seed: u64) -> Vec<Mutation> {
    let q = &c.quote;
    let (parsed, _) = Quote::parse_prefix(q).expect("every vector parses");
    let quote_len = parsed.as_bytes().len();
    let fields = parsed.field_ranges();
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut push = |what: String, bytes: Vec<u8>| {
        if bytes != *q {
            out.push(Mutation { what, bytes });
        }
    };

    // Targeted: in every named field, the lowest bit of its first byte, the
    // highest of its last, a whole random byte, and a random value.
    for f in fields.iter().filter(|f| f.len > 0) {
        let r = f.range();
        for (at, mask) in [
            (r.start, 0x01u8),
            (r.end - 1, 0x80),
            (r.start + rng.below(f.len), 0xFF),
            (r.start + rng.below(f.len), rng.byte() | 1),
        ] {
            let mut b = q.clone();
            b[at] ^= mask;
            push(format!("{f}: byte {at} ^= {mask:#04x}"), b);
        }
    }
    // Length fields off by one (and by 64), nothing else changed.
    let (sig_len_at, cd_size_at, auth_size_at, pck_size_at) = {
        let at = |section: &str, name: &str| {
            fields
                .iter()
                .find(|f| f.section == section && f.name == name)
                .map(|f| f.offset)
        };
        (
            at("signature_data", "signature_data_len").unwrap(),
            at("certification_data", "cert_data_size"),
            at("qe_report_certification_data", "qe_auth_data_size").unwrap(),
            at("pck_certification_data", "pck_cert_data_size").unwrap(),
        )
    };
    let lengths: Vec<(&str, usize, usize)> = [
        Some(("signature_data_len", sig_len_at, 4)),
        cd_size_at.map(|at| ("cert_data_size", at, 4)),
        Some(("qe_auth_data_size", auth_size_at, 2)),
        Some(("pck_cert_data_size", pck_size_at, 4)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for &(name, at, width) in &lengths {
        for delta in [-1i64, 1, 64] {
            let mut b = q[..quote_len].to_vec();
            add_le(&mut b, at, width, delta);
            push(format!("{name} {delta:+}"), b);
        }
    }
    // Containers grown together by k bytes of room at the end of the quote,
    // with the length fields enclosing the grown one raised too: unused
    // bytes at the end of the signature data, of the QE report
    // certification data, or extra bytes after the PEM chain.
    for k in [1usize, 2, 7, 33] {
        let grow = |names: &[&str], fill: u8| {
            let mut b = q[..quote_len].to_vec();
            for &(name, at, width) in &lengths {
                if names.contains(&name) {
                    add_le(&mut b, at, width, k as i64);
                }
            }
            b.extend(std::iter::repeat_n(fill, k));
            b
        };
        push(
            format!("signature data grown by {k} zero bytes"),
            grow(&["signature_data_len"], 0),
        );
        if cd_size_at.is_some() {
            push(
                format!("certification data grown by {k} 0x41 bytes"),
                grow(&["signature_data_len", "cert_data_size"], 0x41),
            );
        }
        push(
            format!("PCK certificate chain grown by {k} newline bytes"),
            grow(
                &["signature_data_len", "cert_data_size", "pck_cert_data_size"],
                b'\n',
            ),
        );
    }
    // The PEM chain, which no signature covers as text: a flip of every
    // byte that is not a base64 character (boundaries, labels, line ends,
    // padding, the NUL after the chain), and whole-chain rewrites with the
    // length fields adjusted.
    let chain_field = fields
        .iter()
        .find(|f| f.name == "pck_cert_chain")
        .expect("a PCK certificate chain");
    let chain = &q[chain_field.range()];
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    for (i, &byte) in chain.iter().enumerate().filter(|(_, b)| !is_b64(**b)) {
        for mask in [0x01u8, 0x20, 0x80] {
            let mut b = q.clone();
            b[chain_field.offset + i] ^= mask;
            push(
                format!("PEM chain byte {i} ({:?}) ^= {mask:#04x}", char::from(byte)),
                b,
            );
        }
    }
    let with_chain = |new: &[u8]| -> Vec<u8> {
        let delta = new.len() as i64 - chain.len() as i64;
        let mut b = q[..chain_field.offset].to_vec();
        for &(name, at, width) in &lengths {
            if name != "qe_auth_data_size" {
                add_le(&mut b, at, width, delta);
            }
        }
        b.extend_from_slice(new);
        b.extend_from_slice(&q[quote_len..]);
        b
    };
    let blocks = pem_blocks(chain);
    assert_eq!(blocks.len(), 3, "{}: leaf, CA, root", c.path);
    let tail = &chain[blocks.iter().map(|b| b.len()).sum::<usize>()..];
    let join = |parts: &[&[u8]]| parts.concat();
    let (leaf, ca, root) = (blocks[0], blocks[1], blocks[2]);
    let leaf_lines: Vec<u8> = {
        // The leaf's base64 on one line.
        let text = String::from_utf8(leaf.to_vec()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        let (first, last) = (lines.remove(0), lines.pop().unwrap());
        format!("{first}\n{}\n{last}\n", lines.concat()).into_bytes()
    };
    let relabel = |block: &[u8], label: &str| {
        String::from_utf8(block.to_vec())
            .unwrap()
            .replace("CERTIFICATE-----", &format!("{label}-----"))
            .into_bytes()
    };
    for (what, new) in [
        (
            "CRLF line ends",
            String::from_utf8_lossy(chain)
                .replace('\n', "\r\n")
                .into_bytes(),
        ),
        ("no NUL after the chain", join(&[leaf, ca, root])),
        ("root left out", join(&[leaf, ca, tail])),
        ("leaf alone", join(&[leaf, tail])),
        ("leaf and CA swapped", join(&[ca, leaf, root, tail])),
        (
            "leaf base64 on one line",
            join(&[&leaf_lines, ca, root, tail]),
        ),
        (
            "spaces before the leaf's line ends",
            join(&[
                String::from_utf8_lossy(leaf)
                    .replace('\n', " \n")
                    .as_bytes(),
                ca,
                root,
                tail,
            ]),
        ),
        (
            "bytes that are not UTF-8 between the blocks",
            join(&[leaf, b"\x80\xFF not PEM\n", ca, root, tail]),
        ),
        (
            "leaf labelled X509 CERTIFICATE",
            join(&[&relabel(leaf, "X509 CERTIFICATE"), ca, root, tail]),
        ),
        (
            "CA labelled TRUSTED CERTIFICATE",
            join(&[leaf, &relabel(ca, "TRUSTED CERTIFICATE"), root, tail]),
        ),
    ] {
        push(format!("PEM chain rewritten: {what}"), with_chain(&new));
    }
    // Truncations: at each field's start and middle, one byte short of the
    // quote, of the input, and at random lengths.
    for f in &fields {
        push(
            format!("truncated to {} ({f})", f.offset),
            q[..f.offset].to_vec(),
        );
        push(
            format!("truncated to {} (inside {f})", f.offset + f.len / 2),
            q[..f.offset + f.len / 2].to_vec(),
        );
    }
    push("truncated to the quote".into(), q[..quote_len].to_vec());
    push(
        "truncated one byte short of the quote".into(),
        q[..quote_len - 1].to_vec(),
    );
    push("truncated by one byte".into(), q[..q.len() - 1].to_vec());
    for _ in 0..16 {
        let n = rng.below(q.len());
        push(format!("truncated to {n} (random)"), q[..n].to_vec());
    }
    // Extensions after the input (unsigned, ignored by both by design).
    for tail in [
        vec![0u8],
        vec![0; 16],
        vec![0xFF; 3],
        (0..64).map(|_| rng.byte()).collect(),
        q.clone(),
    ] {
        let mut b = q.clone();
        b.extend_from_slice(&tail);
        push(format!("extended by {} bytes", tail.len()), b);
    }
    // Random: 1 to 3 bit flips or byte replacements anywhere in the input.
    for _ in 0..RANDOM_PER_VECTOR {
        let mut b = q.clone();
        let mut what = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(b.len());
            if rng.below(2) == 0 {
                let bit = rng.below(8);
                b[at] ^= 1 << bit;
                what.push(format!("bit {bit} of byte {at}"));
            } else {
                let v = rng.byte();
                what.push(format!("byte {at} {:#04x} -> {v:#04x}", b[at]));
                b[at] = v;
            }
        }
        push(format!("random: {}", what.join(", ")), b);
    }
    out
}

/// The PEM blocks of a chain, each with the line end after it.
fn pem_blocks(chain: &[u8]) -> Vec<&[u8]> {
    const END: &[u8] = b"-----END CERTIFICATE-----\n";
    let mut out = Vec::new();
    let mut rest = chain;
    while let Some(at) = rest.windows(END.len()).position(|w| w == END) {
        let (block, after) = rest.split_at(at + END.len());
        out.push(block);
        rest = after;
    }
    out
}

/// What one vector's run found.
#[derive(Default)]
struct Tally {
    inputs: usize,
    both_accept: usize,
    both_reject: usize,
    /// Per known difference: inputs it covered, and of those, how many
    /// `dcap-qvl` accepted (a real disagreement).
    known: std::collections::BTreeMap<String, (usize, usize)>,
    disagreements: Vec<String>,
}

fn judge(j: &Judges, c: &Case, what: &str, bytes: &[u8], t: &mut Tally) {
    t.inputs += 1;
    let theirs = j.theirs(c, bytes);
    // Our own DCAP core must give the same verdict as `verify_tdx`
    // (and so as dcap-qvl, whose comparison follows).
    let (ours, kinds) = j.ours(c, bytes);
    let (core, core_kinds) = j.core(c, bytes);
    if core.accepted() != ours.accepted()
        || (ours.accepted() && core != ours)
        || (KnownDifference::of(bytes).is_some_and(|k| !core_kinds.contains(&k.our_reason())))
    {
        t.disagreements.push(format!(
            "{}: {what}: TdxVerifier and verify_tdx differ\n    core:     {core:?}\n    ours:     {ours:?}\n    dcap-qvl: {theirs:?}",
            c.path
        ));
    }
    if let Some(k) = KnownDifference::of(bytes) {
        let e = t.known.entry(format!("{k:?}")).or_default();
        e.0 += 1;
        if theirs.accepted() {
            e.1 += 1;
        }
        if ours.accepted() || !kinds.contains(&k.our_reason()) {
            t.disagreements.push(format!(
                "{}: {what}: documented difference {k:?} requires ours to reject with {:?}\n    ours:     {ours:?}\n    dcap-qvl: {theirs:?}",
                c.path,
                k.our_reason()
            ));
        }
        return;
    }
    match (&ours, &theirs) {
        (Verdict::Accepted(a), Verdict::Accepted(b)) if a == b => t.both_accept += 1,
        (Verdict::Rejected(_), Verdict::Rejected(_)) => t.both_reject += 1,
        _ => t.disagreements.push(format!(
            "{}: {what}\n    ours:     {ours:?}\n    dcap-qvl: {theirs:?}",
            c.path
        )),
    }
}

#[test]
fn ours_accepts_exactly_what_dcap_qvl_accepts() {
    let started = Instant::now();
    let judges = Judges::new();
    let cases = cases();
    assert_eq!(cases.len(), 4);

    // The vectors themselves, with the verdicts the manifest gives.
    let expected: [(&str, Option<&str>, Option<&str>); 4] = [
        ("tdx/dcap-qvl/tdx_quote", Some("UpToDate"), Some("UpToDate")),
        ("tdx/dcap-qvl/tdx_quote_outdated", None, None),
        (
            "tdx/dcap-qvl/sgx_quote",
            None,
            Some("ConfigurationAndSWHardeningNeeded"),
        ),
        ("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat", None, None),
    ];
    for (c, (path, ours, theirs)) in cases.iter().zip(expected) {
        assert_eq!(c.path, path);
        let status = |v: Verdict| match v {
            Verdict::Accepted(s) => Some(s),
            Verdict::Rejected(_) => None,
        };
        assert_eq!(
            status(judges.ours(c, &c.quote).0).as_deref(),
            ours,
            "{path}: ours"
        );
        assert_eq!(
            status(judges.theirs(c, &c.quote)).as_deref(),
            theirs,
            "{path}: dcap-qvl"
        );
    }

    let mut total = Tally::default();
    for (i, c) in cases.iter().enumerate() {
        let mut t = Tally::default();
        judge(&judges, c, "unmodified", &c.quote, &mut t);
        for m in mutations(c, 0x5EED_0000 + i as u64) {
            judge(&judges, c, &m.what, &m.bytes, &mut t);
        }
        println!(
            "{}: {} inputs: both accept {}, both reject {}, documented differences {:?}, disagreements {}",
            c.path,
            t.inputs,
            t.both_accept,
            t.both_reject,
            t.known,
            t.disagreements.len()
        );
        total.inputs += t.inputs;
        total.both_accept += t.both_accept;
        total.both_reject += t.both_reject;
        for (k, (n, accepted)) in t.known {
            let e = total.known.entry(k).or_default();
            e.0 += n;
            e.1 += accepted;
        }
        total.disagreements.extend(t.disagreements);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "total: {} inputs ({} mutated) in {secs:.1} s ({:.2} ms each, both verifiers); both accept {}, both reject {}, documented differences (covered, dcap-qvl accepted) {:?}",
        total.inputs,
        total.inputs - cases.len(),
        secs * 1000.0 / total.inputs as f64,
        total.both_accept,
        total.both_reject,
        total.known
    );

    for d in &total.disagreements {
        println!("DISAGREEMENT {d}");
    }
    assert!(
        total.disagreements.is_empty(),
        "{} inputs where ours and dcap-qvl disagree (printed above)",
        total.disagreements.len()
    );
    assert!(
        total.inputs - cases.len() >= MIN_MUTATIONS,
        "only {} mutations",
        total.inputs - cases.len()
    );
    // Some mutations (bytes after the quote) must still verify, or the
    // comparison says nothing about acceptance.
    assert!(
        total.both_accept > 1,
        "no mutated input was accepted by both"
    );
    // Every documented difference must still be one: dcap-qvl accepted at
    // least one input it covers. If not, dcap-qvl changed; drop it.
    for k in KnownDifference::ALL {
        let (covered, accepted) = total
            .known
            .get(&format!("{k:?}"))
            .copied()
            .unwrap_or_default();
        assert!(
            accepted > 0,
            "documented difference {k:?} covered {covered} inputs but dcap-qvl accepted none: remove it"
        );
    }
}

/// The collateral's signing chains are PEM text that no signature covers
/// (only the certificates inside are signed): every flip of a byte that is
/// not a base64 character, random flips anywhere, and whole-chain rewrites,
/// in the TCB info chain, the QE identity chain and both at once, judged by
/// ours (cold and warm) and `dcap-qvl` on the genuine quote. Same verdict
/// on every input.
#[test]
fn collateral_chain_text_is_judged_as_dcap_qvl_judges_it() {
    let judges = Judges::new();
    let case = cases().remove(0);
    assert_eq!(case.path, "tdx/dcap-qvl/tdx_quote");
    let chain = case.ours.tcb_info_issuer_chain.clone();
    let mut rng = Rng(0x5EED_C0DE);
    let mut variants: Vec<(String, String)> = Vec::new();
    let bytes = chain.as_bytes();
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    for (i, &b) in bytes.iter().enumerate().filter(|(_, b)| !is_b64(**b)) {
        for mask in [0x01u8, 0x20, 0x80] {
            let mut v = bytes.to_vec();
            v[i] = b ^ mask;
            // The collateral carries the chain as text: only UTF-8 is
            // representable.
            if let Ok(s) = String::from_utf8(v) {
                variants.push((format!("byte {i} ({:?}) ^= {mask:#04x}", char::from(b)), s));
            }
        }
    }
    for _ in 0..300 {
        let mut v = bytes.to_vec();
        let at = rng.below(v.len());
        v[at] ^= 1 << rng.below(7);
        if let Ok(s) = String::from_utf8(v) {
            variants.push((format!("random flip at {at}"), s));
        }
    }
    let blocks = pem_blocks(bytes);
    assert_eq!(blocks.len(), 2, "signer and root");
    let text = |parts: &[&[u8]]| String::from_utf8(parts.concat()).unwrap();
    for (what, s) in [
        ("root left out", text(&[blocks[0]])),
        ("signer alone twice", text(&[blocks[0], blocks[0]])),
        ("root first", text(&[blocks[1], blocks[0]])),
        ("CRLF", chain.replace('\n', "\r\n")),
        (
            "blank line inside the signer",
            chain.replacen("\n", "\n\n", 2),
        ),
        ("empty", String::new()),
        (
            "signer labelled X509 CERTIFICATE",
            chain.replacen("CERTIFICATE-----", "X509 CERTIFICATE-----", 2),
        ),
        (
            "five copies of the root",
            text(&[
                blocks[0], blocks[1], blocks[1], blocks[1], blocks[1], blocks[1],
            ]),
        ),
    ] {
        variants.push((format!("rewritten: {what}"), s));
    }
    let warm = TdxVerifier::new();
    let mut disagreements = Vec::new();
    let mut accepted = 0;
    for (what, s) in &variants {
        for (slot, tcb, qe) in [
            ("TCB info chain", true, false),
            ("QE identity chain", false, true),
            ("both chains", true, true),
        ] {
            let mut c = Case {
                path: case.path,
                quote: case.quote.clone(),
                ours: case.ours.clone(),
                theirs: case.theirs.clone(),
                now: case.now,
            };
            if tcb {
                c.ours.tcb_info_issuer_chain = s.clone();
                c.theirs.tcb_info_issuer_chain = s.clone();
            }
            if qe {
                c.ours.qe_identity_issuer_chain = s.clone();
                c.theirs.qe_identity_issuer_chain = s.clone();
            }
            let (ours, _) = judges.ours(&c, &c.quote);
            let hot = Judges::verdict(warm.verify(&c.quote, &c.ours, &judges.policy, c.now)).0;
            let theirs = judges.theirs(&c, &c.quote);
            let same = |a: &Verdict| match (a, &theirs) {
                (Verdict::Accepted(x), Verdict::Accepted(y)) => x == y,
                (Verdict::Rejected(_), Verdict::Rejected(_)) => true,
                _ => false,
            };
            if ours.accepted() {
                accepted += 1;
            }
            if !same(&ours) || !same(&hot) {
                disagreements.push(format!(
                    "{slot}: {what}\n    ours:     {ours:?}\n    warm:     {hot:?}\n    dcap-qvl: {theirs:?}"
                ));
            }
        }
    }
    println!(
        "collateral chains: {} inputs, ours accepted {accepted}, disagreements {}",
        variants.len() * 3,
        disagreements.len()
    );
    for d in &disagreements {
        println!("DISAGREEMENT {d}");
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements",
        disagreements.len()
    );
    assert!(
        accepted > 0,
        "some rewrites (the root left out) still verify"
    );
}

/// Random flips in every signed collateral item (CRLs, TCB info, QE
/// identity and their signatures), and the genuine input judged at every
/// second around each date the collateral and the chains carry: ours (cold
/// and warm) and `dcap-qvl` give the same verdict.
#[test]
fn collateral_bytes_and_dates_are_judged_as_dcap_qvl_judges_them() {
    let judges = Judges::new();
    let case = cases().remove(0);
    let warm = TdxVerifier::new();
    let mut rng = Rng(0x5EED_DA7E);
    let mut inputs: Vec<(String, TdxCollateral, QuoteCollateralV3, UnixTime)> = Vec::new();
    for item in 0..6 {
        for _ in 0..120 {
            let (mut ours, mut theirs) = (case.ours.clone(), case.theirs.clone());
            let flip = |b: &mut Vec<u8>, rng: &mut Rng| {
                let at = rng.below(b.len());
                b[at] ^= 1 << rng.below(8);
                at
            };
            let what = match item {
                0 => {
                    let at = flip(&mut theirs.root_ca_crl, &mut rng);
                    ours.root_ca_crl = Some(theirs.root_ca_crl.clone());
                    format!("root CA CRL byte {at}")
                }
                1 => {
                    let at = flip(&mut theirs.pck_crl, &mut rng);
                    ours.pck_crl = Some(theirs.pck_crl.clone());
                    format!("PCK CRL byte {at}")
                }
                2 => {
                    let at = flip(&mut theirs.tcb_info_signature, &mut rng);
                    ours.tcb_info_signature = theirs.tcb_info_signature.clone();
                    format!("TCB info signature byte {at}")
                }
                3 => {
                    let at = flip(&mut theirs.qe_identity_signature, &mut rng);
                    ours.qe_identity_signature = theirs.qe_identity_signature.clone();
                    format!("QE identity signature byte {at}")
                }
                4 | 5 => {
                    let text = if item == 4 {
                        &mut theirs.tcb_info
                    } else {
                        &mut theirs.qe_identity
                    };
                    let mut b = text.clone().into_bytes();
                    let at = rng.below(b.len());
                    b[at] ^= 1 << rng.below(7);
                    let Ok(s) = String::from_utf8(b) else {
                        continue;
                    };
                    *text = s;
                    ours.tcb_info = theirs.tcb_info.clone();
                    ours.qe_identity = theirs.qe_identity.clone();
                    format!(
                        "{} byte {at}",
                        if item == 4 { "TCB info" } else { "QE identity" }
                    )
                }
                _ => unreachable!(),
            };
            inputs.push((what, ours, theirs, case.now));
        }
    }
    // Every date: JSON issueDate/nextUpdate, CRL this/nextUpdate, and the
    // validity of every certificate on the paths, each -1, 0, +1 second.
    let date = |json: &str, k: &str| {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        cocoon_attestation::pcs::rfc3339_to_unix(v[k].as_str().unwrap()).unwrap()
    };
    let mut dates = vec![
        date(&case.ours.tcb_info, "issueDate"),
        date(&case.ours.tcb_info, "nextUpdate"),
        date(&case.ours.qe_identity, "issueDate"),
        date(&case.ours.qe_identity, "nextUpdate"),
    ];
    for crl in [&case.theirs.root_ca_crl, &case.theirs.pck_crl] {
        use der::Decode;
        let l = x509_cert::crl::CertificateList::from_der(crl).unwrap();
        dates.push(l.tbs_cert_list.this_update.to_unix_duration().as_secs());
        dates.push(
            l.tbs_cert_list
                .next_update
                .unwrap()
                .to_unix_duration()
                .as_secs(),
        );
    }
    let (q, _) = Quote::parse_prefix(&case.quote).unwrap();
    let mut pems = q.pck_cert_chain_pem().to_vec();
    pems.extend_from_slice(case.ours.tcb_info_issuer_chain.as_bytes());
    for der in pem_blocks(&pems).iter().map(|b| {
        let text = String::from_utf8_lossy(b).into_owned();
        x509_cert::Certificate::load_pem_chain(text.trim_start_matches('\0').as_bytes()).unwrap()
    }) {
        for c in der {
            let v = &c.tbs_certificate.validity;
            dates.push(v.not_before.to_unix_duration().as_secs());
            dates.push(v.not_after.to_unix_duration().as_secs());
        }
    }
    for d in dates {
        for t in [d.saturating_sub(1), d, d + 1] {
            inputs.push((
                format!("at {t} (date {d})"),
                case.ours.clone(),
                case.theirs.clone(),
                UnixTime(t),
            ));
        }
    }
    let mut disagreements = Vec::new();
    let mut accepted = 0;
    for (what, ours_c, theirs_c, now) in &inputs {
        let c = Case {
            path: case.path,
            quote: case.quote.clone(),
            ours: ours_c.clone(),
            theirs: theirs_c.clone(),
            now: *now,
        };
        let (ours, _) = judges.ours(&c, &c.quote);
        let hot = Judges::verdict(warm.verify(&c.quote, &c.ours, &judges.policy, c.now)).0;
        let theirs = judges.theirs(&c, &c.quote);
        let same = |a: &Verdict| match (a, &theirs) {
            (Verdict::Accepted(x), Verdict::Accepted(y)) => x == y,
            (Verdict::Rejected(_), Verdict::Rejected(_)) => true,
            _ => false,
        };
        accepted += usize::from(ours.accepted());
        if !same(&ours) || !same(&hot) {
            disagreements.push(format!(
                "{what}\n    ours:     {ours:?}\n    warm:     {hot:?}\n    dcap-qvl: {theirs:?}"
            ));
        }
    }
    println!(
        "collateral bytes and dates: {} inputs, ours accepted {accepted}, disagreements {}",
        inputs.len(),
        disagreements.len()
    );
    for d in &disagreements {
        println!("DISAGREEMENT {d}");
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements",
        disagreements.len()
    );
    assert!(accepted > 0);
}
