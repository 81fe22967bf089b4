//! The replay window: request ids the enclave has served since boot.
//!
//! Owns the bounded set only. A sealed request replayed by the host would
//! make the enclave redo (and re-bill) work, so the server refuses an id it
//! has seen. The window holds at most `capacity` ids and forgets the oldest
//! first; an id older than the window is caught by the host ledger's
//! one-receipt-per-request-id rule instead.

use std::collections::{HashSet, VecDeque};

use cocoon_protocol::RequestId;

/// A bounded, insertion-ordered set of request ids.
#[derive(Debug)]
pub(crate) struct ReplayWindow {
    seen: HashSet<RequestId>,
    order: VecDeque<RequestId>,
    capacity: usize,
}

impl ReplayWindow {
    /// An empty window holding at most `capacity` ids (at least one).
    pub(crate) fn new(capacity: usize) -> ReplayWindow {
        ReplayWindow {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Record `id`; `false` if it was already in the window.
    pub(crate) fn insert(&mut self, id: RequestId) -> bool {
        if self.seen.contains(&id) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id);
        self.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> RequestId {
        RequestId([n; 32])
    }

    #[test]
    fn refuses_seen_ids_and_forgets_the_oldest() {
        let mut w = ReplayWindow::new(3);
        assert!(w.insert(id(1)));
        assert!(w.insert(id(2)));
        assert!(!w.insert(id(1)));
        assert!(w.insert(id(3)));
        assert!(w.insert(id(4)), "evicts 1");
        assert!(!w.insert(id(2)));
        assert!(!w.insert(id(4)));
        assert!(w.insert(id(1)), "1 was forgotten");
        assert_eq!(w.order.len(), 3);
        assert_eq!(w.seen.len(), 3);
    }
}
