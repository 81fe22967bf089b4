//! Picking the next token from a model's logits under a request's
//! [`Sampling`]: OpenAI's logit bias, presence and frequency penalties,
//! temperature, nucleus (`top_p`) and a per-request seeded draw, plus the
//! log-probabilities the client may ask for.
//!
//! Pure Rust over a `&mut [f32]` of logits, so it is tested without
//! libtorch; the tch backend copies the last position's row out of the
//! model's output and calls [`Sampler::pick`]. Plain greedy requests
//! ([`Sampling::is_plain_greedy`]) never come here: the backend takes the
//! argmax on the device, as it always did.
//!
//! The steps, in order, for one position:
//! 1. `logit[j] += bias[j]` for every `logit_bias` entry (ids outside the
//!    vocabulary are ignored);
//! 2. `logit[j] -= count[j] * frequency_penalty + (count[j] > 0) *
//!    presence_penalty`, where `count[j]` is how often token `j` was
//!    generated so far in this answer (the prompt does not count);
//! 3. log-probabilities, when asked: the log-softmax of these adjusted
//!    logits, **before** temperature and `top_p` (so they describe the
//!    model's distribution under the request's bias and penalties, not the
//!    truncated distribution the draw used);
//! 4. temperature 0: the first index of the largest adjusted logit.
//!    Otherwise softmax(logits / T), cut to the smallest set of most likely
//!    tokens whose mass reaches `top_p` (at least one token), and one draw
//!    from it with the request's [`Draws`].

use std::collections::BTreeMap;

use cocoon_protocol::sampling::Sampling;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// A reproducible stream of uniform numbers in `[0, 1)`: draw `i` is the
/// first 53 bits of SHA-256(domain ‖ seed ‖ i). The same seed gives the
/// same draws on every machine; the draw's use of them (float sums over
/// the logits) is what can differ between devices.
#[derive(Debug, Clone)]
pub struct Draws {
    seed: u64,
    next: u64,
}

impl Draws {
    /// Draws from `seed`.
    pub fn seeded(seed: u64) -> Draws {
        Draws { seed, next: 0 }
    }

    /// Draws from a seed taken from the operating system's RNG.
    pub fn from_os() -> Draws {
        Draws::seeded(OsRng.next_u64())
    }

    /// The next number in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        let mut h = Sha256::new();
        h.update(b"cocoon-sampling-draw-v1");
        h.update(self.seed.to_le_bytes());
        h.update(self.next.to_le_bytes());
        self.next += 1;
        let d: [u8; 32] = h.finalize().into();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The log-probabilities at one position: the chosen token's and the most
/// likely alternatives' (most likely first, ties by lower id).
#[derive(Debug, Clone, PartialEq)]
pub struct Logprobs {
    /// Natural log-probability of the chosen token.
    pub chosen: f32,
    /// `(token id, log-probability)` of up to `top_logprobs` alternatives.
    pub top: Vec<(u32, f32)>,
}

/// What [`Sampler::pick`] chose.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    /// The token id (an index into the logits).
    pub token: u32,
    /// Its log-probabilities, when the request asked for them.
    pub logprobs: Option<Logprobs>,
}

/// One request's sampling state: its parameters, the counts of generated
/// tokens for the penalties, and its draws.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    presence: f32,
    frequency: f32,
    bias: Vec<(u32, f32)>,
    logprobs: bool,
    top_logprobs: usize,
    counts: BTreeMap<u32, u32>,
    draws: Draws,
}

impl Sampler {
    /// The state for one answer; the draws are seeded by the request's
    /// seed, or by the OS RNG when it has none.
    pub fn new(s: &Sampling) -> Sampler {
        Sampler {
            temperature: s.temperature(),
            top_p: s.top_p(),
            presence: s.presence_penalty(),
            frequency: s.frequency_penalty(),
            bias: s.logit_bias_f32().collect(),
            logprobs: s.logprobs,
            top_logprobs: usize::from(s.top_logprobs),
            counts: BTreeMap::new(),
            draws: s.seed.map(Draws::seeded).unwrap_or_else(Draws::from_os),
        }
    }

    /// Choose the next token from `logits` (adjusted in place by the bias
    /// and penalties) and count it as generated. `None` only for empty
    /// logits.
    pub fn pick(&mut self, logits: &mut [f32]) -> Option<Pick> {
        if logits.is_empty() {
            return None;
        }
        self.adjust(logits);
        let token = if self.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        let logprobs = self
            .logprobs
            .then(|| log_probabilities(logits, token, self.top_logprobs));
        *self.counts.entry(token as u32).or_insert(0) += 1;
        Some(Pick {
            token: token as u32,
            logprobs,
        })
    }

    /// Steps 1 and 2: bias, then penalties.
    fn adjust(&self, logits: &mut [f32]) {
        for &(id, b) in &self.bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += b;
            }
        }
        if self.presence != 0.0 || self.frequency != 0.0 {
            for (&id, &n) in &self.counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= n as f32 * self.frequency + self.presence;
                }
            }
        }
    }

    /// Step 4 with temperature > 0.
    fn draw(&mut self, logits: &[f32]) -> usize {
        let best = argmax(logits);
        let max = logits[best];
        if !max.is_finite() {
            return best;
        }
        let t = self.temperature;
        let weights: Vec<f32> = logits
            .iter()
            .map(|&l| {
                let w = ((l - max) / t).exp();
                if w.is_finite() {
                    w
                } else {
                    0.0
                }
            })
            .collect();
        // The candidates, in the order the draw walks them.
        let candidates: Vec<usize> = if self.top_p < 1.0 {
            let mut order: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0.0).collect();
            order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
            let total: f64 = order.iter().map(|&i| f64::from(weights[i])).sum();
            let want = f64::from(self.top_p) * total;
            let mut mass = 0.0;
            let mut keep = 0;
            for &i in &order {
                keep += 1;
                mass += f64::from(weights[i]);
                if mass >= want {
                    break;
                }
            }
            order.truncate(keep.max(1));
            order
        } else {
            (0..weights.len()).collect()
        };
        let total: f64 = candidates.iter().map(|&i| f64::from(weights[i])).sum();
        if !(total > 0.0 && total.is_finite()) {
            return best;
        }
        let mut target = self.draws.uniform() * total;
        for &i in &candidates {
            target -= f64::from(weights[i]);
            if target < 0.0 {
                return i;
            }
        }
        // Rounding left a sliver: the last candidate with weight.
        candidates
            .iter()
            .rev()
            .copied()
            .find(|&i| weights[i] > 0.0)
            .unwrap_or(best)
    }
}

/// The first index of the largest value (NaN never wins; all-NaN gives 0).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            best = i;
            best_value = l;
        }
    }
    best
}

/// Step 3: log-softmax at `chosen` and the `k` largest.
fn log_probabilities(logits: &[f32], chosen: usize, k: usize) -> Logprobs {
    let max = logits[argmax(logits)];
    let sum: f64 = logits
        .iter()
        .map(|&l| f64::from(l - max).exp())
        .filter(|w| w.is_finite())
        .sum();
    let lse = f64::from(max) + sum.ln();
    let lp = |i: usize| (f64::from(logits[i]) - lse) as f32;
    let mut top = Vec::new();
    if k > 0 {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        let by_value = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
        let k = k.min(order.len());
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, by_value);
            order.truncate(k);
        }
        order.sort_by(by_value);
        top = order.into_iter().map(|i| (i as u32, lp(i))).collect();
    }
    Logprobs {
        chosen: lp(chosen),
        top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature_milli: u16, seed: Option<u64>) -> Sampling {
        Sampling {
            temperature_milli,
            seed,
            ..Sampling::greedy()
        }
    }

    /// Logits of a 50-token vocabulary with a spread of values.
    fn logits() -> Vec<f32> {
        (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect()
    }

    fn run(s: &Sampling, n: usize) -> Vec<u32> {
        let mut sampler = Sampler::new(s);
        (0..n)
            .map(|_| sampler.pick(&mut logits()).unwrap().token)
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_others_differ() {
        let a = run(&sampling(1000, Some(7)), 64);
        assert_eq!(a, run(&sampling(1000, Some(7)), 64));
        assert_ne!(a, run(&sampling(1000, Some(8)), 64));
        // Unseeded answers come from the OS RNG: two of them differ.
        assert_ne!(
            run(&sampling(1000, None), 64),
            run(&sampling(1000, None), 64)
        );
        // Not one token repeated: it really samples.
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 3, "{a:?}");
        // Draws are uniform in [0, 1).
        let mut d = Draws::seeded(1);
        let xs: Vec<f64> = (0..1000).map(|_| d.uniform()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }

    #[test]
    fn temperature_zero_and_tiny_top_p_take_the_argmax() {
        let want = argmax(&logits()) as u32;
        assert!(run(&sampling(0, None), 10).iter().all(|&t| t == want));
        let tiny = Sampling {
            top_p_milli: 1,
            ..sampling(2000, None)
        };
        assert!(run(&tiny, 50).iter().all(|&t| t == want));
        let zero = Sampling {
            top_p_milli: 0,
            ..sampling(1500, None)
        };
        assert!(run(&zero, 50).iter().all(|&t| t == want));
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        assert_eq!(Sampler::new(&Sampling::greedy()).pick(&mut []), None);
    }

    #[test]
    fn a_low_temperature_concentrates_and_top_p_cuts_the_tail() {
        // Two good tokens (0 and 1), the rest far behind.
        let mut l = vec![-5.0f32; 20];
        l[0] = 2.0;
        l[1] = 1.9;
        let mut s = Sampler::new(&Sampling {
            top_p_milli: 900,
            ..sampling(1000, Some(3))
        });
        let picks: Vec<u32> = (0..300)
            .map(|_| s.pick(&mut l.clone()).unwrap().token)
            .collect();
        assert!(
            picks.iter().all(|&t| t < 2),
            "top_p 0.9 keeps tokens 0 and 1 only"
        );
        assert!(picks.contains(&0) && picks.contains(&1));
    }

    #[test]
    fn penalties_follow_openai_formula() {
        let s = Sampling {
            presence_penalty_milli: 500,
            frequency_penalty_milli: 250,
            ..Sampling::greedy()
        };
        let mut sampler = Sampler::new(&s);
        let mut l = vec![10.0f32, 9.0, 0.0];
        assert_eq!(sampler.pick(&mut l).unwrap().token, 0);
        assert_eq!(l, vec![10.0, 9.0, 0.0], "nothing generated yet");
        let mut l = vec![10.0f32, 9.0, 0.0];
        assert_eq!(sampler.pick(&mut l).unwrap().token, 0);
        // Token 0 generated once: 10 - (1 * 0.25 + 0.5).
        assert_eq!(l, vec![9.25, 9.0, 0.0]);
        let mut l = vec![10.0f32, 9.0, 0.0];
        // Token 0 generated twice: 10 - (2 * 0.25 + 0.5) = 9.0 ties with 9.0: lower id wins.
        assert_eq!(sampler.pick(&mut l).unwrap().token, 0);
        assert_eq!(l, vec![9.0, 9.0, 0.0]);
        let mut l = vec![10.0f32, 9.0, 0.0];
        // Three times: 8.75 < 9.0.
        assert_eq!(sampler.pick(&mut l).unwrap().token, 1);
        assert_eq!(l, vec![8.75, 9.0, 0.0]);
        // A negative penalty encourages repetition.
        let mut enc = Sampler::new(&Sampling {
            frequency_penalty_milli: -2000,
            ..Sampling::greedy()
        });
        let mut l = vec![1.0f32, 2.0];
        assert_eq!(enc.pick(&mut l).unwrap().token, 1);
        let mut l = vec![1.0f32, 2.0];
        enc.pick(&mut l);
        assert_eq!(l, vec![1.0, 4.0]);
    }

    #[test]
    fn logit_bias_forces_or_bans_a_token() {
        let force = Sampling {
            logit_bias: [(13, 100_000), (999, 5)].into_iter().collect(),
            ..sampling(1000, Some(1))
        };
        assert!(run(&force, 50).iter().all(|&t| t == 13));
        let best = argmax(&logits()) as u32;
        let ban = Sampling {
            logit_bias: [(best, -100_000)].into_iter().collect(),
            ..Sampling::greedy()
        };
        assert!(run(&ban, 5).iter().all(|&t| t != best));
    }

    #[test]
    fn logprobs_are_the_log_softmax_before_temperature() {
        let s = Sampling {
            logprobs: true,
            top_logprobs: 2,
            ..Sampling::greedy()
        };
        let mut l = vec![0.0f32, 2.0f32.ln(), 0.0, f32::NEG_INFINITY];
        let p = Sampler::new(&s).pick(&mut l).unwrap();
        assert_eq!(p.token, 1);
        let lp = p.logprobs.unwrap();
        // Probabilities 1/4, 2/4, 1/4, 0.
        assert!((lp.chosen - 0.5f32.ln()).abs() < 1e-6, "{lp:?}");
        assert_eq!(lp.top.len(), 2);
        assert_eq!(lp.top[0].0, 1);
        assert_eq!(lp.top[1].0, 0, "ties go to the lower id");
        assert!((lp.top[1].1 - 0.25f32.ln()).abs() < 1e-6);
        // With a temperature the values are the same (before temperature).
        let hot = Sampling {
            temperature_milli: 2000,
            seed: Some(5),
            ..s.clone()
        };
        let mut sampler = Sampler::new(&hot);
        for _ in 0..20 {
            let p = sampler
                .pick(&mut [0.0f32, 2.0f32.ln(), 0.0, f32::NEG_INFINITY])
                .unwrap();
            let lp = p.logprobs.unwrap();
            assert!(lp.chosen <= 0.0 && lp.chosen.is_finite(), "{lp:?}");
            assert_ne!(p.token, 3, "a token with probability 0 is never drawn");
            assert!((lp.top[0].1 - 0.5f32.ln()).abs() < 1e-6);
        }
        // top_logprobs larger than the vocabulary.
        let mut sampler = Sampler::new(&Sampling {
            top_logprobs: 20,
            ..s
        });
        assert_eq!(
            sampler
                .pick(&mut [1.0])
                .unwrap()
                .logprobs
                .unwrap()
                .top
                .len(),
            1
        );
    }
}
