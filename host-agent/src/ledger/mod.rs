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
//! error. The other writes (tabs after each acknowledgement,
//! authorizations, claims) join the same batches, in queue order, each in
//! a savepoint of its own, and share the batch's fsync. The callers are
//! answered on a notifier thread while the writer starts the next batch.
//! Checkpoints (folding the WAL into the main file) run on a thread and
//! connection of their own (`PASSIVE`), never in a commit, so a commit
//! costs its inserts and one WAL fsync; they wait for half a second
//! without commits, so a burst of appends does not share the disk with
//! them, or run after 64 transactions under sustained load, which bounds
//! the WAL.
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
//! -- what `settle --send` sent and what the chain confirmed, per
//! -- (receipt key, account): the payment contract's `get_paid` when last
//! -- read (only moves forward), and the last claim sent (its tab total,
//! -- the wallet seqno and message hash, Unix time sent and the time after
//! -- which the chain refuses the message): sent_total > paid is a claim
//! -- sent but not (yet) seen landed, re-checked before any resend
//! CREATE TABLE chain_claims (receipt_public_key BLOB, account BLOB,
//!   paid INTEGER, paid_checked_at INTEGER, sent_total INTEGER,
//!   sent_seqno INTEGER, sent_hash BLOB, sent_at INTEGER,
//!   sent_valid_until INTEGER,
//!   PRIMARY KEY (receipt_public_key, account));
//! ```
//!
//! The schema version is `PRAGMA user_version` = [`SCHEMA_VERSION`]. A
//! version-2 ledger is upgraded in place when opened (version 3 only
//! dropped the index `receipts_by_key (receipt_public_key, account)`: each
//! append paid for it in WAL pages, while its only reader, the settlement
//! view, runs now and then and sorts instead); any other version is refused
//! with a message, not migrated silently. (`chain_claims` came later within
//! version 2: it is created when missing, and a host that does not know it
//! leaves it alone.)
//!
//! Numbers are SQLite integers (signed 64-bit); a receipt whose counts or
//! prices do not fit is refused ([`AppendError::OutOfRange`]).
//!
//! # Layout
//!
//! * `schema` — the tables, the schema version and how numbers map to
//!   SQLite integers;
//! * `writer` — the writer thread (group commit), the checkpointer, and the
//!   writes other than appends (tabs, authorizations, claims);
//! * `queries` — the pool of read connections and every read.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use cocoon_protocol::receipt::{UnitPrice, UsageReceipt};
use cocoon_protocol::RequestId;
use rusqlite::Connection;

mod queries;
mod schema;
#[cfg(test)]
pub(crate) mod tests;
mod writer;

pub use schema::SCHEMA_VERSION;
pub use writer::AppendTimes;
use writer::Op;

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

/// A claim `settle --send` handed to the chain, as the ledger keeps it
/// until the chain shows it paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentClaim {
    /// The receipt key (SEC1 as attested).
    pub receipt_public_key: Vec<u8>,
    /// The account.
    pub account: [u8; 32],
    /// The claimed tab's total: the pair is paid once `get_paid` reaches it.
    pub total: u64,
    /// The wallet seqno the external message carrying it used.
    pub seqno: u32,
    /// The external message's hash, as the chain API returned it.
    pub message_hash: [u8; 32],
    /// When it was sent (Unix seconds).
    pub sent_at: u64,
    /// The message's `valid_until` (Unix seconds): after it the wallet
    /// refuses the message, so a claim not paid by then never will be by
    /// this message.
    pub valid_until: u64,
}

/// What the ledger knows of one (receipt key, account) on chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainClaimRow {
    /// The receipt key (SEC1 as attested).
    pub receipt_public_key: Vec<u8>,
    /// The account.
    pub account: [u8; 32],
    /// The contract's `get_paid` for the pair when last read.
    pub paid: u64,
    /// When that was (Unix seconds; 0 never).
    pub paid_checked_at: u64,
    /// The last claim sent, if any.
    pub sent: Option<SentClaim>,
}

impl ChainClaimRow {
    /// A claim was sent and the chain has not been seen paying it yet.
    pub fn unconfirmed(&self) -> Option<&SentClaim> {
        self.sent.as_ref().filter(|s| s.total > self.paid)
    }
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

impl Ledger {
    /// Open (or create) the ledger file in WAL mode with `synchronous=FULL`
    /// and start its writer thread.
    pub fn open(path: &Path, options: LedgerOptions) -> Result<Ledger, LedgerError> {
        let conn = schema::open(path)?;
        let stats = Arc::new(LedgerStats::default());
        let threads = writer::start(conn, path, options.max_batch.max(1), stats.clone())?;
        Ok(Ledger {
            path: path.to_path_buf(),
            tx: Mutex::new(Some(threads.tx)),
            writer: Mutex::new(Some(threads.writer)),
            checkpointer: Mutex::new(Some(threads.checkpointer)),
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
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}
