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
    /// Where its events go.
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
mod tests {
    use super::*;
    use cocoon_protocol::sampling::Sampling;

    /// A decoder in plain Rust: the next token is a hash of the row's
    /// whole sequence (so it depends on every cached position), the token
    /// `STOP` when that hash says so. Logits are one-hot rows.
    #[derive(Default)]
    struct Toy {
        /// Decoding steps that fail (by number, from 0).
        fail_steps: Vec<usize>,
        steps: usize,
        prefills: Vec<usize>,
        widths: Vec<usize>,
    }

    const VOCAB: usize = 50;
    const STOP: i64 = 49;

    fn next_token(seq: &[i64]) -> i64 {
        let h = seq.iter().fold(1469598103934665603u64, |h, &t| {
            (h ^ t as u64).wrapping_mul(1099511628211)
        });
        // About one token in twenty ends the answer.
        if h % 20 == 0 {
            STOP
        } else {
            (h % (VOCAB as u64 - 1)) as i64
        }
    }

    fn one_hot(seq: &[i64]) -> Vec<f32> {
        let mut l = vec![0.0; VOCAB];
        l[next_token(seq) as usize] = 1.0;
        l
    }

    struct ToyRow {
        seq: Vec<i64>,
        limit: usize,
    }

    impl Decoder for Toy {
        type Prefix = Vec<i64>;
        type Row = ToyRow;
        type Logits = Vec<Vec<f32>>;

        fn prefix_len(&self, p: &Vec<i64>) -> usize {
            p.len()
        }
        fn prefix_bytes(&self, p: &Vec<i64>) -> usize {
            p.len() * 8
        }
        fn cut(&self, p: &Vec<i64>, n: usize) -> Result<Vec<i64>, String> {
            Ok(p[..n].to_vec())
        }
        fn prefill(
            &mut self,
            ids: &[i64],
            past: Option<&Vec<i64>>,
        ) -> Result<(Vec<Vec<f32>>, Vec<i64>), String> {
            if ids.contains(&-1) {
                return Err("bad prompt".into());
            }
            self.prefills.push(ids.len());
            let mut seq = past.cloned().unwrap_or_default();
            seq.extend_from_slice(ids);
            Ok((vec![one_hot(&seq)], seq))
        }
        fn row(&mut self, prompt: &Vec<i64>, limit: usize) -> Result<ToyRow, String> {
            Ok(ToyRow {
                seq: prompt.clone(),
                limit,
            })
        }
        fn decode(
            &mut self,
            width: usize,
            ids: &[i64],
            pos: &[usize],
            rows: &mut [&mut ToyRow],
        ) -> Result<Vec<Vec<f32>>, String> {
            let step = self.steps;
            self.steps += 1;
            self.widths.push(rows.len());
            assert_eq!(ids.len(), width);
            assert!(ids[rows.len()..].iter().all(|&t| t == 0), "padding");
            if self.fail_steps.contains(&step) {
                return Err("device lost".into());
            }
            let mut out = vec![vec![0.0; VOCAB]; width];
            for (r, row) in rows.iter_mut().enumerate() {
                assert_eq!(row.seq.len(), pos[r], "position");
                assert!(pos[r] < row.limit, "room");
                row.seq.push(ids[r]);
                out[r] = one_hot(&row.seq);
            }
            Ok(out)
        }
        fn pick(
            &mut self,
            logits: &Vec<Vec<f32>>,
            samplers: &mut [Option<&mut Sampler>],
        ) -> Result<Vec<Choice>, String> {
            Ok(samplers
                .iter_mut()
                .zip(logits)
                .map(|(s, l)| {
                    let mut l = l.clone();
                    match s {
                        Some(s) => {
                            let p = s.pick(&mut l).unwrap();
                            Choice {
                                token: i64::from(p.token),
                                logprobs: p.logprobs,
                            }
                        }
                        None => Choice {
                            token: l
                                .iter()
                                .enumerate()
                                .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
                                .0 as i64,
                            logprobs: None,
                        },
                    }
                })
                .collect())
        }
    }

    /// The answer `prompt` gets alone: tokens until STOP or `max`.
    fn reference(prompt: &[i64], max: u32) -> (Vec<i64>, bool) {
        let mut seq = prompt.to_vec();
        let mut out = Vec::new();
        loop {
            let t = next_token(&seq);
            if t == STOP {
                return (out, true);
            }
            out.push(t);
            if out.len() == max as usize {
                return (out, false);
            }
            seq.push(t);
        }
    }

    struct Caller {
        rx: mpsc::Receiver<Event>,
        cancelled: Arc<AtomicBool>,
        tokens: Vec<i64>,
        cached: Option<usize>,
        stopped: bool,
        failed: Option<String>,
    }

    impl Caller {
        fn drain(&mut self) {
            while let Ok(e) = self.rx.try_recv() {
                match e {
                    Event::Prefilled { cached } => {
                        assert!(self.cached.is_none() && self.tokens.is_empty());
                        self.cached = Some(cached);
                    }
                    Event::Token(c) => {
                        assert!(self.cached.is_some() && !self.stopped);
                        self.tokens.push(c.token);
                    }
                    Event::Stop => self.stopped = true,
                    Event::Failed(m) => self.failed = Some(m),
                }
            }
        }
    }

    fn submit(
        s: &mut Scheduler<Toy>,
        prompt: Vec<i64>,
        max_tokens: u32,
        scope: Option<Scope>,
    ) -> Caller {
        let (tx, rx) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        s.submit(Job {
            prompt,
            scope,
            max_tokens,
            sampler: None,
            events: tx,
            cancelled: cancelled.clone(),
        });
        Caller {
            rx,
            cancelled,
            tokens: Vec::new(),
            cached: None,
            stopped: false,
            failed: None,
        }
    }

    fn prompt(seed: i64, len: usize) -> Vec<i64> {
        (0..len as i64).map(|i| (seed * 7 + i * 3) % 40).collect()
    }

    fn run_until_idle(s: &mut Scheduler<Toy>, callers: &mut [Caller]) {
        for _ in 0..10_000 {
            if s.is_idle() {
                break;
            }
            s.tick();
            callers.iter_mut().for_each(Caller::drain);
        }
        assert!(s.is_idle());
        callers.iter_mut().for_each(Caller::drain);
    }

    #[test]
    fn rows_join_and_leave_at_token_boundaries_with_their_own_answers() {
        let mut s = Scheduler::new(Toy::default(), 3, vec![STOP], 1 << 20);
        let mut callers = Vec::new();
        let mut wanted = Vec::new();
        // Eight requests, three rows: they queue, join as rows free up,
        // and leave at their own stop token or max_tokens.
        for i in 0..8 {
            let p = prompt(i, 5 + i as usize * 3);
            let max = [3, 40, 7, 100, 1, 12, 60, 25][i as usize];
            wanted.push(reference(&p, max));
            callers.push(submit(&mut s, p, max, None));
            // Later ones arrive while others decode.
            if i % 2 == 1 {
                s.tick();
            }
        }
        run_until_idle(&mut s, &mut callers);
        for (c, (tokens, stopped)) in callers.iter().zip(&wanted) {
            assert_eq!(c.failed, None);
            assert_eq!(&c.tokens, tokens);
            assert_eq!(c.stopped, *stopped);
            assert_eq!(c.cached, Some(0));
        }
        let widths = &s.decoder.widths;
        assert!(widths.iter().all(|&w| (1..=3).contains(&w)), "{widths:?}");
        assert!(widths.contains(&3), "the batch filled: {widths:?}");
        let stats = s.counters().snapshot();
        assert_eq!(stats.steps, widths.len() as u64);
        assert_eq!(stats.widest, 3);
    }

    #[test]
    fn a_cancelled_row_leaves_and_the_others_go_on() {
        let mut s = Scheduler::new(Toy::default(), 4, vec![STOP], 1 << 20);
        // Prompts whose answers are long.
        let long: Vec<Vec<i64>> = (0..200)
            .map(|i| prompt(i, 9))
            .filter(|p| reference(p, 30).0.len() == 30)
            .take(3)
            .collect();
        assert_eq!(long.len(), 3);
        let mut callers: Vec<Caller> = long
            .iter()
            .map(|p| submit(&mut s, p.clone(), 30, None))
            .collect();
        for _ in 0..5 {
            s.tick();
        }
        callers.iter_mut().for_each(Caller::drain);
        let before = callers[1].tokens.len();
        assert!(before > 0 && before < 30);
        callers[1].cancelled.store(true, Ordering::Relaxed);
        // A caller that drops its receiver is noticed at its next token.
        let dropped = callers.remove(2);
        drop(dropped);
        s.tick();
        assert_eq!(s.rows.len(), 1, "both left at the boundary");
        run_until_idle(&mut s, &mut callers);
        assert_eq!(callers[1].tokens.len(), before, "nothing after the cancel");
        assert_eq!(callers[0].tokens, reference(&long[0], 30).0);
        // A request cancelled while it waits is never prefilled.
        let prefills = s.decoder.prefills.len();
        let c = submit(&mut s, prompt(1, 4), 5, None);
        c.cancelled.store(true, Ordering::Relaxed);
        s.tick();
        assert_eq!(s.decoder.prefills.len(), prefills);
        assert!(s.is_idle());
    }

    #[test]
    fn a_failed_step_fails_its_rows_only_and_the_model_keeps_serving() {
        let toy = Toy {
            fail_steps: vec![2],
            ..Toy::default()
        };
        let mut s = Scheduler::new(toy, 4, vec![STOP], 1 << 20);
        let long: Vec<Vec<i64>> = (0..200)
            .map(|i| prompt(i, 6))
            .filter(|p| reference(p, 20).0.len() == 20)
            .take(2)
            .collect();
        let mut callers: Vec<Caller> = long
            .iter()
            .map(|p| submit(&mut s, p.clone(), 20, None))
            .collect();
        // A prompt the decoder refuses fails alone, at its prefill.
        callers.push(submit(&mut s, vec![1, -1, 2], 5, None));
        run_until_idle(&mut s, &mut callers);
        for c in &callers[..2] {
            assert_eq!(c.failed.as_deref(), Some("device lost"));
            // One token from the prefill and two steps before the failure.
            assert_eq!(c.tokens.len(), 3, "{:?}", c.tokens);
        }
        assert_eq!(callers[2].failed.as_deref(), Some("bad prompt"));
        assert_eq!(callers[2].cached, None);
        // The next request is served.
        let mut next = vec![submit(&mut s, long[0].clone(), 20, None)];
        run_until_idle(&mut s, &mut next);
        assert_eq!(next[0].failed, None);
        assert_eq!(next[0].tokens, reference(&long[0], 20).0);
    }

    #[test]
    fn long_prompts_are_prefilled_in_chunks_between_steps_and_prefixes_reused_per_account() {
        let mut s = Scheduler::new(Toy::default(), 4, vec![STOP], 1 << 20);
        let short = (0..200)
            .map(|i| prompt(i, 6))
            .find(|p| reference(p, 50).0.len() == 50)
            .unwrap();
        let mut callers = vec![submit(&mut s, short.clone(), 50, None)];
        s.tick();
        let long = prompt(3, PREFILL_CHUNK * 2 + 10);
        callers.push(submit(&mut s, long.clone(), 4, Some([7; 32])));
        let steps = s.decoder.steps;
        s.tick();
        s.tick();
        // The running row went on while the long prompt was prefilled.
        assert_eq!(s.decoder.steps, steps + 2);
        run_until_idle(&mut s, &mut callers);
        assert_eq!(
            s.decoder.prefills,
            vec![6, PREFILL_CHUNK, PREFILL_CHUNK, 10],
            "one chunk per turn"
        );
        assert_eq!(callers[0].tokens, reference(&short, 50).0);
        assert_eq!(callers[1].tokens, reference(&long, 4).0);
        // The same account sending a longer prompt runs only the new part;
        // another account runs it all.
        let mut longer = long.clone();
        longer.extend([1, 2, 3]);
        let mut again = vec![
            submit(&mut s, longer.clone(), 4, Some([7; 32])),
            submit(&mut s, longer.clone(), 4, Some([8; 32])),
        ];
        run_until_idle(&mut s, &mut again);
        assert_eq!(again[0].cached, Some(long.len()));
        assert_eq!(again[1].cached, Some(0));
        assert_eq!(again[0].tokens, again[1].tokens);
        assert_eq!(again[0].tokens, reference(&longer, 4).0);
    }

    #[test]
    fn sampled_rows_keep_their_own_state() {
        let mut s = Scheduler::new(Toy::default(), 4, vec![STOP], 1 << 20);
        let sampling = Sampling {
            temperature_milli: 1000,
            seed: Some(5),
            logprobs: true,
            ..Sampling::greedy()
        };
        let (tx, rx) = mpsc::channel();
        s.submit(Job {
            prompt: prompt(1, 5),
            scope: None,
            max_tokens: 6,
            sampler: Some(Sampler::new(&sampling)),
            events: tx,
            cancelled: Arc::new(AtomicBool::new(false)),
        });
        let mut greedy = vec![submit(&mut s, prompt(2, 5), 6, None)];
        run_until_idle(&mut s, &mut greedy);
        let events: Vec<Event> = rx.try_iter().collect();
        assert!(matches!(events[0], Event::Prefilled { cached: 0 }));
        let tokens: Vec<&Choice> = events
            .iter()
            .filter_map(|e| match e {
                Event::Token(c) => Some(c),
                _ => None,
            })
            .collect();
        assert!(!tokens.is_empty());
        assert!(tokens.iter().all(|c| c.logprobs.is_some()));
        assert_eq!(greedy[0].tokens, reference(&prompt(2, 5), 6).0);
    }
}
