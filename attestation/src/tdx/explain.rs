//! Where each named field of a parsed quote lies, for mutation tests and
//! person-readable explanations. Built from the layout tables, so it cannot
//! drift from the parser.

use core::fmt;
use core::ops::Range;

use super::layout::*;
use super::parse::Quote;
use super::report::{QuoteBody, TdReport};

/// One named field of a parsed quote: where it is in the quote's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuoteField {
    /// The structure it belongs to: `header`, `body_descriptor`, `body`,
    /// `signature_data`, `certification_data`, `qe_report`,
    /// `qe_report_certification_data` or `pck_certification_data`.
    pub section: &'static str,
    /// The field's name (for `body` and `qe_report`, as in the layout
    /// tables [`TD10_BODY_FIELDS`], [`ENCLAVE_REPORT_FIELDS`], ...).
    pub name: &'static str,
    /// Offset of its first byte within the quote.
    pub offset: usize,
    /// Its length in bytes (zero for empty QE authentication data).
    pub len: usize,
}

impl QuoteField {
    /// The field's byte range within the quote.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

impl fmt::Display for QuoteField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} (offset {})", self.section, self.name, self.offset)
    }
}

impl Quote {
    /// Every named field with its position in [`Quote::as_bytes`], in order;
    /// together they tile the quote. For mutation tests and explanations.
    pub fn field_ranges(&self) -> Vec<QuoteField> {
        let mut out = Vec::new();
        let mut push_table = |section, base: usize, table: &[(&'static str, usize, usize)]| {
            for &(name, offset, len) in table {
                out.push(QuoteField {
                    section,
                    name,
                    offset: base + offset,
                    len,
                });
            }
        };
        push_table("header", 0, HEADER_FIELDS);
        let mut at = HEADER_SIZE;
        if self.body_descriptor.is_some() {
            push_table("body_descriptor", at, BODY_DESCRIPTOR_FIELDS);
            at += BODY_DESCRIPTOR_SIZE;
        }
        match &self.body {
            QuoteBody::Sgx(_) => push_table("body", at, ENCLAVE_REPORT_FIELDS),
            QuoteBody::Td(TdReport::Td10(_)) => push_table("body", at, TD10_BODY_FIELDS),
            QuoteBody::Td(TdReport::Td15(_)) => {
                push_table("body", at, TD10_BODY_FIELDS);
                push_table("body", at, TD15_EXTRA_FIELDS);
            }
        }
        let s = self.layout.signed_len;
        push_table(
            "signature_data",
            s,
            &[
                ("signature_data_len", 0, 4),
                ("quote_signature", 4, ECDSA_P256_SIGNATURE_SIZE),
                (
                    "attestation_key",
                    4 + ECDSA_P256_SIGNATURE_SIZE,
                    ECDSA_P256_KEY_SIZE,
                ),
            ],
        );
        if let Some(c) = self.layout.outer_cert_data {
            push_table(
                "certification_data",
                c,
                &[("cert_data_type", 0, 2), ("cert_data_size", 2, 4)],
            );
        }
        push_table("qe_report", self.layout.qe_report, ENCLAVE_REPORT_FIELDS);
        let auth = &self.layout.qe_auth_data;
        push_table(
            "qe_report_certification_data",
            self.layout.qe_report + ENCLAVE_REPORT_SIZE,
            &[
                ("qe_report_signature", 0, ECDSA_P256_SIGNATURE_SIZE),
                ("qe_auth_data_size", ECDSA_P256_SIGNATURE_SIZE, 2),
                ("qe_auth_data", ECDSA_P256_SIGNATURE_SIZE + 2, auth.len()),
            ],
        );
        push_table(
            "pck_certification_data",
            auth.end,
            &[
                ("pck_cert_data_type", 0, 2),
                ("pck_cert_data_size", 2, 4),
                ("pck_cert_chain", 6, self.layout.pck_cert_chain.len()),
            ],
        );
        out
    }
}
