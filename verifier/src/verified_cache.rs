//! The cache behind the warm verifiers ([`crate::TdxVerifier`],
//! [`crate::nvidia::GpuVerifier`]): verified results keyed by the SHA-256
//! of the exact bytes they were verified from, at most `CAP` of them
//! (emptied when full, so a flood of new inputs cannot grow it). It holds
//! only what verified; dates are the caller's to re-check at every hit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Verified values keyed by the SHA-256 of their input bytes, at most `CAP`.
pub(crate) struct VerifiedCache<V, const CAP: usize> {
    map: Mutex<HashMap<[u8; 32], Arc<V>>>,
}

impl<V, const CAP: usize> Default for VerifiedCache<V, CAP> {
    fn default() -> Self {
        VerifiedCache {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<V, const CAP: usize> VerifiedCache<V, CAP> {
    /// Keep `value`, verified from the bytes whose SHA-256 is `key`.
    pub(crate) fn remember(&self, key: [u8; 32], value: &Arc<V>) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= CAP {
                map.clear();
            }
            map.insert(key, Arc::clone(value));
        }
    }

    /// What was verified from the bytes whose SHA-256 is `key`, if kept.
    pub(crate) fn recall(&self, key: &[u8; 32]) -> Option<Arc<V>> {
        self.map.lock().ok()?.get(key).cloned()
    }

    /// Entries held now.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_at_most_cap_entries() {
        let c: VerifiedCache<u8, 2> = VerifiedCache::default();
        c.remember([1; 32], &Arc::new(1));
        c.remember([2; 32], &Arc::new(2));
        assert_eq!((c.len(), c.recall(&[2; 32]).as_deref()), (2, Some(&2)));
        c.remember([3; 32], &Arc::new(3));
        assert_eq!(c.len(), 1);
        assert_eq!(c.recall(&[1; 32]), None);
        assert_eq!(c.recall(&[3; 32]).as_deref(), Some(&3));
    }
}
