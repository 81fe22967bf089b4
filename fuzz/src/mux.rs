//! `mux_billing`: the host's and the enclave's connection machines
//! (`cocoon_protocol::mux`) driven against each other through an
//! adversarial channel, with the billing invariants checked after every
//! step.
//!
//! The input is a program: each byte picks the next move of the host (open
//! a request, cancel one, ask for evidence or prices, let time pass), of
//! the enclave (stream a chunk, finish a request with a signed receipt,
//! fail one), or of the channel between them (deliver, drop, duplicate,
//! reorder, replay an earlier frame, inject a frame of garbage, cut the
//! connection; after a cut both sides reconnect with fresh machines, the
//! enclave keeps its book, and the host acknowledges again every receipt
//! its ledger holds). The host side plays an honest relay: it commits a
//! receipt it knows (the enclave signed it for a request it opened) into
//! its ledger unless the ledger already holds that request, and refuses
//! everything else. Its ledger append takes time: a later move completes
//! it (then the relay commits, or refuses a duplicate).
//!
//! Invariants, after every move:
//! * no receipt is counted twice, and no tab counts a receipt the host did
//!   not commit: per account, the enclave's tab (count, total) is at most
//!   (committed receipts, their summed charge) in the host's ledger;
//! * no final chunk reaches the host before its receipt is committed;
//! * no stream id is handed out again while it is live on the host, and
//!   the enclave never opens a stream id it still has open.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_protocol::frame::{Frame, FrameDecoder, FrameType};
use cocoon_protocol::mux::{
    CancelToken, EnclaveConn, EnclaveEvent, HostConn, HostEvent, StreamEvent,
};
use cocoon_protocol::receipt::{ReceiptSigner, UnitPrice, UsageReceipt};
use cocoon_protocol::tabs::TabBook;
use cocoon_protocol::RequestId;

/// Accounts the requests bill, by the request number's low bit.
const ACCOUNTS: [[u8; 32]; 2] = [[0xa1; 32], [0xb2; 32]];
/// Most open streams the enclave allows per connection.
const MAX_STREAMS: usize = 6;
/// Most moves per input.
const MAX_MOVES: usize = 4096;

fn signer() -> &'static ReceiptSigner {
    static S: std::sync::OnceLock<ReceiptSigner> = std::sync::OnceLock::new();
    S.get_or_init(|| ReceiptSigner::from_scalar(&[0x42; 32]).expect("a valid scalar"))
}

fn chunk(last: bool, n: u8) -> Vec<u8> {
    let mut c = vec![n; 12];
    c[8] = u8::from(last);
    c
}

/// The request a `Request` payload names: 8 bytes, big-endian.
fn request_number(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.try_into().ok()?))
}

fn receipt_for(n: u64, tokens: u64) -> UsageReceipt {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    UsageReceipt {
        request_id: RequestId(id),
        model: "m".into(),
        prompt_tokens: 1,
        completion_tokens: tokens,
        total_tokens: 1 + tokens,
        cached_tokens: 0,
        unit_price: UnitPrice {
            prompt: 3,
            cached: 3,
            completion: 5,
        },
        multiplier_milli: 1000,
        time: 1,
        enclave_seq: n,
        client_account: ACCOUNTS[(n & 1) as usize],
    }
}

/// A request the enclave side is working on.
struct Job {
    stream: u32,
    token: CancelToken,
    number: Option<u64>,
    chunks: u8,
}

/// The host's record of a stream it opened.
struct HostStream {
    /// The request it carries.
    number: u64,
    committed: bool,
}

struct World {
    now: Instant,
    book: Arc<TabBook>,
    host: HostConn,
    enclave: EnclaveConn,
    /// Frames on the wire, each way.
    to_enclave: VecDeque<Frame>,
    to_host: VecDeque<Frame>,
    /// Every frame either side ever wrote, for replays.
    seen: Vec<Frame>,
    next_request: u64,
    /// Streams live on the host (this connection).
    host_streams: HashMap<u32, HostStream>,
    /// Streams the enclave side works on (this connection).
    jobs: Vec<Job>,
    /// Request numbers the enclave served (its replay memory).
    served: HashSet<u64>,
    /// Receipts the enclave signed, by their bytes.
    signed: HashMap<Vec<u8>, UsageReceipt>,
    /// The host's ledger: committed receipts by request id.
    ledger: HashMap<RequestId, ([u8; 32], u64)>,
    /// Receipts the relay is appending to the ledger (the append takes a
    /// while: a later move completes it).
    appending: VecDeque<(u32, UsageReceipt)>,
}

impl World {
    fn new() -> World {
        let book = Arc::new(TabBook::new(signer().clone()));
        World {
            now: Instant::now(),
            enclave: EnclaveConn::new(MAX_STREAMS, Arc::from(&b"prices"[..]), book.clone()),
            book,
            host: HostConn::new(),
            to_enclave: VecDeque::new(),
            to_host: VecDeque::new(),
            seen: Vec::new(),
            next_request: 1,
            host_streams: HashMap::new(),
            jobs: Vec::new(),
            served: HashSet::new(),
            signed: HashMap::new(),
            ledger: HashMap::new(),
            appending: VecDeque::new(),
        }
    }

    /// Move what both machines made onto the wire (a cancelled stream's
    /// frames are dropped by the writer, as the enclave's does).
    fn flush(&mut self) {
        let mut d = FrameDecoder::new();
        while let Some(bytes) = self.host.poll_transmit() {
            d.push(&bytes).expect("the host machine writes frames");
        }
        while let Some(f) = d.next_frame().expect("the host machine writes frames") {
            self.seen.push(f.clone());
            self.to_enclave.push_back(f);
        }
        let mut d = FrameDecoder::new();
        while let Some(t) = self.enclave.poll_transmit() {
            if !t.is_dropped() {
                d.push(&t.bytes).expect("the enclave machine writes frames");
            }
        }
        while let Some(f) = d.next_frame().expect("the enclave machine writes frames") {
            self.seen.push(f.clone());
            self.to_host.push_back(f);
        }
    }

    /// The connection is cut: both sides start over on a new one.
    fn cut(&mut self) {
        self.host.on_close();
        self.enclave.on_close();
        self.host = HostConn::new();
        self.enclave = EnclaveConn::new(MAX_STREAMS, Arc::from(&b"prices"[..]), self.book.clone());
        self.to_enclave.clear();
        self.to_host.clear();
        self.host_streams.clear();
        self.jobs.clear();
        // Appends in flight still land; their streams are gone.
        while let Some((_, r)) = self.appending.pop_front() {
            self.append(&r);
        }
        let mut committed: Vec<_> = self
            .ledger
            .iter()
            .map(|(id, (account, _))| (*id, *account))
            .collect();
        committed.sort_unstable();
        self.host.acknowledge_again(&committed);
    }

    fn host_open(&mut self) {
        let n = self.next_request;
        self.next_request += 1;
        let id = self
            .host
            .open_request(&n.to_be_bytes())
            .expect("a small request fits");
        assert!(
            !self.host_streams.contains_key(&id),
            "stream id {id} handed out again while live"
        );
        self.host_streams.insert(
            id,
            HostStream {
                number: n,
                committed: false,
            },
        );
    }

    fn host_cancel(&mut self, pick: u8) {
        let mut ids: Vec<u32> = self.host_streams.keys().copied().collect();
        ids.sort_unstable();
        if let Some(&id) = ids.get(usize::from(pick & 0x7f) % ids.len().max(1)) {
            // The client went away: Cancel; the owner then waits a grace
            // period for a receipt (the stream stays live), or forgets it.
            self.host.cancel(id);
            if pick & 0x80 != 0 {
                self.host.forget(id);
                self.host_streams.remove(&id);
            }
        }
    }

    fn deliver_to_enclave(&mut self, f: Frame) {
        if self.enclave.on_frame(f).is_err() {
            return self.cut();
        }
        while let Some(ev) = self.enclave.poll_event() {
            match ev {
                EnclaveEvent::EvidenceWanted => {
                    self.enclave.evidence(b"bundle").expect("fits");
                }
                EnclaveEvent::Request {
                    stream,
                    token,
                    payload,
                } => {
                    assert!(
                        self.jobs.iter().all(|j| j.stream != stream),
                        "the enclave opened stream {stream} while it was open"
                    );
                    self.jobs.push(Job {
                        stream,
                        token,
                        number: request_number(&payload),
                        chunks: 0,
                    });
                }
                EnclaveEvent::NonceEvidence { stream, token, .. } => {
                    self.enclave
                        .answer_nonce(stream, &token, Ok(b"nonce bundle"))
                        .expect("a nonce stream");
                }
                _ => {}
            }
        }
    }

    /// The host relay's part: commit known receipts once, refuse the rest,
    /// and check every final chunk.
    fn deliver_to_host(&mut self, f: Frame) {
        if self.host.on_frame(f).is_err() {
            return self.cut();
        }
        while let Some(ev) = self.host.poll_event() {
            let HostEvent::Stream { stream, event } = ev else {
                continue;
            };
            match event {
                StreamEvent::Receipt(bytes) => {
                    // As the relay: a receipt the enclave signed, for the
                    // request this stream carries, not yet in the ledger.
                    let expected = self
                        .host_streams
                        .get(&stream)
                        .map(|s| receipt_for(s.number, 0).request_id);
                    let known = self
                        .signed
                        .get(&bytes)
                        .filter(|r| Some(r.request_id) == expected)
                        .cloned();
                    match known {
                        Some(r) => self.appending.push_back((stream, r)),
                        None => {
                            self.host.refuse(stream);
                            self.host_streams.remove(&stream);
                        }
                    }
                }
                StreamEvent::Final(_) => {
                    let committed = self.host_streams.remove(&stream).map(|s| s.committed);
                    assert_eq!(
                        committed,
                        Some(true),
                        "stream {stream}: a final chunk released before its receipt was committed"
                    );
                }
                StreamEvent::Chunk(_) => {}
                _ => {
                    self.host_streams.remove(&stream);
                }
            }
        }
        // Streams the machine ended on its own (a held final released by
        // a commit was handled above).
        let host = &self.host;
        self.host_streams.retain(|id, _| host.is_live(*id));
    }

    /// Put a receipt in the ledger; `false` if it holds that request
    /// already (the ledger's unique request id).
    fn append(&mut self, r: &UsageReceipt) -> bool {
        if self.ledger.contains_key(&r.request_id) {
            return false;
        }
        let charge = u64::try_from(r.charge_nanoton().expect("bounded")).expect("bounded");
        self.ledger.insert(r.request_id, (r.client_account, charge));
        true
    }

    /// The oldest ledger append completes: commit (the final chunk may
    /// pass) or refuse (a duplicate).
    fn ledger_step(&mut self) {
        let Some((stream, r)) = self.appending.pop_front() else {
            return;
        };
        if !self.append(&r) {
            self.host.refuse(stream);
            self.host_streams.remove(&stream);
            return;
        }
        if let Some(s) = self.host_streams.get_mut(&stream) {
            s.committed = true;
        }
        // The stream may be gone meanwhile (forgotten); the receipt is
        // acknowledged again after the next cut.
        if let Ok(Some(_)) = self
            .host
            .commit(stream, r.request_id, r.client_account, self.now)
        {
            self.host_streams.remove(&stream);
        }
    }

    fn enclave_step(&mut self, pick: u8, what: u8) {
        if self.jobs.is_empty() {
            return;
        }
        let i = usize::from(pick) % self.jobs.len();
        let job = &mut self.jobs[i];
        let (stream, token) = (job.stream, job.token.clone());
        let number = job.number.filter(|n| !self.served.contains(n));
        match (what % 4, number) {
            (_, None) => {
                self.enclave.fail(stream, &token, "refused");
                self.jobs.remove(i);
            }
            (0 | 1, Some(_)) => {
                job.chunks = job.chunks.wrapping_add(1);
                let c = chunk(false, job.chunks);
                if !self
                    .enclave
                    .chunk(stream, &token, &c)
                    .expect("an open request")
                {
                    self.enclave.close(stream, &token);
                    self.jobs.remove(i);
                }
            }
            (2, Some(n)) => {
                let r = receipt_for(n, u64::from(job.chunks));
                let signed = signer().sign(&r).expect("a consistent receipt");
                self.served.insert(n);
                self.signed.insert(signed.clone(), r.clone());
                let _ = self
                    .enclave
                    .finish(stream, &token, &r, &signed, &chunk(true, 0))
                    .expect("an open request");
                self.jobs.remove(i);
            }
            (_, Some(_)) => {
                self.enclave.fail(stream, &token, "backend failed");
                self.jobs.remove(i);
            }
        }
    }

    fn garbage(&mut self, kind: u8, stream: u8, len: u8, to_host: bool) {
        let kind = FrameType::ALL[usize::from(kind) % FrameType::ALL.len()];
        let payload = match kind {
            FrameType::ResponseChunk => chunk(len & 1 == 1, len),
            _ => vec![len; usize::from(len % 80)],
        };
        let f = Frame::new(u32::from(stream % 8), kind, payload);
        if to_host {
            self.to_host.push_back(f);
        } else {
            self.to_enclave.push_back(f);
        }
    }

    fn check(&self) {
        for account in ACCOUNTS {
            let Some((count, total)) = self.book.tab(&account) else {
                continue;
            };
            let (n, sum) = self
                .ledger
                .values()
                .filter(|(a, _)| *a == account)
                .fold((0u64, 0u64), |(n, s), (_, c)| (n + 1, s + c));
            assert!(
                count <= n && total <= sum,
                "tab ({count}, {total}) over the committed receipts ({n}, {sum}): a receipt counted twice or uncommitted"
            );
        }
    }
}

/// The target body.
pub fn mux_billing(data: &[u8]) {
    let mut w = World::new();
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next();
    for _ in 0..MAX_MOVES {
        let Some(op) = next() else { break };
        let arg = next().unwrap_or(0);
        match op % 20 {
            0 | 1 => w.host_open(),
            2 => w.host_cancel(arg),
            3 => {
                let call = if arg & 1 == 0 {
                    cocoon_protocol::mux::Call::Evidence
                } else {
                    cocoon_protocol::mux::Call::Prices
                };
                w.host.call(call);
            }
            4 => {
                w.now += Duration::from_millis(u64::from(arg));
                w.host.handle_timeout(w.now);
            }
            5..=7 => {
                let what = next().unwrap_or(0);
                w.enclave_step(arg, what);
            }
            8 | 9 => {
                if let Some(f) = w.to_enclave.pop_front() {
                    w.deliver_to_enclave(f);
                }
            }
            10 | 11 => {
                if let Some(f) = w.to_host.pop_front() {
                    w.deliver_to_host(f);
                }
            }
            12 => {
                // Drop.
                if arg & 1 == 0 {
                    w.to_enclave.pop_front();
                } else {
                    w.to_host.pop_front();
                }
            }
            13 => {
                // Duplicate.
                let q = if arg & 1 == 0 {
                    &mut w.to_enclave
                } else {
                    &mut w.to_host
                };
                if let Some(f) = q.front().cloned() {
                    q.push_front(f);
                }
            }
            14 => {
                // Reorder.
                let q = if arg & 1 == 0 {
                    &mut w.to_enclave
                } else {
                    &mut w.to_host
                };
                if q.len() >= 2 {
                    q.swap(0, 1);
                }
            }
            15 => {
                // Replay an earlier frame towards the side it was meant for.
                if !w.seen.is_empty() {
                    let f = w.seen[usize::from(arg) * 7 % w.seen.len()].clone();
                    let to_host = matches!(
                        f.kind,
                        FrameType::ResponseChunk
                            | FrameType::Receipt
                            | FrameType::EvidenceResponse
                            | FrameType::PriceTable
                            | FrameType::Tab
                    ) || (f.kind == FrameType::Error && arg & 0x80 != 0);
                    if to_host {
                        w.to_host.push_back(f);
                    } else {
                        w.to_enclave.push_back(f);
                    }
                }
            }
            16 | 17 => {
                let (kind, stream, len) = (arg, next().unwrap_or(0), next().unwrap_or(0));
                w.garbage(kind, stream, len, op % 20 == 16);
            }
            18 => {
                if arg % 8 == 0 {
                    w.cut();
                }
            }
            _ => w.ledger_step(),
        }
        w.flush();
        w.check();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The honest seed's moves reach the end of the billing path: one
    /// committed receipt, counted once in the account's tab, and the final
    /// chunk released by the commit (so the target is not vacuous).
    #[test]
    fn an_honest_program_ends_in_one_counted_receipt() {
        let moves = [
            0u8, 0, 8, 0, 5, 0, 0, 5, 0, 2, 10, 0, 10, 0, 10, 0, 4, 5, 8, 0, 10, 0,
        ];
        mux_billing(&moves);
        let mut w = World::new();
        w.host_open();
        w.flush();
        let f = w.to_enclave.pop_front().unwrap();
        w.deliver_to_enclave(f);
        w.enclave_step(0, 0);
        w.enclave_step(0, 2);
        w.flush();
        while let Some(f) = w.to_host.pop_front() {
            w.deliver_to_host(f);
        }
        assert_eq!(w.host_streams.len(), 1, "the final chunk is held");
        assert!(w.ledger.is_empty());
        w.ledger_step();
        assert!(w.host_streams.is_empty(), "the commit released the final chunk");
        assert_eq!(w.ledger.len(), 1);
        w.now += Duration::from_millis(5);
        w.host.handle_timeout(w.now);
        w.flush();
        let ack = w.to_enclave.pop_front().unwrap();
        w.deliver_to_enclave(ack.clone());
        // The same acknowledgement again counts nothing.
        w.deliver_to_enclave(ack);
        let charge = 3 + 5;
        assert_eq!(w.book.tab(&ACCOUNTS[1]), Some((1, charge)));
        w.check();
    }
}
