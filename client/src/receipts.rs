//! Checking usage receipts on the client's side: the enclave's signature
//! under the attested receipt key, and that the receipt bills this request,
//! this account and this model for no more than was allowed.
//!
//! Owns [`ReceiptProblem`] and the checks, sans IO. The signature format is
//! `cocoon_protocol::receipt`'s; where the key comes from (verified claims,
//! or a ledger entry) is the caller's business.

use cocoon_protocol::account::AccountId;
use cocoon_protocol::receipt::{
    verify_receipt, BillingExpectation, ReceiptError, ReceiptMismatch, UnitPrice, UsageReceipt,
};
use cocoon_protocol::RequestId;

/// Why a receipt is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptProblem {
    /// The signature does not verify under the key from the verified
    /// evidence (forged, or edited after signing, e.g. inflated).
    #[error("receipt signature does not verify with the attested key (forged or altered receipt)")]
    BadSignature,
    /// The receipt is not a well-formed signed receipt.
    #[error("receipt is malformed: {0}")]
    Malformed(ReceiptError),
    /// It names another request.
    #[error("receipt names request {got}, but this request is {expected}")]
    WrongRequest {
        /// This request.
        expected: RequestId,
        /// The receipt's.
        got: RequestId,
    },
    /// It bills another account.
    #[error("receipt bills account {got}, not this client's account {expected}")]
    WrongAccount {
        /// This client's account.
        expected: AccountId,
        /// The receipt's.
        got: AccountId,
    },
    /// It names another model.
    #[error("receipt names model {got:?}, but {expected:?} was requested")]
    WrongModel {
        /// Requested.
        expected: String,
        /// The receipt's.
        got: String,
    },
    /// It charges other prices than the request accepted.
    #[error("receipt charges other prices than the request accepted: {0}")]
    WrongPrice(String),
    /// It bills more completion tokens than the request allowed.
    #[error("receipt bills {got} completion tokens, more than the {max} the request allowed")]
    TooManyTokens {
        /// The request's `max_tokens`.
        max: u32,
        /// The receipt's completion tokens.
        got: u64,
    },
    /// Its totals do not add up.
    #[error("receipt total_tokens {total} is not prompt_tokens {prompt} + completion_tokens {completion}")]
    BadTotal {
        /// Prompt tokens.
        prompt: u64,
        /// Completion tokens.
        completion: u64,
        /// The claimed total.
        total: u64,
    },
}

impl From<ReceiptError> for ReceiptProblem {
    fn from(e: ReceiptError) -> ReceiptProblem {
        match e {
            ReceiptError::BadSignature => ReceiptProblem::BadSignature,
            other => ReceiptProblem::Malformed(other),
        }
    }
}

/// What the receipt of one request must say.
#[derive(Debug, Clone)]
pub(crate) struct ReceiptExpectation {
    pub request_id: RequestId,
    pub account: AccountId,
    pub model: String,
    pub max_tokens: u32,
    /// The prices the request accepted.
    pub unit_price: UnitPrice,
    /// The multiplier the request accepted.
    pub multiplier_milli: u32,
    /// From the verified claims of the enclave the request was sealed to.
    pub receipt_public_key: Vec<u8>,
}

/// Verify the signature under `receipt_public_key` and check the totals and
/// the account. Used for ledger entries, where the request is not known.
pub(crate) fn check_signed_by(
    bytes: &[u8],
    receipt_public_key: &[u8],
    account: &AccountId,
) -> Result<UsageReceipt, ReceiptProblem> {
    let r = verify_receipt(bytes, receipt_public_key)?;
    if r.prompt_tokens.checked_add(r.completion_tokens) != Some(r.total_tokens) {
        return Err(ReceiptProblem::BadTotal {
            prompt: r.prompt_tokens,
            completion: r.completion_tokens,
            total: r.total_tokens,
        });
    }
    if r.client_account != account.0 {
        return Err(ReceiptProblem::WrongAccount {
            expected: *account,
            got: AccountId(r.client_account),
        });
    }
    Ok(r)
}

/// The full check of a request's own receipt.
pub(crate) fn check_receipt(
    bytes: &[u8],
    expect: &ReceiptExpectation,
) -> Result<UsageReceipt, ReceiptProblem> {
    let r = check_signed_by(bytes, &expect.receipt_public_key, &expect.account)?;
    let billing = BillingExpectation {
        request_id: expect.request_id,
        account: expect.account.0,
        model: expect.model.clone(),
        max_tokens: expect.max_tokens,
        unit_price: expect.unit_price,
        multiplier_milli: expect.multiplier_milli,
    };
    r.matches(&billing).map_err(|m| match m.clone() {
        ReceiptMismatch::WrongRequest { expected, got } => {
            ReceiptProblem::WrongRequest { expected, got }
        }
        ReceiptMismatch::WrongAccount { expected, got } => ReceiptProblem::WrongAccount {
            expected: AccountId(expected),
            got: AccountId(got),
        },
        ReceiptMismatch::WrongModel { expected, got } => {
            ReceiptProblem::WrongModel { expected, got }
        }
        ReceiptMismatch::TooManyTokens { max, got } => ReceiptProblem::TooManyTokens { max, got },
        ReceiptMismatch::WrongPrice { .. } => ReceiptProblem::WrongPrice(m.to_string()),
        other => ReceiptProblem::Malformed(ReceiptError::Inconsistent(other.to_string())),
    })?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_protocol::rand_core::OsRng;
    use cocoon_protocol::receipt::ReceiptSigner;

    fn price() -> UnitPrice {
        UnitPrice {
            prompt: 1,
            cached: 1,
            completion: 2,
        }
    }

    fn receipt() -> UsageReceipt {
        UsageReceipt {
            request_id: RequestId([1; 32]),
            model: "m".into(),
            prompt_tokens: 3,
            cached_tokens: 0,
            completion_tokens: 5,
            total_tokens: 8,
            unit_price: price(),
            multiplier_milli: 1000,
            time: 10,
            enclave_seq: 1,
            client_account: [7; 32],
        }
    }

    #[test]
    fn each_expectation_is_checked() {
        let signer = ReceiptSigner::generate(&mut OsRng);
        let expect = ReceiptExpectation {
            request_id: RequestId([1; 32]),
            account: AccountId([7; 32]),
            model: "m".into(),
            max_tokens: 5,
            unit_price: price(),
            multiplier_milli: 1000,
            receipt_public_key: signer.public_key_sec1(),
        };
        let ok = signer.sign(&receipt()).unwrap();
        assert_eq!(check_receipt(&ok, &expect).unwrap(), receipt());

        let other = ReceiptSigner::generate(&mut OsRng);
        assert_eq!(
            check_receipt(&other.sign(&receipt()).unwrap(), &expect),
            Err(ReceiptProblem::BadSignature)
        );
        type Case = (UsageReceipt, fn(&ReceiptProblem) -> bool);
        let cases: Vec<Case> = vec![
            (
                UsageReceipt {
                    request_id: RequestId([2; 32]),
                    ..receipt()
                },
                |p| matches!(p, ReceiptProblem::WrongRequest { .. }),
            ),
            (
                UsageReceipt {
                    client_account: [8; 32],
                    ..receipt()
                },
                |p| matches!(p, ReceiptProblem::WrongAccount { .. }),
            ),
            (
                UsageReceipt {
                    model: "n".into(),
                    ..receipt()
                },
                |p| matches!(p, ReceiptProblem::WrongModel { .. }),
            ),
            (
                UsageReceipt {
                    completion_tokens: 6,
                    total_tokens: 9,
                    ..receipt()
                },
                |p| matches!(p, ReceiptProblem::TooManyTokens { max: 5, got: 6 }),
            ),
            (
                UsageReceipt {
                    multiplier_milli: 2000,
                    unit_price: UnitPrice {
                        prompt: 2,
                        cached: 2,
                        completion: 4,
                    },
                    ..receipt()
                },
                |p| matches!(p, ReceiptProblem::WrongPrice(_)),
            ),
        ];
        for (r, is) in cases {
            let p = check_receipt(&signer.sign(&r).unwrap(), &expect).unwrap_err();
            assert!(is(&p), "{p}");
        }
        assert!(matches!(
            check_receipt(b"not a receipt", &expect),
            Err(ReceiptProblem::Malformed(_))
        ));
    }
}
