//! The billing ledger: every usage receipt the host accepted, durably, once.
//!
//! Owns the SQLite file, its schema, the group-commit writer thread and the
//! read queries (an account's receipts, the operator export, the
//! consistency check). It verifies nothing: it stores a [`LedgerEntry`]
//! that the caller built from a receipt it verified against the enclave's
//! attested key (`relay` does). It must not hold or log anything but
//! receipts and their metadata.
//!
//! # Why SQLite (and not redb)
//!
//! * Operators can read the ledger with the `sqlite3` CLI and any SQL tool,
//!   while the host runs (WAL readers never block the writer), which is
//!   what settlement and audits need.
//! * WAL with `synchronous=FULL` has a long, well-tested crash-safety
//!   record: a transaction whose `COMMIT` returned survives power loss and
//!   `SIGKILL`.
//! * Durability costs one fsync per commit; group commit amortises it over
//!   every append queued meanwhile, which gives the throughput
//!   (`benches/ledger.rs` measures both modes side by side).
//!
//! # Group commit
//!
//! One thread owns the writing connection. [`Ledger::append`] queues an
//! entry with a oneshot for its answer. The thread takes the first queued
//! append, then everything else already queued (up to `max_batch`), inserts
//! them all in one transaction, commits (one fsync), and only then answers
//! each append: `Ok(ledger_seq)` or a refusal. An acknowledged append is
//! therefore on disk. A duplicate (same request id, or same receipt key and
//! enclave sequence number) is refused on its own (`INSERT OR IGNORE`,
//! then a look-up of which key collided) without failing its batch; an I/O
//! error fails the whole batch and every append in it is answered with the
//! error. Checkpoints (folding the WAL into the main file) run on a thread
//! and connection of their own (`PASSIVE`, every half second), never in a
//! commit, so a commit costs its inserts and one WAL fsync.
//!
//! # Schema
//!
//! ```sql
//! CREATE TABLE receipts (
//!   ledger_seq INTEGER PRIMARY KEY,         -- 1, 2, 3, ... (paging cursor)
//!   request_id BLOB NOT NULL UNIQUE,        -- SHA-256 of the sealed request
//!   account BLOB NOT NULL,                  -- paying account id (32 bytes)
//!   model TEXT NOT NULL,
//!   prompt_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
//!   completion_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL,
//!   prompt_price INTEGER NOT NULL,          -- nanoton per computed prompt token
//!   cached_price INTEGER NOT NULL,          -- nanoton per cached prompt token
//!   completion_price INTEGER NOT NULL,      -- nanoton per completion token
//!   multiplier_milli INTEGER NOT NULL,      -- load multiplier in the prices
//!   charge INTEGER NOT NULL,                -- nanoton the receipt charges
//!   enclave_seq INTEGER NOT NULL, time INTEGER NOT NULL,
//!   receipt BLOB NOT NULL,                  -- the COSE_Sign1 bytes
//!   receipt_public_key BLOB NOT NULL,       -- attested key that signed it
//!   UNIQUE (receipt_public_key, enclave_seq));
//! CREATE INDEX receipts_by_account ON receipts (account, ledger_seq);
//! CREATE INDEX receipts_by_key ON receipts (receipt_public_key, account);
//! -- the newest enclave-signed tab per (receipt key, account)
//! CREATE TABLE tabs (receipt_public_key BLOB, account BLOB, count INTEGER,
//!   total INTEGER, signed_tab BLOB, PRIMARY KEY (receipt_public_key, account));
//! -- the highest client authorization per (receipt key, account)
//! CREATE TABLE authorizations (receipt_public_key BLOB, account BLOB,
//!   cap INTEGER, signed BLOB, client_public_key BLOB,
//!   PRIMARY KEY (receipt_public_key, account));
//! -- what settlement has claimed so far per (receipt key, account)
//! CREATE TABLE claims (receipt_public_key BLOB, account BLOB,
//!   count INTEGER, total INTEGER, PRIMARY KEY (receipt_public_key, account));
//! ```
//!
//! The schema version is `PRAGMA user_version` = [`SCHEMA_VERSION`]; a
//! ledger written by an older host is refused with a message, not migrated
//! silently.
//!
//! Numbers are SQLite integers (signed 64-bit); a receipt whose counts or
//! prices do not fit is refused ([`AppendError::OutOfRange`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cocoon_protocol::api::ReceiptEntry;
use cocoon_protocol::receipt::{UnitPrice, UsageReceipt};
use cocoon_protocol::RequestId;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

/// Readers kept open for re-use.
const READER_POOL: usize = 4;
/// How often the WAL is checkpointed into the main file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// `PRAGMA user_version` of the ledger this host writes.
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS receipts (
  ledger_seq INTEGER PRIMARY KEY,
  request_id BLOB NOT NULL UNIQUE,
  account BLOB NOT NULL,
  model TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  cached_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  total_tokens INTEGER NOT NULL,
  prompt_price INTEGER NOT NULL,
  cached_price INTEGER NOT NULL,
  completion_price INTEGER NOT NULL,
  multiplier_milli INTEGER NOT NULL,
  charge INTEGER NOT NULL,
  enclave_seq INTEGER NOT NULL,
  time INTEGER NOT NULL,
  receipt BLOB NOT NULL,
  receipt_public_key BLOB NOT NULL,
  UNIQUE (receipt_public_key, enclave_seq)
);
CREATE INDEX IF NOT EXISTS receipts_by_account ON receipts (account, ledger_seq);
CREATE INDEX IF NOT EXISTS receipts_by_key ON receipts (receipt_public_key, account);
CREATE TABLE IF NOT EXISTS tabs (
  receipt_public_key BLOB NOT NULL,
  account BLOB NOT NULL,
  count INTEGER NOT NULL,
  total INTEGER NOT NULL,
  signed_tab BLOB NOT NULL,
  PRIMARY KEY (receipt_public_key, account)
);
CREATE TABLE IF NOT EXISTS authorizations (
  receipt_public_key BLOB NOT NULL,
  account BLOB NOT NULL,
  cap INTEGER NOT NULL,
  signed BLOB NOT NULL,
  client_public_key BLOB NOT NULL,
  PRIMARY KEY (receipt_public_key, account)
);
CREATE TABLE IF NOT EXISTS claims (
  receipt_public_key BLOB NOT NULL,
  account BLOB NOT NULL,
  count INTEGER NOT NULL,
  total INTEGER NOT NULL,
  PRIMARY KEY (receipt_public_key, account)
);
";

/// Why the ledger cannot be opened or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// SQLite failed (file, disk, corruption).
    #[error("ledger {path}: {message}")]
    Sqlite {
        /// The ledger file.
        path: String,
        /// SQLite's message.
        message: String,
    },
    /// The ledger was closed.
    #[error("ledger is closed")]
    Closed,
}

/// Why one append was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// A receipt for this request id is already in the ledger.
    #[error("a receipt for request {0} is already in the ledger")]
    DuplicateRequest(RequestId),
    /// The same receipt key already signed this enclave sequence number.
    #[error("enclave sequence number {0} of this receipt key is already in the ledger")]
    DuplicateEnclaveSeq(u64),
    /// A number does not fit in a SQLite integer.
    #[error("receipt field {0} does not fit in a signed 64-bit ledger column")]
    OutOfRange(&'static str),
    /// The batch could not be committed; nothing of it is on disk.
    #[error("ledger commit failed: {0}")]
    Io(String),
    /// The ledger was closed before the append was taken.
    #[error("ledger is closed")]
    Closed,
}

/// One accepted receipt as the ledger stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The request the receipt names.
    pub request_id: RequestId,
    /// The paying account id.
    pub account: [u8; 32],
    /// The model that served the request.
    pub model: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Of them, served from a cache.
    pub cached_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
    /// Unit prices in nanoton.
    pub unit_price: UnitPrice,
    /// The load multiplier in those prices, thousandths.
    pub multiplier_milli: u32,
    /// What the receipt charges, nanoton.
    pub charge: u64,
    /// The enclave's receipt counter.
    pub enclave_seq: u64,
    /// When the enclave finished (Unix seconds).
    pub time: u64,
    /// The signed receipt (COSE_Sign1).
    pub receipt: Vec<u8>,
    /// The attested receipt key that signed it (SEC1).
    pub receipt_public_key: Vec<u8>,
}

impl LedgerEntry {
    /// The entry for a receipt whose signature the caller verified under
    /// `receipt_public_key`.
    pub fn from_verified(
        receipt: &UsageReceipt,
        receipt_bytes: Vec<u8>,
        receipt_public_key: Vec<u8>,
    ) -> LedgerEntry {
        LedgerEntry {
            request_id: receipt.request_id,
            account: receipt.client_account,
            model: receipt.model.clone(),
            prompt_tokens: receipt.prompt_tokens,
            cached_tokens: receipt.cached_tokens,
            completion_tokens: receipt.completion_tokens,
            total_tokens: receipt.total_tokens,
            unit_price: receipt.unit_price,
            multiplier_milli: receipt.multiplier_milli,
            // A verified receipt's charge fits 64 bits (`UsageReceipt`
            // refuses one that does not).
            charge: receipt
                .charge_nanoton()
                .and_then(|c| u64::try_from(c).ok())
                .unwrap_or(u64::MAX),
            enclave_seq: receipt.enclave_seq,
            time: receipt.time,
            receipt: receipt_bytes,
            receipt_public_key,
        }
    }
}

/// One row of the operator export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The ledger's sequence number.
    pub ledger_seq: u64,
    /// The entry.
    pub entry: LedgerEntry,
}

impl StoredEntry {
    /// One NDJSON line (no newline): numbers as JSON numbers, bytes as hex.
    pub fn to_json_line(&self) -> String {
        let e = &self.entry;
        serde_json::json!({
            "ledger_seq": self.ledger_seq,
            "request_id": e.request_id.to_string(),
            "account": hex::encode(e.account),
            "model": e.model,
            "prompt_tokens": e.prompt_tokens,
            "cached_tokens": e.cached_tokens,
            "completion_tokens": e.completion_tokens,
            "total_tokens": e.total_tokens,
            "prompt_price": e.unit_price.prompt,
            "cached_price": e.unit_price.cached,
            "completion_price": e.unit_price.completion,
            "multiplier_milli": e.multiplier_milli,
            "charge": e.charge,
            "enclave_seq": e.enclave_seq,
            "time": e.time,
            "receipt": hex::encode(&e.receipt),
            "receipt_public_key": hex::encode(&e.receipt_public_key),
        })
        .to_string()
    }
}

/// An enclave-signed tab as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTab {
    /// The account.
    pub account: [u8; 32],
    /// Receipts counted.
    pub count: u64,
    /// Their charges, nanoton.
    pub total: u64,
    /// The signed tab (message ‖ signature).
    pub signed: Vec<u8>,
}

/// A client's authorization as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuthorization {
    /// The account.
    pub account: [u8; 32],
    /// Its cap, nanoton.
    pub cap: u64,
    /// The signed authorization (message ‖ signature).
    pub signed: Vec<u8>,
    /// The client's public key (SEC1), to check it again.
    pub client_public_key: Vec<u8>,
}

/// What one settlement run claimed for one (receipt key, account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The receipt key (SEC1 as attested).
    pub receipt_public_key: Vec<u8>,
    /// The account.
    pub account: [u8; 32],
    /// The claimed tab's count.
    pub count: u64,
    /// The claimed tab's total.
    pub total: u64,
}

/// One (receipt key, account) as settlement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRow {
    /// The receipt key (SEC1 as attested).
    pub receipt_public_key: Vec<u8>,
    /// The account.
    pub account: [u8; 32],
    /// Receipts in the ledger.
    pub receipts: u64,
    /// Their charges, nanoton (exact).
    pub charged: u128,
    /// The newest enclave-signed tab.
    pub tab: Option<StoredTab>,
    /// The highest client authorization.
    pub authorization: Option<StoredAuthorization>,
    /// Count of the last claimed tab.
    pub claimed_count: u64,
    /// Total of the last claimed tab.
    pub claimed_total: u64,
}

fn blob32(v: Vec<u8>) -> [u8; 32] {
    let mut out = [0u8; 32];
    if v.len() == 32 {
        out.copy_from_slice(&v);
    }
    out
}

/// The result of the consistency check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerCheck {
    /// Rows.
    pub entries: u64,
    /// Distinct request ids.
    pub distinct_requests: u64,
    /// Distinct accounts.
    pub accounts: u64,
    /// Highest ledger sequence number (0 when empty).
    pub max_ledger_seq: u64,
    /// Request ids present more than once (must be 0).
    pub duplicate_requests: u64,
    /// (receipt key, enclave seq) pairs present more than once (must be 0).
    pub duplicate_enclave_seqs: u64,
    /// SQLite's `quick_check` verdict ("ok" when sound).
    pub quick_check: String,
}

impl LedgerCheck {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.duplicate_requests == 0
            && self.duplicate_enclave_seqs == 0
            && self.entries == self.distinct_requests
            && self.quick_check == "ok"
    }

    /// The check as JSON.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "ok": self.is_ok(),
            "entries": self.entries,
            "distinct_requests": self.distinct_requests,
            "accounts": self.accounts,
            "max_ledger_seq": self.max_ledger_seq,
            "duplicate_requests": self.duplicate_requests,
            "duplicate_enclave_seqs": self.duplicate_enclave_seqs,
            "quick_check": self.quick_check,
        })
        .to_string()
    }
}

/// Writer-side counters, for metrics.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Appends committed.
    pub appended: AtomicU64,
    /// Appends refused as duplicates.
    pub duplicates: AtomicU64,
    /// Batches that failed to commit.
    pub failed_batches: AtomicU64,
}

/// Options of [`Ledger::open`].
#[derive(Debug, Clone, Copy)]
pub struct LedgerOptions {
    /// Most appends per transaction; 1 disables group commit (one fsync per
    /// append, for comparison).
    pub max_batch: usize,
}

impl Default for LedgerOptions {
    fn default() -> LedgerOptions {
        LedgerOptions { max_batch: 1024 }
    }
}

/// A write other than an append, run on the writer thread in a
/// transaction of its own.
type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

enum Op {
    Append(Box<LedgerEntry>, oneshot::Sender<Result<u64, AppendError>>),
    Run(WriteJob),
    Close,
}

/// The ledger: a writer thread for appends and a pool of read connections.
pub struct Ledger {
    path: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    stats: Arc<LedgerStats>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn i64_of(v: u64, field: &'static str) -> Result<i64, AppendError> {
    i64::try_from(v).map_err(|_| AppendError::OutOfRange(field))
}

fn u64_of(v: i64) -> u64 {
    // Every stored number went in through `i64_of`, so it is non-negative.
    u64::try_from(v).unwrap_or(0)
}

impl Ledger {
    /// Open (or create) the ledger file in WAL mode with `synchronous=FULL`
    /// and start its writer thread.
    pub fn open(path: &Path, options: LedgerOptions) -> Result<Ledger, LedgerError> {
        let err = |e: rusqlite::Error| LedgerError::Sqlite {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(LedgerError::Sqlite {
                path: path.display().to_string(),
                message: format!("could not switch to WAL mode (journal_mode is {mode})"),
            });
        }
        // Durable commits; checkpoints off the commit path (a background
        // thread runs them); a page cache that holds the hot index pages.
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=-65536;",
        )
        .map_err(err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        let has_receipts: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'receipts'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(err)?
            > 0;
        if has_receipts && version != SCHEMA_VERSION {
            return Err(LedgerError::Sqlite {
                path: path.display().to_string(),
                message: format!(
                    "ledger schema version {version}, this host writes version {SCHEMA_VERSION}; \
                     settle and archive it with the host that wrote it, then start a new ledger"
                ),
            });
        }
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
            .map_err(err)?;
        let stats = Arc::new(LedgerStats::default());
        let (tx, rx) = mpsc::channel();
        let max_batch = options.max_batch.max(1);
        let thread_stats = stats.clone();
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || write_loop(conn, rx, max_batch, &thread_stats))
            .map_err(|e| LedgerError::Sqlite {
                path: path.display().to_string(),
                message: format!("could not start the writer thread: {e}"),
            })?;
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let cp_path = path.to_path_buf();
        let checkpointer = std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || checkpoint_loop(&cp_path, &stop_rx))
            .map_err(|e| LedgerError::Sqlite {
                path: path.display().to_string(),
                message: format!("could not start the checkpoint thread: {e}"),
            })?;
        Ok(Ledger {
            path: path.to_path_buf(),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(Some((stop_tx, checkpointer))),
            readers: Arc::new(Mutex::new(Vec::new())),
            stats,
        })
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writer counters.
    pub fn stats(&self) -> &LedgerStats {
        &self.stats
    }

    /// Append one entry; resolves once its transaction is durably committed
    /// (`Ok(ledger_seq)`), or with why it was refused.
    pub async fn append(&self, entry: LedgerEntry) -> Result<u64, AppendError> {
        let (tx, rx) = oneshot::channel();
        {
            let guard = self.tx.lock().map_err(|_| AppendError::Closed)?;
            let sender = guard.as_ref().ok_or(AppendError::Closed)?;
            sender
                .send(Op::Append(Box::new(entry), tx))
                .map_err(|_| AppendError::Closed)?;
        }
        rx.await.unwrap_or(Err(AppendError::Closed))
    }

    /// Stop taking appends, let the writer commit everything queued before
    /// this call, checkpoint the WAL and join the thread.
    pub fn close(&self) {
        if let Some((stop, handle)) = self.checkpointer.lock().ok().and_then(|mut g| g.take()) {
            drop(stop);
            let _ = handle.join();
        }
        let sender = self.tx.lock().ok().and_then(|mut g| g.take());
        if let Some(s) = sender {
            let _ = s.send(Op::Close);
        }
        let handle = self.writer.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("ledger writer thread panicked");
            }
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let path = self.path.clone();
        let pool = self.readers.clone();
        let err = {
            let path = path.clone();
            move |e: rusqlite::Error| LedgerError::Sqlite {
                path: path.display().to_string(),
                message: e.to_string(),
            }
        };
        tokio::task::spawn_blocking(move || {
            let pooled = pool.lock().ok().and_then(|mut p| p.pop());
            let conn = match pooled {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(&err)?;
                    c.busy_timeout(Duration::from_secs(5)).map_err(&err)?;
                    c
                }
            };
            let out = f(&conn).map_err(&err);
            if let Ok(mut p) = pool.lock() {
                if p.len() < READER_POOL {
                    p.push(conn);
                }
            }
            out
        })
        .await
        .map_err(|_| LedgerError::Closed)?
    }

    /// Whether a receipt for `request_id` is in the ledger.
    pub async fn contains(&self, request_id: RequestId) -> Result<bool, LedgerError> {
        self.read(move |c| {
            c.prepare_cached("SELECT 1 FROM receipts WHERE request_id = ?1")?
                .query_row([&request_id.0[..]], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
        })
        .await
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

    /// Run `f` in a transaction on the writer thread (after the appends
    /// queued before it) and return its result once committed.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (tx, rx) = oneshot::channel();
        let path = self.path.display().to_string();
        let job: WriteJob = Box::new(move |conn: &mut Connection| {
            let out = (|| {
                let txn = conn.transaction()?;
                let v = f(&txn)?;
                txn.commit()?;
                Ok(v)
            })()
            .map_err(|e: rusqlite::Error| LedgerError::Sqlite {
                path,
                message: e.to_string(),
            });
            let _ = tx.send(out);
        });
        {
            let guard = self.tx.lock().map_err(|_| LedgerError::Closed)?;
            let sender = guard.as_ref().ok_or(LedgerError::Closed)?;
            sender.send(Op::Run(job)).map_err(|_| LedgerError::Closed)?;
        }
        rx.await.unwrap_or(Err(LedgerError::Closed))
    }

    /// Store enclave-signed tabs of one receipt key (already verified by
    /// the caller), keeping per account the one with the highest count.
    /// Returns how many rows moved forward.
    pub async fn store_tabs(
        &self,
        receipt_public_key: Vec<u8>,
        tabs: Vec<StoredTab>,
    ) -> Result<usize, LedgerError> {
        self.write(move |t| {
            let mut st = t.prepare_cached(
                "INSERT INTO tabs (receipt_public_key, account, count, total, signed_tab) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (receipt_public_key, account) DO UPDATE SET \
                 count = excluded.count, total = excluded.total, signed_tab = excluded.signed_tab \
                 WHERE excluded.count > tabs.count",
            )?;
            let mut moved = 0;
            for tab in &tabs {
                let (Ok(count), Ok(total)) = (i64::try_from(tab.count), i64::try_from(tab.total))
                else {
                    continue;
                };
                moved += st.execute(params![
                    &receipt_public_key,
                    &tab.account[..],
                    count,
                    total,
                    &tab.signed
                ])?;
            }
            Ok(moved)
        })
        .await
    }

    /// Store a client's authorization for a receipt key when its cap is
    /// higher than the stored one. Returns the cap now stored.
    pub async fn store_authorization(
        &self,
        receipt_public_key: Vec<u8>,
        auth: StoredAuthorization,
    ) -> Result<u64, LedgerError> {
        self.write(move |t| {
            let cap = i64::try_from(auth.cap).unwrap_or(i64::MAX);
            t.prepare_cached(
                "INSERT INTO authorizations (receipt_public_key, account, cap, signed, client_public_key) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (receipt_public_key, account) DO UPDATE SET \
                 cap = excluded.cap, signed = excluded.signed, client_public_key = excluded.client_public_key \
                 WHERE excluded.cap > authorizations.cap",
            )?
            .execute(params![
                &receipt_public_key,
                &auth.account[..],
                cap,
                &auth.signed,
                &auth.client_public_key
            ])?;
            t.query_row(
                "SELECT cap FROM authorizations WHERE receipt_public_key = ?1 AND account = ?2",
                params![&receipt_public_key, &auth.account[..]],
                |r| r.get::<_, i64>(0),
            )
            .map(u64_of)
        })
        .await
    }

    /// Record what a settlement run claimed (count and total of the tab it
    /// claimed), per receipt key and account; only moves forward.
    pub async fn record_claims(&self, claims: Vec<ClaimRecord>) -> Result<(), LedgerError> {
        self.write(move |t| {
            let mut st = t.prepare_cached(
                "INSERT INTO claims (receipt_public_key, account, count, total) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (receipt_public_key, account) DO UPDATE SET \
                 count = excluded.count, total = excluded.total WHERE excluded.total > claims.total",
            )?;
            for c in &claims {
                st.execute(params![
                    &c.receipt_public_key,
                    &c.account[..],
                    i64::try_from(c.count).unwrap_or(i64::MAX),
                    i64::try_from(c.total).unwrap_or(i64::MAX)
                ])?;
            }
            Ok(())
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

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

/// Fold the WAL into the main file now and then, on a connection of its
/// own, so the writer's commits never pay for a checkpoint. PASSIVE: it
/// never blocks the writer or readers.
fn checkpoint_loop(path: &Path, stop: &mpsc::Receiver<()>) {
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "ledger checkpoint connection failed; the WAL will grow until close");
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    loop {
        match stop.recv_timeout(CHECKPOINT_INTERVAL) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "ledger checkpoint failed");
                }
            }
            _ => return,
        }
    }
}

type Pending = (Box<LedgerEntry>, oneshot::Sender<Result<u64, AppendError>>);

fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Op>, max_batch: usize, stats: &LedgerStats) {
    let mut closing = false;
    let mut job: Option<WriteJob> = None;
    while !closing {
        if let Some(j) = job.take() {
            j(&mut conn);
        }
        let mut batch: Vec<Pending> = Vec::new();
        match rx.recv() {
            Ok(Op::Append(e, tx)) => batch.push((e, tx)),
            Ok(Op::Run(j)) => {
                j(&mut conn);
                continue;
            }
            Ok(Op::Close) | Err(_) => break,
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Op::Append(e, tx)) => batch.push((e, tx)),
                Ok(Op::Run(j)) => {
                    // After this batch, in order.
                    job = Some(j);
                    break;
                }
                Ok(Op::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let results = commit_batch(&mut conn, &batch);
        match results {
            Ok(results) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                for ((_, tx), r) in batch.into_iter().zip(results) {
                    match &r {
                        Ok(_) => stats.appended.fetch_add(1, Ordering::Relaxed),
                        Err(_) => stats.duplicates.fetch_add(1, Ordering::Relaxed),
                    };
                    let _ = tx.send(r);
                }
            }
            Err(e) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, appends = batch.len(), "ledger commit failed");
                for (_, tx) in batch {
                    let _ = tx.send(Err(AppendError::Io(e.to_string())));
                }
            }
        }
    }
    if let Some(j) = job.take() {
        j(&mut conn);
    }
    // Everything queued before Close has been answered. Fold the WAL back
    // into the main file so the sqlite3 CLI sees one file.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "ledger checkpoint at close failed");
    }
    // Anything queued after Close (none: the sender is gone) is dropped,
    // which answers it with `Closed`.
}

/// Insert every entry of `batch` in one transaction. The outer error is a
/// failure of the whole batch (nothing committed).
fn commit_batch(
    conn: &mut Connection,
    batch: &[Pending],
) -> rusqlite::Result<Vec<Result<u64, AppendError>>> {
    let txn = conn.transaction()?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut insert = txn.prepare_cached(
            "INSERT OR IGNORE INTO receipts (request_id, account, model, prompt_tokens, \
             completion_tokens, total_tokens, prompt_price, completion_price, enclave_seq, \
             time, receipt, receipt_public_key, cached_tokens, cached_price, multiplier_milli, \
             charge) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        let mut which = txn.prepare_cached("SELECT 1 FROM receipts WHERE request_id = ?1")?;
        for (e, _) in batch {
            let nums = (|| {
                Ok::<_, AppendError>([
                    i64_of(e.prompt_tokens, "prompt_tokens")?,
                    i64_of(e.completion_tokens, "completion_tokens")?,
                    i64_of(e.total_tokens, "total_tokens")?,
                    i64_of(e.unit_price.prompt, "unit_price.prompt")?,
                    i64_of(e.unit_price.completion, "unit_price.completion")?,
                    i64_of(e.enclave_seq, "enclave_seq")?,
                    i64_of(e.time, "time")?,
                    i64_of(e.cached_tokens, "cached_tokens")?,
                    i64_of(e.unit_price.cached, "unit_price.cached")?,
                    i64::from(e.multiplier_milli),
                    i64_of(e.charge, "charge")?,
                ])
            })();
            let n = match nums {
                Ok(n) => n,
                Err(r) => {
                    results.push(Err(r));
                    continue;
                }
            };
            let changed = insert.execute(params![
                &e.request_id.0[..],
                &e.account[..],
                &e.model,
                n[0],
                n[1],
                n[2],
                n[3],
                n[4],
                n[5],
                n[6],
                &e.receipt,
                &e.receipt_public_key,
                n[7],
                n[8],
                n[9],
                n[10],
            ])?;
            if changed == 1 {
                results.push(Ok(u64_of(txn.last_insert_rowid())));
            } else if which
                .query_row([&e.request_id.0[..]], |_| Ok(()))
                .optional()?
                .is_some()
            {
                results.push(Err(AppendError::DuplicateRequest(e.request_id)));
            } else {
                results.push(Err(AppendError::DuplicateEnclaveSeq(e.enclave_seq)));
            }
        }
    }
    txn.commit()?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(i: u64) -> LedgerEntry {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&i.to_be_bytes());
        LedgerEntry {
            request_id: RequestId(id),
            account: [(i % 3) as u8; 32],
            model: "m".into(),
            prompt_tokens: 1,
            cached_tokens: 0,
            completion_tokens: 2,
            total_tokens: 3,
            unit_price: UnitPrice {
                prompt: 10,
                cached: 10,
                completion: 20,
            },
            multiplier_milli: 1000,
            charge: 50,
            enclave_seq: i,
            time: 1_800_000_000,
            receipt: vec![0xd2; 100],
            receipt_public_key: vec![4; 65],
        }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cocoon-ledger-unit-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d.join("ledger.sqlite")
    }

    #[tokio::test]
    async fn duplicates_and_out_of_range_are_refused_alone() {
        let path = temp("dup");
        let l = Ledger::open(&path, LedgerOptions::default()).unwrap();
        let mut same_seq = entry(2);
        same_seq.request_id = RequestId([0xee; 32]);
        let mut huge = entry(3);
        huge.prompt_tokens = u64::MAX;
        let (a, b, c, d) = tokio::join!(
            l.append(entry(1)),
            l.append(entry(1)),
            l.append(entry(2)),
            l.append(huge)
        );
        let seq1 = a.unwrap();
        assert_eq!(b, Err(AppendError::DuplicateRequest(entry(1).request_id)));
        let seq2 = c.unwrap();
        assert!(seq2 > seq1);
        assert_eq!(d, Err(AppendError::OutOfRange("prompt_tokens")));
        assert_eq!(
            l.append(same_seq).await,
            Err(AppendError::DuplicateEnclaveSeq(2))
        );
        assert!(l.contains(entry(1).request_id).await.unwrap());
        assert!(!l.contains(entry(9).request_id).await.unwrap());
        let check = l.check().await.unwrap();
        assert_eq!(check.entries, 2);
        assert!(check.is_ok(), "{check:?}");
        let rows = l.export(0, 10).await.unwrap();
        assert_eq!(rows[0].entry, entry(1));
        assert!(rows[0].to_json_line().contains("\"enclave_seq\":1"));
        l.close();
        assert_eq!(l.append(entry(5)).await, Err(AppendError::Closed));
    }
}
