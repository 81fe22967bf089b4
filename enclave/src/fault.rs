//! **TEST ONLY** fault injection: a backend wrapper that makes chat fail
//! after a number of delivered tokens, so end-to-end tests can check what a
//! provider failure mid-answer costs (nothing) and how clients see it.
//!
//! Owns [`FailAfterTokens`] and the variable that turns it on,
//! [`TEST_ONLY_FAIL_AFTER_TOKENS`]. The enclave's `main` installs it only
//! under the simulated TEE (which is NOT CONFIDENTIAL anyway) and refuses to
//! boot a hardware TEE with the variable set; it logs loudly when active.
//! It must never touch sealing, receipts or anything but the backend calls.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cocoon_attestation::bundle::ModelDigest;
use cocoon_protocol::message::ChatMessage;
use cocoon_protocol::sampling::Sampling;

use crate::backend::{BackendError, ChatOutcome, Generated, InferenceBackend};

/// `N` or `N:M`: fail every chat after `N` delivered tokens (`N:M`: only
/// the first `M` chat requests of the boot). Honoured only with
/// `--tee simulated`.
pub const TEST_ONLY_FAIL_AFTER_TOKENS: &str = "COCOON_ENCLAVE_TEST_ONLY_FAIL_AFTER_TOKENS";

/// What [`TEST_ONLY_FAIL_AFTER_TOKENS`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// Tokens delivered before the failure.
    pub after_tokens: u64,
    /// How many chat requests fail (`None`: all).
    pub requests: Option<u64>,
}

impl FaultPlan {
    /// Parse `N` or `N:M`.
    pub fn parse(text: &str) -> Result<FaultPlan, String> {
        let bad = || format!("{TEST_ONLY_FAIL_AFTER_TOKENS}={text:?}: expected N or N:M (numbers)");
        let (n, m) = match text.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (text, None),
        };
        let after_tokens = n.trim().parse().map_err(|_| bad())?;
        let requests = match m {
            Some(m) => Some(m.trim().parse().map_err(|_| bad())?),
            None => None,
        };
        Ok(FaultPlan {
            after_tokens,
            requests,
        })
    }
}

/// A backend whose chat fails after [`FaultPlan::after_tokens`] delivered
/// tokens. **TEST ONLY.**
pub struct FailAfterTokens {
    inner: Arc<dyn InferenceBackend>,
    plan: FaultPlan,
    chats: AtomicU64,
}

impl FailAfterTokens {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn InferenceBackend>, plan: FaultPlan) -> FailAfterTokens {
        FailAfterTokens {
            inner,
            plan,
            chats: AtomicU64::new(0),
        }
    }
}

impl InferenceBackend for FailAfterTokens {
    fn models(&self) -> Vec<ModelDigest> {
        self.inner.models()
    }

    fn count_tokens(&self, model: &str, text: &str) -> Result<u64, BackendError> {
        self.inner.count_tokens(model, text)
    }

    fn chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
        sampling: &Sampling,
        emit: &mut dyn FnMut(Generated<'_>) -> ControlFlow<()>,
    ) -> Result<ChatOutcome, BackendError> {
        let n = self.chats.fetch_add(1, Ordering::SeqCst);
        if self.plan.requests.is_some_and(|m| n >= m) {
            return self.inner.chat(model, messages, max_tokens, sampling, emit);
        }
        let mut sent = 0u64;
        let mut tripped = false;
        let limit = self.plan.after_tokens;
        let mut counting = |piece: Generated<'_>| {
            if sent >= limit {
                tripped = true;
                return ControlFlow::Break(());
            }
            let flow = emit(piece);
            if flow.is_continue() {
                sent += 1;
            }
            flow
        };
        let outcome = self
            .inner
            .chat(model, messages, max_tokens, sampling, &mut counting)?;
        if tripped || sent >= limit {
            return Err(BackendError::Failed(format!(
                "TEST-ONLY fault injected after {sent} tokens ({TEST_ONLY_FAIL_AFTER_TOKENS})"
            )));
        }
        Ok(outcome)
    }

    fn embed(&self, model: &str, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), BackendError> {
        self.inner.embed(model, inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DeterministicTestBackend;

    #[test]
    fn plans_parse_and_the_first_m_chats_fail_after_n_tokens() {
        assert_eq!(
            FaultPlan::parse("3").unwrap(),
            FaultPlan {
                after_tokens: 3,
                requests: None
            }
        );
        assert_eq!(FaultPlan::parse("3:1").unwrap().requests, Some(1));
        for bad in ["", "x", "3:", "-1", "3:y"] {
            assert!(FaultPlan::parse(bad).is_err(), "{bad:?}");
        }
        let b = FailAfterTokens::new(
            Arc::new(DeterministicTestBackend::new(20)),
            FaultPlan::parse("3:1").unwrap(),
        );
        let msgs = [ChatMessage {
            role: cocoon_protocol::message::Role::User,
            content: "hi".into(),
        }];
        let greedy = Sampling::default();
        let mut got = 0;
        let r = b.chat(
            DeterministicTestBackend::MODEL,
            &msgs,
            10,
            &greedy,
            &mut |_| {
                got += 1;
                ControlFlow::Continue(())
            },
        );
        assert!(matches!(r, Err(BackendError::Failed(_))), "{r:?}");
        assert_eq!(got, 3);
        let r = b.chat(
            DeterministicTestBackend::MODEL,
            &msgs,
            10,
            &greedy,
            &mut |_| ControlFlow::Continue(()),
        );
        assert_eq!(r.unwrap().completion_tokens, 10);
    }
}
