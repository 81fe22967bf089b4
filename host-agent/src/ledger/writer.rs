//! The writer side of the ledger: one thread owns the writing connection
//! and commits appends in groups (see "Group commit" in the module above),
//! a second folds the WAL into the main file. The writes other than
//! appends (tabs, authorizations, claims) join the same groups: each runs
//! in the transaction of the batch it was queued in, in order with the
//! appends, inside a savepoint of its own (its failure undoes only its own
//! changes), and is answered once that transaction committed. So a tab
//! stored after every acknowledgement costs no fsync of its own, and no
//! append waits behind one.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::schema::{i64_of, u64_of};
use super::{
    AppendError, ClaimRecord, Ledger, LedgerEntry, LedgerError, LedgerStats, SentClaim,
    StoredAuthorization, StoredTab,
};

/// How often the checkpointer looks whether to fold the WAL into the main
/// file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Transactions committed since the last checkpoint after which one runs
/// even while appends keep coming (bounds the WAL under sustained load:
/// about 250 MiB at the bench's 1,000-append transactions). Otherwise a
/// checkpoint waits for a half second without commits, so a burst of
/// appends never shares the disk with one.
const CHECKPOINT_BUSY_AFTER: u64 = 64;

/// A write other than an append, run by the writer thread in a batch's
/// transaction.
pub(super) trait Job: Send {
    /// Do the write (in a savepoint of its own) and keep its result.
    fn run(&mut self, conn: &Connection);
    /// Answer the caller: `None` once the batch's transaction committed,
    /// else why it did not (a failure of the job itself comes first).
    fn answer(self: Box<Self>, failed: Option<&str>);
}

/// [`Ledger::write`]'s job: `f` and where its answer goes.
struct Write<T, F> {
    f: Option<F>,
    out: Option<rusqlite::Result<T>>,
    tx: oneshot::Sender<Result<T, LedgerError>>,
    path: String,
}

impl<T, F> Job for Write<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) {
        let Some(f) = self.f.take() else { return };
        self.out = Some((|| {
            conn.execute_batch("SAVEPOINT job")?;
            let v = f(conn).and_then(|v| conn.execute_batch("RELEASE job").map(|()| v));
            if v.is_err() {
                let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            }
            v
        })());
    }

    fn answer(self: Box<Self>, failed: Option<&str>) {
        let sqlite = |message: String| LedgerError::Sqlite {
            path: self.path.clone(),
            message,
        };
        let r = match (self.out, failed) {
            (Some(Err(e)), _) => Err(sqlite(e.to_string())),
            (_, Some(why)) => Err(sqlite(why.to_string())),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(LedgerError::Closed),
        };
        let _ = self.tx.send(r);
    }
}

/// A queued write other than an append.
pub(super) type WriteJob = Box<dyn Job>;

/// How long an append took on the writer's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendTimes {
    /// From being queued until its batch began: the writer thread's
    /// wake-up, or the batch before still committing (its fsync, mostly).
    pub waited: Duration,
    /// Its batch's `COMMIT` (the WAL write and fsync).
    pub commit: Duration,
}

/// An append's answer: its ledger sequence number or why it was refused,
/// and its times.
type Answer = (Result<u64, AppendError>, AppendTimes);

pub(super) enum Op {
    Append(Box<LedgerEntry>, Instant, oneshot::Sender<Answer>),
    Run(WriteJob),
    Close,
}

/// The threads [`start`] started and the queue to the writer.
pub(super) struct Threads {
    pub(super) tx: mpsc::Sender<Op>,
    pub(super) writer: JoinHandle<()>,
    pub(super) checkpointer: (mpsc::Sender<()>, JoinHandle<()>),
}

/// Start the writer thread on `conn` and the checkpoint thread on a
/// connection of its own to `path`.
pub(super) fn start(
    conn: Connection,
    path: &Path,
    max_batch: usize,
    stats: Arc<LedgerStats>,
) -> Result<Threads, LedgerError> {
    let (tx, rx) = mpsc::channel();
    let writer_stats = stats.clone();
    let writer = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || write_loop(conn, rx, max_batch, &writer_stats))
        .map_err(|e| LedgerError::Sqlite {
            path: path.display().to_string(),
            message: format!("could not start the writer thread: {e}"),
        })?;
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let cp_path = path.to_path_buf();
    let checkpointer = std::thread::Builder::new()
        .name("ledger-checkpoint".into())
        .spawn(move || checkpoint_loop(&cp_path, &stop_rx, &stats))
        .map_err(|e| LedgerError::Sqlite {
            path: path.display().to_string(),
            message: format!("could not start the checkpoint thread: {e}"),
        })?;
    Ok(Threads {
        tx,
        writer,
        checkpointer: (stop_tx, checkpointer),
    })
}

impl Ledger {
    /// Append one entry; resolves once its transaction is durably committed
    /// (`Ok(ledger_seq)`), or with why it was refused.
    pub async fn append(&self, entry: LedgerEntry) -> Result<u64, AppendError> {
        self.append_timed(entry).await.map(|(seq, _)| seq)
    }

    /// [`Ledger::append`], and how long it waited for the writer and how
    /// long the `COMMIT` of its batch took (the WAL write and fsync), timed
    /// on the writer thread.
    pub async fn append_timed(
        &self,
        entry: LedgerEntry,
    ) -> Result<(u64, AppendTimes), AppendError> {
        let (tx, rx) = oneshot::channel();
        {
            let guard = self.tx.lock().map_err(|_| AppendError::Closed)?;
            let sender = guard.as_ref().ok_or(AppendError::Closed)?;
            sender
                .send(Op::Append(Box::new(entry), Instant::now(), tx))
                .map_err(|_| AppendError::Closed)?;
        }
        match rx.await {
            Ok((r, times)) => r.map(|seq| (seq, times)),
            Err(_) => Err(AppendError::Closed),
        }
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
    /// Run `f` on the writer thread, in the transaction of the batch it
    /// joins (after the appends and writes queued before it, in a savepoint
    /// of its own), and return its result once committed.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(Write {
            f: Some(f),
            out: None,
            tx,
            path: self.path.display().to_string(),
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
    /// Returns how many rows moved forward. Committed in the writer's next
    /// batch, with whatever appends it holds.
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

    /// Record claims handed to the chain (before waiting for them): per
    /// receipt key and account, the last one sent replaces the one before.
    pub async fn record_claims_sent(&self, sent: Vec<SentClaim>) -> Result<(), LedgerError> {
        self.write(move |t| {
            let mut st = t.prepare_cached(
                "INSERT INTO chain_claims (receipt_public_key, account, sent_total, sent_seqno, sent_hash, sent_at, sent_valid_until) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (receipt_public_key, account) DO UPDATE SET \
                 sent_total = excluded.sent_total, sent_seqno = excluded.sent_seqno, \
                 sent_hash = excluded.sent_hash, sent_at = excluded.sent_at, \
                 sent_valid_until = excluded.sent_valid_until",
            )?;
            for c in &sent {
                st.execute(params![
                    &c.receipt_public_key,
                    &c.account[..],
                    i64::try_from(c.total).unwrap_or(i64::MAX),
                    i64::from(c.seqno),
                    &c.message_hash[..],
                    i64::try_from(c.sent_at).unwrap_or(i64::MAX),
                    i64::try_from(c.valid_until).unwrap_or(i64::MAX)
                ])?;
            }
            Ok(())
        })
        .await
    }

    /// Record what the payment contract's `get_paid` said for (receipt
    /// key, account) at Unix time `at`; the stored figure only moves
    /// forward (the contract's never goes back).
    pub async fn record_paid(
        &self,
        paid: Vec<(Vec<u8>, [u8; 32], u64)>,
        at: u64,
    ) -> Result<(), LedgerError> {
        self.write(move |t| {
            let mut st = t.prepare_cached(
                "INSERT INTO chain_claims (receipt_public_key, account, paid, paid_checked_at) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (receipt_public_key, account) DO UPDATE SET \
                 paid = max(chain_claims.paid, excluded.paid), paid_checked_at = excluded.paid_checked_at",
            )?;
            let at = i64::try_from(at).unwrap_or(i64::MAX);
            for (key, account, total) in &paid {
                st.execute(params![
                    key,
                    &account[..],
                    i64::try_from(*total).unwrap_or(i64::MAX),
                    at
                ])?;
            }
            Ok(())
        })
        .await
    }
}

/// Fold the WAL into the main file, on a connection of its own, so the
/// writer's commits never pay for a checkpoint: after a half second
/// without commits, or after [`CHECKPOINT_BUSY_AFTER`] transactions under
/// sustained load. PASSIVE: it never blocks the writer or readers.
fn checkpoint_loop(path: &Path, stop: &mpsc::Receiver<()>, stats: &LedgerStats) {
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "ledger checkpoint connection failed; the WAL will grow until close");
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let commits =
        || stats.batches.load(Ordering::Relaxed) + stats.failed_batches.load(Ordering::Relaxed);
    let (mut seen, mut folded) = (commits(), commits());
    loop {
        match stop.recv_timeout(CHECKPOINT_INTERVAL) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = commits();
                let idle = now == seen;
                seen = now;
                if now == folded || !(idle || now - folded >= CHECKPOINT_BUSY_AFTER) {
                    continue;
                }
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Ok(()) => folded = now,
                    Err(e) => tracing::warn!(error = %e, "ledger checkpoint failed"),
                }
            }
            _ => return,
        }
    }
}

/// One queued write of a batch.
enum Pending {
    Append(Box<LedgerEntry>, Instant, oneshot::Sender<Answer>),
    Job(WriteJob),
}

/// A committed (or failed) batch on its way to its callers: the writes,
/// the appends' results in order, when the batch began, and the commit's
/// time or why it failed.
struct Answers {
    batch: Vec<Pending>,
    results: Vec<Result<u64, AppendError>>,
    began: Instant,
    outcome: Result<Duration, String>,
}

/// Answer every write of a batch (and free its entries).
fn answer(a: Answers) {
    let Answers {
        batch,
        results,
        began,
        outcome,
    } = a;
    let mut results = results.into_iter();
    for p in batch {
        match (p, &outcome) {
            (Pending::Append(_, queued, tx), Ok(commit)) => {
                let r = results.next().unwrap_or(Err(AppendError::Closed));
                let times = AppendTimes {
                    waited: began.saturating_duration_since(queued),
                    commit: *commit,
                };
                let _ = tx.send((r, times));
            }
            (Pending::Append(_, _, tx), Err(why)) => {
                let _ = tx.send((Err(AppendError::Io(why.clone())), AppendTimes::default()));
            }
            (Pending::Job(j), Ok(_)) => j.answer(None),
            (Pending::Job(j), Err(why)) => j.answer(Some(why)),
        }
    }
}

fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Op>, max_batch: usize, stats: &LedgerStats) {
    let pending = |op| match op {
        Op::Append(e, at, tx) => Some(Pending::Append(e, at, tx)),
        Op::Run(j) => Some(Pending::Job(j)),
        Op::Close => None,
    };
    // Waking the callers (and freeing their entries) happens on a thread
    // of its own while this one starts the next transaction; without it,
    // the writer answers itself.
    let (notify, answers) = mpsc::channel::<Answers>();
    let notifier = std::thread::Builder::new()
        .name("ledger-notify".into())
        .spawn(move || {
            while let Ok(a) = answers.recv() {
                answer(a);
            }
        })
        .ok();
    let mut closing = false;
    while !closing {
        let mut batch: Vec<Pending> = Vec::new();
        match rx.recv().ok().and_then(pending) {
            Some(p) => batch.push(p),
            None => break,
        }
        // Everything queued meanwhile joins.
        while batch.len() < max_batch {
            let Ok(op) = rx.try_recv() else { break };
            match pending(op) {
                Some(p) => batch.push(p),
                None => {
                    closing = true;
                    break;
                }
            }
        }
        let began = Instant::now();
        let appends = batch
            .iter()
            .filter(|p| matches!(p, Pending::Append(..)))
            .count();
        let mut results = Vec::with_capacity(appends);
        let outcome = match commit_batch(&mut conn, &mut batch, &mut results) {
            Ok(commit) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                for r in &results {
                    match r {
                        Ok(_) => stats.appended.fetch_add(1, Ordering::Relaxed),
                        Err(_) => stats.duplicates.fetch_add(1, Ordering::Relaxed),
                    };
                }
                Ok(commit)
            }
            Err(e) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, appends, "ledger commit failed");
                Err(e.to_string())
            }
        };
        let a = Answers {
            batch,
            results,
            began,
            outcome,
        };
        if let Err(mpsc::SendError(a)) = notify.send(a) {
            answer(a);
        }
    }
    drop(notify);
    if let Some(n) = notifier {
        let _ = n.join();
    }
    // Everything queued before Close has been answered. Fold the WAL back
    // into the main file so the sqlite3 CLI sees one file.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "ledger checkpoint at close failed");
    }
    // Anything queued after Close (none: the sender is gone) is dropped,
    // which answers it with `Closed`.
}

/// Run every write of `batch` in one transaction, in order: insert each
/// append (its result pushed to `results`), run each job. The error is a
/// failure of the whole batch (nothing committed); else how long the
/// `COMMIT` took.
fn commit_batch(
    conn: &mut Connection,
    batch: &mut [Pending],
    results: &mut Vec<Result<u64, AppendError>>,
) -> rusqlite::Result<Duration> {
    let txn = conn.transaction()?;
    {
        let mut insert = txn.prepare_cached(
            "INSERT OR IGNORE INTO receipts (request_id, account, model, prompt_tokens, \
             completion_tokens, total_tokens, prompt_price, completion_price, enclave_seq, \
             time, receipt, receipt_public_key, cached_tokens, cached_price, multiplier_milli, \
             charge) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        let mut which = txn.prepare_cached("SELECT 1 FROM receipts WHERE request_id = ?1")?;
        for p in batch.iter_mut() {
            let e = match p {
                Pending::Append(e, _, _) => e,
                Pending::Job(j) => {
                    j.run(&txn);
                    continue;
                }
            };
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
    let t = Instant::now();
    txn.commit()?;
    Ok(t.elapsed())
}
