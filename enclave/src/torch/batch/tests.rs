//! The scheduler driven turn by turn with a decoder in plain Rust: joins,
//! leaves, cancellation, failures, chunked prefill, prefix reuse and
//! sampled rows.

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
