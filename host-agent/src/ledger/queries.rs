//! The ledger's reads, on a small pool of read-only connections (WAL
//! readers never block the writer): an account's receipts, the operator
//! export, the spend per key and account, settlement's view and the
//! consistency check.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use cocoon_protocol::api::ReceiptEntry;
use cocoon_protocol::receipt::UnitPrice;
use cocoon_protocol::RequestId;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::schema::{blob32, u64_of};
use super::{
    ChainClaimRow, Ledger, LedgerCheck, LedgerEntry, LedgerError, SentClaim, SettlementRow,
    StoredAuthorization, StoredEntry, StoredTab,
};

/// Readers kept open for re-use.
const READER_POOL: usize = 4;

/// Run `f` on a pooled read-only connection to `path` (a new one when the
/// pool is empty), on the caller's thread.
fn with_reader<T>(
    path: &Path,
    pool: &Mutex<Vec<Connection>>,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, LedgerError> {
    let err = |e: rusqlite::Error| LedgerError::Sqlite {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let pooled = pool.lock().ok().and_then(|mut p| p.pop());
    let conn = match pooled {
        Some(c) => c,
        None => {
            let c = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(err)?;
            c.busy_timeout(Duration::from_secs(5)).map_err(err)?;
            c
        }
    };
    let out = f(&conn).map_err(err);
    if let Ok(mut p) = pool.lock() {
        if p.len() < READER_POOL {
            p.push(conn);
        }
    }
    out
}

fn contains(c: &Connection, request_id: RequestId) -> rusqlite::Result<bool> {
    c.prepare_cached("SELECT 1 FROM receipts WHERE request_id = ?1")?
        .query_row([&request_id.0[..]], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

impl Ledger {
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let path = self.path.clone();
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || with_reader(&path, &pool, f))
            .await
            .map_err(|_| LedgerError::Closed)?
    }

    /// Whether a receipt for `request_id` is in the ledger, read on the
    /// caller's thread: one look-up in the request id's unique index (a few
    /// pages, from SQLite's and the OS's caches in practice; WAL readers do
    /// not wait for the writer), cheaper than the trip to the blocking pool
    /// and back that [`Ledger::contains`] takes. The replay check of every
    /// request uses it.
    pub fn contains_now(&self, request_id: RequestId) -> Result<bool, LedgerError> {
        with_reader(&self.path, &self.readers, |c| contains(c, request_id))
    }

    /// Whether a receipt for `request_id` is in the ledger.
    pub async fn contains(&self, request_id: RequestId) -> Result<bool, LedgerError> {
        self.read(move |c| contains(c, request_id)).await
    }

    /// An account's receipts with `ledger_seq > after`, oldest first, at
    /// most `limit`.
    pub async fn receipts_for(
        &self,
        account: [u8; 32],
        after: u64,
        limit: usize,
    ) -> Result<Vec<ReceiptEntry>, LedgerError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT ledger_seq, receipt, receipt_public_key FROM receipts \
                 WHERE account = ?1 AND ledger_seq > ?2 ORDER BY ledger_seq LIMIT ?3",
            )?;
            let rows = st.query_map(params![&account[..], after, limit], |r| {
                Ok(ReceiptEntry {
                    ledger_seq: u64_of(r.get(0)?),
                    receipt: r.get(1)?,
                    receipt_public_key: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Every entry with `ledger_seq > after`, oldest first, at most `limit`.
    pub async fn export(&self, after: u64, limit: usize) -> Result<Vec<StoredEntry>, LedgerError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT ledger_seq, request_id, account, model, prompt_tokens, completion_tokens, \
                 total_tokens, prompt_price, completion_price, enclave_seq, time, receipt, \
                 receipt_public_key, cached_tokens, cached_price, multiplier_milli, charge \
                 FROM receipts WHERE ledger_seq > ?1 ORDER BY ledger_seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![after, limit], |r| {
                let rid: Vec<u8> = r.get(1)?;
                let acct: Vec<u8> = r.get(2)?;
                let mut request_id = [0u8; 32];
                let mut account = [0u8; 32];
                if rid.len() == 32 {
                    request_id.copy_from_slice(&rid);
                }
                if acct.len() == 32 {
                    account.copy_from_slice(&acct);
                }
                Ok(StoredEntry {
                    ledger_seq: u64_of(r.get(0)?),
                    entry: LedgerEntry {
                        request_id: RequestId(request_id),
                        account,
                        model: r.get(3)?,
                        prompt_tokens: u64_of(r.get(4)?),
                        cached_tokens: u64_of(r.get(13)?),
                        completion_tokens: u64_of(r.get(5)?),
                        total_tokens: u64_of(r.get(6)?),
                        unit_price: UnitPrice {
                            prompt: u64_of(r.get(7)?),
                            cached: u64_of(r.get(14)?),
                            completion: u64_of(r.get(8)?),
                        },
                        multiplier_milli: u32::try_from(r.get::<_, i64>(15)?).unwrap_or(0),
                        charge: u64_of(r.get(16)?),
                        enclave_seq: u64_of(r.get(9)?),
                        time: u64_of(r.get(10)?),
                        receipt: r.get(11)?,
                        receipt_public_key: r.get(12)?,
                    },
                })
            })?;
            rows.collect()
        })
        .await
    }
    /// The committed receipts of `receipt_public_key` that its stored tabs
    /// do not count yet (all receipts of every account whose tab is behind
    /// its ledger count), to acknowledge again.
    pub async fn uncounted(
        &self,
        receipt_public_key: Vec<u8>,
    ) -> Result<Vec<(RequestId, [u8; 32])>, LedgerError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT r.request_id, r.account FROM receipts r WHERE r.receipt_public_key = ?1 \
                 AND r.account IN ( \
                   SELECT g.account FROM (SELECT account, count(*) AS n FROM receipts \
                     WHERE receipt_public_key = ?1 GROUP BY account) g \
                   LEFT JOIN tabs t ON t.receipt_public_key = ?1 AND t.account = g.account \
                   WHERE g.n > coalesce(t.count, 0)) \
                 ORDER BY r.ledger_seq",
            )?;
            let rows = st.query_map([&receipt_public_key], |r| {
                Ok((blob32(r.get(0)?), blob32(r.get(1)?)))
            })?;
            rows.map(|r| r.map(|(id, a)| (RequestId(id), a))).collect()
        })
        .await
    }

    /// Committed charges (nanoton) of one account under one receipt key.
    pub async fn spent(
        &self,
        receipt_public_key: Vec<u8>,
        account: [u8; 32],
    ) -> Result<u128, LedgerError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT charge FROM receipts WHERE receipt_public_key = ?1 AND account = ?2",
            )?;
            let rows = st.query_map(params![&receipt_public_key, &account[..]], |r| {
                r.get::<_, i64>(0)
            })?;
            let mut sum = 0u128;
            for r in rows {
                sum += u128::from(u64_of(r?));
            }
            Ok(sum)
        })
        .await
    }

    /// What `account` owes this host beyond what the chain has paid: per
    /// receipt key, its committed charges less the contract's `get_paid`
    /// as `settle --send` last recorded it (never below 0), summed. Exact
    /// (u128). What a `settle --out` run wrote but nobody confirmed paid
    /// still counts as owed: the host cannot know it landed.
    pub async fn unclaimed_for(&self, account: [u8; 32]) -> Result<u128, LedgerError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT g.s, coalesce(cc.paid, 0) FROM \
                 (SELECT receipt_public_key AS k, sum(charge) AS s FROM receipts \
                  WHERE account = ?1 GROUP BY receipt_public_key) g \
                 LEFT JOIN chain_claims cc ON cc.receipt_public_key = g.k AND cc.account = ?1",
            )?;
            let rows = st.query_map([&account[..]], |r| {
                Ok((u64_of(r.get(0)?), u64_of(r.get(1)?)))
            })?;
            let mut owed = 0u128;
            for r in rows {
                let (charged, paid) = r?;
                owed += u128::from(charged.saturating_sub(paid));
            }
            Ok(owed)
        })
        .await
    }

    /// Every (receipt key, account) the chain was asked about or sent a
    /// claim for: the paid figure last read and the last claim sent.
    pub async fn chain_claims(&self) -> Result<Vec<ChainClaimRow>, LedgerError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT receipt_public_key, account, paid, paid_checked_at, sent_total, \
                 sent_seqno, sent_hash, sent_at, sent_valid_until FROM chain_claims \
                 ORDER BY receipt_public_key, account",
            )?;
            let rows = st.query_map([], |r| {
                let key: Vec<u8> = r.get(0)?;
                let account = blob32(r.get(1)?);
                let sent = match r.get::<_, Option<i64>>(4)? {
                    None => None,
                    Some(total) => Some(SentClaim {
                        receipt_public_key: key.clone(),
                        account,
                        total: u64_of(total),
                        seqno: u32::try_from(r.get::<_, Option<i64>>(5)?.unwrap_or(0))
                            .unwrap_or(u32::MAX),
                        message_hash: blob32(r.get::<_, Option<Vec<u8>>>(6)?.unwrap_or_default()),
                        sent_at: u64_of(r.get::<_, Option<i64>>(7)?.unwrap_or(0)),
                        valid_until: u64_of(r.get::<_, Option<i64>>(8)?.unwrap_or(0)),
                    }),
                };
                Ok(ChainClaimRow {
                    receipt_public_key: key,
                    account,
                    paid: u64_of(r.get(2)?),
                    paid_checked_at: u64_of(r.get(3)?),
                    sent,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Per (receipt key, account): what the ledger holds, the newest tab,
    /// the highest authorization and what was claimed; the input of
    /// settlement. Sums are exact (u128).
    pub async fn settlement_view(&self) -> Result<Vec<SettlementRow>, LedgerError> {
        // One pass: SQLite sums per pair (exactly: integer `sum` fails
        // loudly on overflow instead of rounding) and joins the newest tab,
        // the highest authorization and what was claimed.
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT g.k, g.a, g.n, g.s, t.count, t.total, t.signed_tab, \
                 au.cap, au.signed, au.client_public_key, cl.count, cl.total \
                 FROM (SELECT receipt_public_key AS k, account AS a, count(*) AS n, sum(charge) AS s \
                       FROM receipts GROUP BY receipt_public_key, account) g \
                 LEFT JOIN tabs t ON t.receipt_public_key = g.k AND t.account = g.a \
                 LEFT JOIN authorizations au ON au.receipt_public_key = g.k AND au.account = g.a \
                 LEFT JOIN claims cl ON cl.receipt_public_key = g.k AND cl.account = g.a \
                 ORDER BY g.k, g.a",
            )?;
            let rows = st.query_map([], |r| {
                let account = blob32(r.get(1)?);
                let tab = match r.get::<_, Option<i64>>(4)? {
                    None => None,
                    Some(count) => Some(StoredTab {
                        account,
                        count: u64_of(count),
                        total: u64_of(r.get(5)?),
                        signed: r.get(6)?,
                    }),
                };
                let authorization = match r.get::<_, Option<i64>>(7)? {
                    None => None,
                    Some(cap) => Some(StoredAuthorization {
                        account,
                        cap: u64_of(cap),
                        signed: r.get(8)?,
                        client_public_key: r.get(9)?,
                    }),
                };
                Ok(SettlementRow {
                    receipt_public_key: r.get(0)?,
                    account,
                    receipts: u64_of(r.get(2)?),
                    charged: u128::from(u64_of(r.get(3)?)),
                    tab,
                    authorization,
                    claimed_count: u64_of(r.get::<_, Option<i64>>(10)?.unwrap_or(0)),
                    claimed_total: u64_of(r.get::<_, Option<i64>>(11)?.unwrap_or(0)),
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Counts and the duplicate check.
    pub async fn check(&self) -> Result<LedgerCheck, LedgerError> {
        self.read(|c| {
            let count = |sql: &str| -> rusqlite::Result<u64> {
                c.query_row(sql, [], |r| r.get::<_, i64>(0)).map(u64_of)
            };
            Ok(LedgerCheck {
                entries: count("SELECT count(*) FROM receipts")?,
                distinct_requests: count("SELECT count(DISTINCT request_id) FROM receipts")?,
                accounts: count("SELECT count(DISTINCT account) FROM receipts")?,
                max_ledger_seq: count("SELECT coalesce(max(ledger_seq), 0) FROM receipts")?,
                duplicate_requests: count(
                    "SELECT count(*) FROM (SELECT request_id FROM receipts \
                     GROUP BY request_id HAVING count(*) > 1)",
                )?,
                duplicate_enclave_seqs: count(
                    "SELECT count(*) FROM (SELECT 1 FROM receipts \
                     GROUP BY receipt_public_key, enclave_seq HAVING count(*) > 1)",
                )?,
                quick_check: c.query_row("PRAGMA quick_check", [], |r| r.get(0))?,
            })
        })
        .await
    }
}
