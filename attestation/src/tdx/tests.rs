//! Synthetic quotes of every kind, and the parser's refusals.

use super::*;

/// Parameters of a synthetic quote.
struct Build {
    version: u16,
    key_type: u16,
    tee_type: u32,
    body_type: u16,
    body_size: u32,
    body_len: usize,
    outer_type: u16,
    inner_type: u16,
    auth: Vec<u8>,
    chain: Vec<u8>,
}

impl Build {
    fn tdx(version: u16) -> Self {
        Build {
            version,
            key_type: 2,
            tee_type: TEE_TYPE_TDX,
            body_type: BODY_TYPE_TD15,
            body_size: TD15_BODY_SIZE as u32,
            body_len: if version == 5 {
                TD15_BODY_SIZE
            } else {
                TD10_BODY_SIZE
            },
            outer_type: 6,
            inner_type: 5,
            auth: vec![0xAA; 32],
            chain: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
        }
    }

    fn sgx_v3() -> Self {
        Build {
            version: 3,
            tee_type: TEE_TYPE_SGX,
            body_len: ENCLAVE_REPORT_SIZE,
            ..Build::tdx(4)
        }
    }

    fn qe_part(&self) -> Vec<u8> {
        let mut q = vec![0x51; ENCLAVE_REPORT_SIZE];
        q.extend_from_slice(&[0x52; 64]);
        q.extend_from_slice(&(self.auth.len() as u16).to_le_bytes());
        q.extend_from_slice(&self.auth);
        q.extend_from_slice(&self.inner_type.to_le_bytes());
        q.extend_from_slice(&(self.chain.len() as u32).to_le_bytes());
        q.extend_from_slice(&self.chain);
        q
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.key_type.to_le_bytes());
        b.extend_from_slice(&self.tee_type.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&INTEL_QE_VENDOR_ID);
        b.extend_from_slice(&[0; 20]);
        if self.version == 5 {
            b.extend_from_slice(&self.body_type.to_le_bytes());
            b.extend_from_slice(&self.body_size.to_le_bytes());
        }
        b.extend((0..self.body_len).map(|i| i as u8));
        let mut sd = vec![0x11; 64];
        sd.extend_from_slice(&[0x22; 64]);
        let qe = self.qe_part();
        if self.version == 3 {
            sd.extend_from_slice(&qe);
        } else {
            sd.extend_from_slice(&self.outer_type.to_le_bytes());
            sd.extend_from_slice(&(qe.len() as u32).to_le_bytes());
            sd.extend_from_slice(&qe);
        }
        b.extend_from_slice(&(sd.len() as u32).to_le_bytes());
        b.extend_from_slice(&sd);
        b
    }
}

#[test]
fn synthetic_quotes_of_every_kind_parse() {
    let q = Quote::parse(&Build::tdx(4).bytes()).unwrap();
    assert_eq!(q.version(), 4);
    assert_eq!(q.tee_type(), TeeType::Tdx);
    assert!(matches!(
        q.td_report(),
        Some(TdReport::Td10(b)) if b.tee_tcb_svn[1] == 1 && b.report_data[0] == 8
    ));
    assert_eq!(q.signed_bytes().len(), HEADER_SIZE + TD10_BODY_SIZE);
    assert_eq!(q.certification_data_type(), CERT_DATA_QE_REPORT);
    assert_eq!(q.qe_auth_data(), &[0xAA; 32]);
    assert_eq!(q.pck_cert_chain_pem(), b"-----BEGIN CERTIFICATE-----\n");
    assert_eq!(q.qe_report_bytes(), &[0x51; ENCLAVE_REPORT_SIZE]);
    assert_eq!(q.qe_report().as_bytes(), [0x51; ENCLAVE_REPORT_SIZE]);
    assert_eq!(q.qe_report_signature(), &[0x52; 64]);
    assert_eq!(q.signature(), &[0x11; 64]);
    assert_eq!(q.attestation_key(), &[0x22; 64]);

    let q = Quote::parse(&Build::tdx(5).bytes()).unwrap();
    assert_eq!(
        q.body_descriptor(),
        Some(BodyDescriptor {
            body_type: 3,
            body_size: 648
        })
    );
    let td = q.td_report().unwrap();
    assert_eq!(td.tee_tcb_svn_2().unwrap().0[0], 584u32 as u8);
    assert_eq!(td.mrservicetd().unwrap()[0], 600u32 as u8);
    assert_eq!(q.signed_bytes().len(), HEADER_SIZE + 6 + TD15_BODY_SIZE);

    let v5_td10 = Build {
        body_type: BODY_TYPE_TD10,
        body_size: TD10_BODY_SIZE as u32,
        body_len: TD10_BODY_SIZE,
        ..Build::tdx(5)
    };
    let q = Quote::parse(&v5_td10.bytes()).unwrap();
    assert!(matches!(q.td_report(), Some(TdReport::Td10(_))));
    assert_eq!(q.td_report().unwrap().mrservicetd(), None);

    let v5_sgx = Build {
        tee_type: TEE_TYPE_SGX,
        body_type: BODY_TYPE_SGX,
        body_size: ENCLAVE_REPORT_SIZE as u32,
        body_len: ENCLAVE_REPORT_SIZE,
        ..Build::tdx(5)
    };
    let q = Quote::parse(&v5_sgx.bytes()).unwrap();
    assert_eq!(q.tee_type(), TeeType::Sgx);

    let q = Quote::parse(&Build::sgx_v3().bytes()).unwrap();
    assert_eq!(q.tee_type(), TeeType::Sgx);
    assert_eq!(q.certification_data_type(), CERT_DATA_PCK_CERT_CHAIN);
    assert_eq!(q.enclave_report().unwrap().mrenclave()[0], 64);
    assert_eq!(q.qe_auth_data(), &[0xAA; 32]);

    let empty_auth = Build {
        auth: Vec::new(),
        ..Build::tdx(4)
    };
    let q = Quote::parse(&empty_auth.bytes()).unwrap();
    assert!(q.qe_auth_data().is_empty());
}

#[test]
fn field_ranges_tile_every_kind_of_quote() {
    for b in [
        Build::tdx(4),
        Build::tdx(5),
        Build::sgx_v3(),
        Build {
            auth: Vec::new(),
            chain: Vec::new(),
            ..Build::tdx(4)
        },
    ] {
        let bytes = b.bytes();
        let q = Quote::parse(&bytes).unwrap();
        let mut next = 0;
        for f in q.field_ranges() {
            assert_eq!(f.offset, next, "{f} does not follow its predecessor");
            next = f.offset + f.len;
        }
        assert_eq!(next, bytes.len());
    }
    type Table = [(&'static str, usize, usize)];
    let tables: [(&Table, usize); 4] = [
        (HEADER_FIELDS, HEADER_SIZE),
        (BODY_DESCRIPTOR_FIELDS, BODY_DESCRIPTOR_SIZE),
        (TD10_BODY_FIELDS, TD10_BODY_SIZE),
        (ENCLAVE_REPORT_FIELDS, ENCLAVE_REPORT_SIZE),
    ];
    for (table, size) in tables {
        let mut next = 0;
        for (name, off, len) in table {
            assert_eq!(*off, next, "{name}");
            next = off + len;
        }
        assert_eq!(next, size);
    }
}

#[test]
fn header_values_are_checked() {
    let mut b = Build::tdx(4);
    b.version = 6;
    assert_eq!(
        Quote::parse(&b.bytes()),
        Err(ParseError::UnsupportedVersion(6))
    );
    let mut b = Build::tdx(4);
    b.key_type = 3;
    assert_eq!(
        Quote::parse(&b.bytes()),
        Err(ParseError::UnsupportedAttestationKeyType(3))
    );
    let mut b = Build::tdx(4);
    b.tee_type = 0x80;
    assert_eq!(
        Quote::parse(&b.bytes()),
        Err(ParseError::UnsupportedTeeType {
            version: 4,
            tee_type: 0x80
        })
    );
    let mut b = Build::sgx_v3();
    b.tee_type = TEE_TYPE_TDX;
    assert_eq!(
        Quote::parse(&b.bytes()),
        Err(ParseError::UnsupportedTeeType {
            version: 3,
            tee_type: 0x81
        })
    );
}

#[test]
fn v5_descriptor_must_match_the_body() {
    let mut b = Build::tdx(5);
    b.body_type = 4;
    assert_eq!(
        Quote::parse(&b.bytes()),
        Err(ParseError::UnsupportedBodyType(4))
    );
    let mut b = Build::tdx(5);
    b.body_type = BODY_TYPE_SGX;
    assert_eq!(
        Quote::parse(&b.bytes()),
        Err(ParseError::BodyTypeMismatch {
            tee_type: 0x81,
            body_type: 1
        })
    );
    let mut b = Build::tdx(5);
    b.body_size = TD10_BODY_SIZE as u32;
    assert_eq!(
        Quote::parse(&b.bytes()),
        Err(ParseError::BodySizeMismatch {
            body_type: 3,
            expected: TD15_BODY_SIZE,
            declared: TD10_BODY_SIZE as u32
        })
    );
    let mut b = Build::tdx(5);
    b.body_size = u32::MAX;
    assert!(matches!(
        Quote::parse(&b.bytes()),
        Err(ParseError::BodySizeMismatch { .. })
    ));
}

#[test]
fn certification_data_types_are_checked() {
    let mut b = Build::tdx(4);
    b.outer_type = 5;
    assert_eq!(
        Quote::parse(&b.bytes()),
        Err(ParseError::UnexpectedCertificationDataType {
            what: "signature data",
            expected: 6,
            found: 5
        })
    );
    let mut b = Build::tdx(4);
    b.inner_type = 4;
    assert_eq!(
        Quote::parse(&b.bytes()),
        Err(ParseError::UnexpectedCertificationDataType {
            what: "QE report certification data",
            expected: 5,
            found: 4
        })
    );
    let mut b = Build::sgx_v3();
    b.inner_type = 1;
    assert!(matches!(
        Quote::parse(&b.bytes()),
        Err(ParseError::UnexpectedCertificationDataType { found: 1, .. })
    ));
}

/// Offset of the signature data length field in a built TD 1.0 quote.
const SIG_LEN_AT: usize = HEADER_SIZE + TD10_BODY_SIZE;

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn lengths_must_fit_exactly() {
    let good = Build::tdx(4).bytes();
    let sig_len = u32::from_le_bytes(good[SIG_LEN_AT..SIG_LEN_AT + 4].try_into().unwrap());

    // Signature data longer than the input, or absurdly long.
    for declared in [sig_len + 1, u32::MAX] {
        let mut b = good.clone();
        put_u32(&mut b, SIG_LEN_AT, declared);
        assert!(matches!(
            Quote::parse(&b),
            Err(ParseError::LengthOutOfBounds {
                what: "signature data",
                ..
            })
        ));
    }
    // Signature data shorter than its contents.
    let mut b = good.clone();
    put_u32(&mut b, SIG_LEN_AT, sig_len - 1);
    assert!(matches!(
        Quote::parse(&b),
        Err(ParseError::LengthOutOfBounds { .. })
    ));
    // Signature data with a spare byte inside: unused.
    let mut b = good.clone();
    put_u32(&mut b, SIG_LEN_AT, sig_len + 1);
    b.push(0);
    assert!(matches!(
        Quote::parse(&b),
        Err(ParseError::UnusedBytes {
            what: "signature data",
            count: 1,
            ..
        })
    ));
    // Outer certification data with a spare byte inside.
    let cd_size_at = SIG_LEN_AT + 4 + 128 + 2;
    let mut b = good.clone();
    let cd = u32::from_le_bytes(b[cd_size_at..cd_size_at + 4].try_into().unwrap());
    put_u32(&mut b, cd_size_at, cd + 1);
    put_u32(&mut b, SIG_LEN_AT, sig_len + 1);
    b.push(0);
    assert!(matches!(
        Quote::parse(&b),
        Err(ParseError::UnusedBytes {
            what: "QE report certification data",
            count: 1,
            ..
        })
    ));
    // Outer certification data longer than the signature data.
    let mut b = good.clone();
    put_u32(&mut b, cd_size_at, u32::MAX);
    assert!(matches!(
        Quote::parse(&b),
        Err(ParseError::LengthOutOfBounds {
            what: "QE report certification data",
            declared: 0xFFFF_FFFF,
            ..
        })
    ));
}

#[test]
fn trailing_bytes_are_refused_or_handed_back() {
    let mut b = Build::tdx(4).bytes();
    let len = b.len();
    b.extend_from_slice(&[0, 0, 7]);
    assert_eq!(
        Quote::parse(&b),
        Err(ParseError::TrailingBytes {
            quote_len: len,
            trailing: 3
        })
    );
    let (q, rest) = Quote::parse_prefix(&b).unwrap();
    assert_eq!(rest, &[0, 0, 7]);
    assert_eq!(q.as_bytes().len(), len);
}

#[test]
fn every_truncation_is_an_error() {
    for build in [Build::tdx(4), Build::tdx(5), Build::sgx_v3()] {
        let b = build.bytes();
        for n in 0..b.len() {
            assert!(Quote::parse(&b[..n]).is_err(), "length {n}");
            assert!(Quote::parse_prefix(&b[..n]).is_err(), "length {n}");
        }
    }
    assert_eq!(
        Quote::parse(&[4, 0]),
        Err(ParseError::Truncated {
            what: "quote header",
            offset: 0,
            needed: 48,
            available: 2
        })
    );
    let b = Build::tdx(4).bytes();
    assert_eq!(
        Quote::parse(&b[..100]),
        Err(ParseError::Truncated {
            what: "TD 1.0 quote body",
            offset: 48,
            needed: TD10_BODY_SIZE,
            available: 52
        })
    );
}

#[test]
fn td_attributes_decode() {
    // As in real quotes: SEPT_VE_DISABLE only.
    let a = TdAttributes::from_bytes([0, 0, 0, 0x10, 0, 0, 0, 0]);
    assert!(a.sept_ve_disable() && !a.debug() && !a.pks() && !a.kl() && !a.perfmon());
    assert_eq!(a.unknown_bits(), 0);
    let a = TdAttributes::from_bytes([1, 0, 0, 0xC0, 0, 0, 0, 0x80]);
    assert!(a.debug() && a.pks() && a.kl() && a.perfmon() && !a.sept_ve_disable());
    assert_eq!(a.tud(), 1);
    let a = TdAttributes(1 << 40 | 1 << 29 | 1 << 3);
    assert!(a.migratable() && !a.debug());
    assert_eq!(a.tud(), 8);
    assert_eq!(a.unknown_bits(), 1 << 40);
    let svn = TeeTcbSvn([6, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(svn.tdx_module_minor_svn(), 6);
    assert_eq!(svn.tdx_module_major_svn(), 1);
}
