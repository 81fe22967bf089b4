//! The prompt prefix cache: the key/value cache of prompts already run,
//! so that a request sharing a prefix with an earlier one (a system
//! prompt, earlier turns of the conversation) runs only the rest.
//!
//! - **Scoped per account.** An entry is only ever found by requests of
//!   the account whose prompt made it. A cache shared across accounts
//!   would let one account learn, by timing its own first token, whether
//!   another account recently sent a given prefix (and the `cached_tokens`
//!   of its receipt would say so outright). Within one account it reveals
//!   nothing the account did not send itself.
//! - **Bounded in memory.** Every entry is charged its size; inserting past
//!   the budget evicts the least recently used entries first, and an entry
//!   larger than the whole budget is not kept.
//! - **Generic over the cached value**, so the bookkeeping is tested
//!   without libtorch; the tch backend stores its key and value tensors.
//!
//! A cached prefix is any common prefix of a stored prompt and the new
//! one: a key/value cache for `n` tokens holds the one for its first `m`
//! tokens too (the backend narrows it).

/// Who may reuse an entry: the client account of the request that made it.
pub type Scope = [u8; 32];

/// Fewer shared tokens than this are not worth a lookup's bookkeeping: the
/// backend runs them again.
pub const MIN_REUSE: usize = 16;

struct Entry<V> {
    scope: Scope,
    tokens: Vec<i64>,
    value: V,
    bytes: usize,
    used_at: u64,
}

/// A bounded, per-account prefix cache of `V` (see the module
/// documentation).
pub struct PrefixCache<V> {
    budget: usize,
    used: usize,
    clock: u64,
    entries: Vec<Entry<V>>,
}

impl<V> PrefixCache<V> {
    /// An empty cache that holds at most `budget` bytes of values.
    pub fn new(budget: usize) -> PrefixCache<V> {
        PrefixCache {
            budget,
            used: 0,
            clock: 0,
            entries: Vec::new(),
        }
    }

    /// The longest prefix of `tokens`, at most `max_len` tokens long and at
    /// least [`MIN_REUSE`], that an entry of `scope` holds: its length and
    /// the entry's value (to be cut to that length by the caller).
    pub fn lookup(&mut self, scope: &Scope, tokens: &[i64], max_len: usize) -> Option<(usize, &V)> {
        let mut best: Option<(usize, usize)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if &e.scope != scope {
                continue;
            }
            let common = e
                .tokens
                .iter()
                .zip(tokens)
                .take_while(|(a, b)| a == b)
                .count()
                .min(max_len);
            if common >= MIN_REUSE && best.is_none_or(|(_, n)| common > n) {
                best = Some((i, common));
            }
        }
        let (i, n) = best?;
        self.clock += 1;
        let e = &mut self.entries[i];
        e.used_at = self.clock;
        Some((n, &e.value))
    }

    /// Keep `value`, the cache for `tokens`, for `scope`, charged `bytes`.
    /// Entries of the same scope whose tokens are a prefix of `tokens` are
    /// dropped (the new one serves them); then the least recently used
    /// entries go until it fits. Not kept when larger than the budget or
    /// shorter than [`MIN_REUSE`].
    pub fn insert(&mut self, scope: Scope, tokens: Vec<i64>, value: V, bytes: usize) {
        if bytes > self.budget || tokens.len() < MIN_REUSE {
            return;
        }
        let mut freed = 0;
        self.entries.retain(|e| {
            let covered = e.scope == scope
                && e.tokens.len() <= tokens.len()
                && tokens[..e.tokens.len()] == e.tokens[..];
            if covered {
                freed += e.bytes;
            }
            !covered
        });
        self.used -= freed;
        while self.used + bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.used_at)
                .map(|(i, _)| i)
            else {
                break;
            };
            let e = self.entries.swap_remove(oldest);
            self.used -= e.bytes;
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.push(Entry {
            scope,
            tokens,
            value,
            bytes,
            used_at: self.clock,
        });
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Scope = [1; 32];
    const B: Scope = [2; 32];

    fn toks(n: i64) -> Vec<i64> {
        (0..n).collect()
    }

    #[test]
    fn the_longest_shared_prefix_of_the_same_account_is_found() {
        let mut c = PrefixCache::new(1000);
        c.insert(A, toks(40), "forty", 10);
        let mut other = toks(30);
        other.push(999);
        c.insert(A, other, "thirty", 10);
        // A prompt sharing 40 tokens, then more.
        assert_eq!(c.lookup(&A, &toks(50), 49), Some((40, &"forty")));
        // At most max_len (one token must be left to run).
        assert_eq!(c.lookup(&A, &toks(40), 39), Some((39, &"forty")));
        // Fewer than MIN_REUSE shared: nothing.
        assert_eq!(c.lookup(&A, &[0, 1, 2, 77], 3), None);
        // Another account never sees A's entries.
        assert_eq!(c.lookup(&B, &toks(50), 49), None);
    }

    #[test]
    fn a_longer_prompt_replaces_its_prefixes_and_the_budget_evicts_the_least_recent() {
        let mut c = PrefixCache::new(30);
        c.insert(A, toks(20), 1, 10);
        c.insert(A, toks(25), 2, 10);
        assert_eq!(
            (c.len(), c.used()),
            (1, 10),
            "the 20-token entry is covered"
        );
        let mut b = toks(20);
        b[0] = 5;
        c.insert(B, b.clone(), 3, 10);
        let mut a2 = toks(20);
        a2[1] = 7;
        c.insert(A, a2, 4, 10);
        assert_eq!(c.used(), 30);
        // Touch A's first entry, then insert: B's (least recent) goes.
        assert!(c.lookup(&A, &toks(25), 24).is_some());
        let mut a3 = toks(20);
        a3[2] = 9;
        c.insert(A, a3, 5, 10);
        assert_eq!(c.used(), 30);
        assert_eq!(c.lookup(&B, &b, 19), None);
        assert!(c.lookup(&A, &toks(25), 24).is_some());
        // Larger than the whole budget: not kept, nothing evicted.
        c.insert(A, toks(100), 6, 31);
        assert_eq!((c.len(), c.used()), (3, 30));
    }
}
