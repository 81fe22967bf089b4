//! Continuous batching for chat: the scheduler that owns one chat model's
//! decoder on its own thread and decodes every running conversation in one
//! step per token.
//!
//! Requests ([`Job`]s) arrive over a channel and join the batch at token
//! boundaries; each row keeps its own key/value cache, position and
//! sampling state, and leaves at its stop token, at its `max_tokens`, or as
//! soon as its caller has gone (the caller's [`Job::cancelled`] flag, or a
//! closed event channel). One loop turn ([`Scheduler::tick`]):
//!
//! 1. **Admission**: prompts are prefilled one at a time, alone (the
//!    decoder's single-sequence pass), in chunks of at most
//!    [`PREFILL_CHUNK`] tokens and at most that many prompt tokens per
//!    turn, while the batch has a free row. A long prompt therefore delays
//!    the running rows by one chunk per token, never by its whole prefill;
//!    several short prompts arriving together are admitted in the same
//!    turn. A prompt's cache is kept in the account's prefix cache
//!    ([`crate::prefix_cache`]) and copied into the new row; its first
//!    token comes from the prefill's logits.
//! 2. **One decoding step** for all live rows (at most `width`).
//!
//! Batch invariance: the decoder runs every step with exactly `width` rows
//! (live rows first, then padding) and attends per row, so a row's logits
//! are the same bits whichever rows run beside it. Greedy answers are
//! therefore identical batched and alone, and so are seeded sampled ones.
//!
//! Owns the batch and the prefix cache of its model; the tensors are the
//! [`Decoder`]'s business, and text, `emit` and billing stay with the
//! caller's thread, which only receives token ids ([`Event`]). Tested here
//! with a decoder written in plain Rust; `super::chat` runs the
//! TorchScript one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use crate::prefix_cache::{PrefixCache, Scope};
use crate::sampling::{Logprobs, Sampler};

/// Prompt tokens prefilled per loop turn, at most (and the chunk size of a
/// longer prompt's prefill).
pub const PREFILL_CHUNK: usize = 256;

/// A token chosen for a row, with its log-probabilities when its sampler
/// reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The token id.
    pub token: i64,
    /// Its log-probabilities (requests that asked for them).
    pub logprobs: Option<Logprobs>,
}

/// What a decoder computes; the scheduler knows nothing of tensors.
pub trait Decoder {
    /// A prompt's key/value cache, exactly its length (what the prefix
    /// cache keeps). Cloning must not copy the data.
    type Prefix: Clone;
    /// A decoding row's key/value cache, with room to grow.
    type Row;
    /// The logits of a pass, on the device.
    type Logits;

    /// Positions held by `prefix`.
    fn prefix_len(&self, prefix: &Self::Prefix) -> usize;
    /// Bytes `prefix` holds (what the prefix cache charges).
    fn prefix_bytes(&self, prefix: &Self::Prefix) -> usize;
    /// The cache of the first `n` positions of `prefix`.
    fn cut(&self, prefix: &Self::Prefix, n: usize) -> Result<Self::Prefix, String>;
    /// Run `ids` after `past` (nothing when `None`): the logits of the
    /// last position (one row) and the cache grown by `ids`.
    fn prefill(
        &mut self,
        ids: &[i64],
        past: Option<&Self::Prefix>,
    ) -> Result<(Self::Logits, Self::Prefix), String>;
    /// A row holding `prompt`'s cache, able to grow to `limit` positions.
    fn row(&mut self, prompt: &Self::Prefix, limit: usize) -> Result<Self::Row, String>;
    /// One step: row `r` feeds `ids[r]` at position `pos[r]`; `ids` has
    /// `width` entries (padding after the live rows). Logits of `width`
    /// rows.
    fn decode(
        &mut self,
        width: usize,
        ids: &[i64],
        pos: &[usize],
        rows: &mut [&mut Self::Row],
    ) -> Result<Self::Logits, String>;
    /// The tokens of rows `0..samplers.len()` of `logits`: the argmax
    /// (on the device) where the sampler is `None`, else the sampler's
    /// pick.
    fn pick(
        &mut self,
        logits: &Self::Logits,
        samplers: &mut [Option<&mut Sampler>],
    ) -> Result<Vec<Choice>, String>;
}

/// What the scheduler tells a request's caller, in order: `Prefilled`,
/// then `Token`s, and `Stop` when the model ends the answer; `Failed`
/// instead at any point. After `max_tokens` tokens nothing more comes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt ran; this many of its tokens came from the prefix cache.
    Prefilled {
        /// Prompt tokens whose cache was reused.
        cached: usize,
    },
    /// The next token of the answer (never a stop token).
    Token(Choice),
    /// The model produced a stop token: the answer is complete.
    Stop,
    /// The request failed; the text never quotes it.
    Failed(String),
}

/// One chat request for the scheduler.
pub struct Job {
    /// The prompt's token ids (at least one).
    pub prompt: Vec<i64>,
    /// The account whose cached prefixes it may reuse.
    pub scope: Option<Scope>,
    /// Answer tokens at most (at least 1).
    pub max_tokens: u32,
    /// Its sampling state; `None` for plain greedy (argmax on the device).
    pub sampler: Option<Sampler>,
    /// Where its events go. Unbounded on purpose: a row sends at most
    /// `max_tokens` + 2 events, and a caller slow to take them (a slow
    /// client behind `emit`) must never stall the other rows.
    pub events: mpsc::Sender<Event>,
    /// Set by the caller when it stops listening: the row leaves at the
    /// next token boundary.
    pub cancelled: Arc<AtomicBool>,
}

impl Job {
    fn gone(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Send `event`; false when the caller has gone.
    fn send(&self, event: Event) -> bool {
        !self.gone() && self.events.send(event).is_ok()
    }

    fn fail(&self, message: &str) {
        let _ = self.events.send(Event::Failed(message.to_owned()));
    }
}

/// Counters of the batch, readable from any thread.
#[derive(Debug, Default)]
pub struct Counters {
    steps: AtomicU64,
    rows: AtomicU64,
    widest: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChatStats {
    /// Decoding steps run.
    pub steps: u64,
    /// Live rows summed over those steps (`rows / steps` is the mean batch).
    pub rows: u64,
    /// The most live rows one step ran.
    pub widest: u64,
}

impl Counters {
    /// The counts now.
    pub fn snapshot(&self) -> ChatStats {
        ChatStats {
            steps: self.steps.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            widest: self.widest.load(Ordering::Relaxed),
        }
    }
}

/// A prompt being prefilled.
struct Filling<P> {
    job: Job,
    /// Prompt tokens in `past`.
    done: usize,
    past: Option<P>,
    /// Of those, the ones from the prefix cache.
    reused: usize,
}

/// A row of the batch.
struct Live<R> {
    job: Job,
    row: R,
    /// The token fed at the next step, and its position.
    next: i64,
    pos: usize,
    /// Answer tokens sent.
    sent: u32,
}

/// One chat model's batch (see the module docs).
pub struct Scheduler<D: Decoder> {
    decoder: D,
    width: usize,
    stop: Vec<i64>,
    prefixes: PrefixCache<D::Prefix>,
    waiting: VecDeque<Job>,
    filling: Option<Filling<D::Prefix>>,
    rows: Vec<Live<D::Row>>,
    counters: Arc<Counters>,
}

impl<D: Decoder> Scheduler<D> {
    /// A scheduler decoding up to `width` rows per step (at least 1), that
    /// ends answers at any of `stop` and keeps up to `prefix_bytes` of
    /// prompt caches.
    pub fn new(decoder: D, width: usize, stop: Vec<i64>, prefix_bytes: usize) -> Scheduler<D> {
        Scheduler {
            decoder,
            width: width.max(1),
            stop,
            prefixes: PrefixCache::new(prefix_bytes),
            waiting: VecDeque::new(),
            filling: None,
            rows: Vec::new(),
            counters: Arc::new(Counters::default()),
        }
    }

    /// Its counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Queue a request; it joins at a coming token boundary.
    pub fn submit(&mut self, job: Job) {
        self.waiting.push_back(job);
    }

    /// Nothing waiting, prefilling or decoding.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.filling.is_none() && self.rows.is_empty()
    }

    /// Serve `jobs` until the channel closes and the last answer is done.
    pub fn run(mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            if self.is_idle() {
                match jobs.recv() {
                    Ok(job) => self.submit(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.submit(job);
            }
            self.tick();
        }
    }

    /// One loop turn: admission, then one decoding step.
    pub fn tick(&mut self) {
        self.admit();
        self.step();
    }

    /// Prefill up to [`PREFILL_CHUNK`] prompt tokens while a row is free.
    fn admit(&mut self) {
        let mut budget = PREFILL_CHUNK;
        while budget > 0 && self.rows.len() < self.width {
            let Some(mut f) = self.filling.take().or_else(|| self.start()) else {
                return;
            };
            if f.job.gone() {
                continue;
            }
            let end = f.job.prompt.len().min(f.done + budget);
            budget -= end - f.done;
            let (logits, prefix) = match self
                .decoder
                .prefill(&f.job.prompt[f.done..end], f.past.as_ref())
            {
                Ok(r) => r,
                Err(e) => {
                    f.job.fail(&e);
                    continue;
                }
            };
            f.done = end;
            if end < f.job.prompt.len() {
                f.past = Some(prefix);
                self.filling = Some(f);
                continue;
            }
            self.join(f.job, f.reused, logits, prefix);
        }
    }

    /// The next waiting request that is still wanted, with the longest
    /// prefix its account has cached (at least one prompt token is left to
    /// run: its logits start the answer).
    fn start(&mut self) -> Option<Filling<D::Prefix>> {
        while let Some(job) = self.waiting.pop_front() {
            if job.gone() {
                continue;
            }
            let mut filling = Filling {
                job,
                done: 0,
                past: None,
                reused: 0,
            };
            if let Some(scope) = &filling.job.scope {
                let max = filling.job.prompt.len().saturating_sub(1);
                if let Some((n, cached)) = self.prefixes.lookup(scope, &filling.job.prompt, max) {
                    if let Ok(cut) = self.decoder.cut(cached, n) {
                        filling.done = n;
                        filling.reused = n;
                        filling.past = Some(cut);
                    }
                }
            }
            return Some(filling);
        }
        None
    }

    /// A prompt has run: keep its cache for the account, send its first
    /// token and give it a row unless it is already done.
    fn join(&mut self, mut job: Job, reused: usize, logits: D::Logits, prefix: D::Prefix) {
        if let Some(scope) = job.scope {
            let bytes = self.decoder.prefix_bytes(&prefix);
            self.prefixes
                .insert(scope, job.prompt.clone(), prefix.clone(), bytes);
        }
        let first = match self.decoder.pick(&logits, &mut [job.sampler.as_mut()]) {
            Ok(mut c) if c.len() == 1 => c.remove(0),
            Ok(_) => return job.fail("the model returned no logits"),
            Err(e) => return job.fail(&e),
        };
        if !job.send(Event::Prefilled { cached: reused }) {
            return;
        }
        let mut sent = 0;
        if !self.deliver(&job, first.clone(), &mut sent) {
            return;
        }
        let pos = self.decoder.prefix_len(&prefix);
        // Positions fed: the prompt's, then every answer token but the last.
        let limit = pos + job.max_tokens as usize - 1;
        match self.decoder.row(&prefix, limit) {
            Ok(row) => {
                job.prompt = Vec::new();
                self.rows.push(Live {
                    job,
                    row,
                    next: first.token,
                    pos,
                    sent,
                });
            }
            Err(e) => job.fail(&e),
        }
    }

    /// Send a row's token; false when the row is done (stop token, its
    /// `max_tokens`, or its caller gone).
    fn deliver(&self, job: &Job, choice: Choice, sent: &mut u32) -> bool {
        if self.stop.contains(&choice.token) {
            job.send(Event::Stop);
            return false;
        }
        if !job.send(Event::Token(choice)) {
            return false;
        }
        *sent += 1;
        *sent < job.max_tokens
    }

    /// One decoding step for every live row.
    fn step(&mut self) {
        self.rows.retain(|l| !l.job.gone());
        if self.rows.is_empty() {
            return;
        }
        let n = self.rows.len();
        let mut ids = vec![0i64; self.width];
        for (slot, l) in ids.iter_mut().zip(&self.rows) {
            *slot = l.next;
        }
        let pos: Vec<usize> = self.rows.iter().map(|l| l.pos).collect();
        let mut rows: Vec<&mut D::Row> = self.rows.iter_mut().map(|l| &mut l.row).collect();
        let decoded = self.decoder.decode(self.width, &ids, &pos, &mut rows);
        drop(rows);
        let choices = decoded.and_then(|logits| {
            let mut samplers: Vec<Option<&mut Sampler>> = self
                .rows
                .iter_mut()
                .map(|l| l.job.sampler.as_mut())
                .collect();
            self.decoder.pick(&logits, &mut samplers)
        });
        let choices = match choices {
            Ok(c) if c.len() == n => c,
            Ok(_) => return self.fail_all("the model returned the wrong number of rows"),
            Err(e) => return self.fail_all(&e),
        };
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        self.counters.rows.fetch_add(n as u64, Ordering::Relaxed);
        self.counters.widest.fetch_max(n as u64, Ordering::Relaxed);
        let rows = std::mem::take(&mut self.rows);
        for (mut l, choice) in rows.into_iter().zip(choices) {
            let token = choice.token;
            if self.deliver(&l.job, choice, &mut l.sent) {
                l.next = token;
                l.pos += 1;
                self.rows.push(l);
            }
        }
    }

    /// Fail every live row: the step they shared failed.
    fn fail_all(&mut self, message: &str) {
        for l in self.rows.drain(..) {
            l.job.fail(message);
        }
    }
}

#[cfg(test)]
mod tests;
