//! The ledger's tables and schema version, opening the file (WAL,
//! `synchronous=FULL`, the version check), and how the ledger's numbers map
//! to SQLite integers. The schema in prose is in the module above.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::{AppendError, LedgerError};

/// `PRAGMA user_version` of the ledger this host writes.
pub const SCHEMA_VERSION: i64 = 3;

/// The older version this host upgrades in place: version 3 dropped the
/// index `receipts_by_key (receipt_public_key, account)`, which every
/// append paid for (about a quarter of the WAL an append writes) and only
/// the periodic settlement view read. Dropping an index loses no data.
const UPGRADABLE_VERSION: i64 = 2;

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
CREATE TABLE IF NOT EXISTS chain_claims (
  receipt_public_key BLOB NOT NULL,
  account BLOB NOT NULL,
  paid INTEGER NOT NULL DEFAULT 0,
  paid_checked_at INTEGER NOT NULL DEFAULT 0,
  sent_total INTEGER,
  sent_seqno INTEGER,
  sent_hash BLOB,
  sent_at INTEGER,
  sent_valid_until INTEGER,
  PRIMARY KEY (receipt_public_key, account)
);
";

/// Open the ledger file for writing: WAL mode, durable commits, no
/// automatic checkpoints, the schema version checked and the tables
/// created when missing.
pub(super) fn open(path: &Path) -> Result<Connection, LedgerError> {
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
    if has_receipts && version == UPGRADABLE_VERSION {
        conn.execute_batch("BEGIN; DROP INDEX IF EXISTS receipts_by_key; COMMIT;")
            .map_err(err)?;
        tracing::info!(
            path = %path.display(),
            from = UPGRADABLE_VERSION,
            to = SCHEMA_VERSION,
            "ledger schema upgraded in place (an index every append paid for was dropped; no data changed)"
        );
    } else if has_receipts && version != SCHEMA_VERSION {
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
    Ok(conn)
}

pub(super) fn i64_of(v: u64, field: &'static str) -> Result<i64, AppendError> {
    i64::try_from(v).map_err(|_| AppendError::OutOfRange(field))
}

pub(super) fn u64_of(v: i64) -> u64 {
    // Every stored number went in through `i64_of`, so it is non-negative.
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn blob32(v: Vec<u8>) -> [u8; 32] {
    let mut out = [0u8; 32];
    if v.len() == 32 {
        out.copy_from_slice(&v);
    }
    out
}
