//! Chat models of the tch backend: the TorchScript decoder
//! ([`TchDecoder`], what [`super::batch::Scheduler`] drives on the model's
//! thread) and the caller's side of a request (`ChatModel::generate`:
//! prompt template, text of each token, `emit`, `max_tokens`).
//!
//! The model contract (what `scripts/export-smollm2.py` writes):
//! * `cache_shape()` returns `[L, KV, D]`;
//! * `forward(ids: int64[1,T], past_k, past_v: float[L,KV,P,D])` returns
//!   `(logits float[1,V], keys, values)` with the cache grown by T: a
//!   prompt's prefill, alone, in chunks;
//! * `decode_batch(ids: int64[S], pos: List[int], cache_k, cache_v:
//!   List[float[L,KV,C,D]])` returns `logits float[S,V]`: one decoding
//!   step for the first `len(pos)` of S rows (the rest padding), row `r`
//!   writing its new key and value at `pos[r]` of its own cache, in place,
//!   and attending over its own positions only. S is the same at every
//!   step (the configuration's `chat_batch`): every product over the rows
//!   then has one shape, so a row's logits are the same bits whatever the
//!   other rows hold, and greedy answers are identical batched and alone.
//!
//! Errors and panics inside libtorch become the affected requests'
//! failures ([`crate::BackendError::Failed`]), never the enclave's.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use cocoon_protocol::message::{ChatMessage, Role};
use cocoon_protocol::sampling::{Logprob, Sampling, TokenLogprob, TopLogprob, MAX_TOKEN_BYTES};
use tch::{CModule, Device, IValue, Kind, Tensor};

use super::batch::{ChatStats, Choice, Counters, Decoder, Event, Job, Scheduler};
use crate::backend::{BackendError, Finish, Generated};
use crate::files::{CheckedTokenizer, LoadError};
use crate::prefix_cache::Scope;
use crate::sampling::{self, Sampler};

/// Memory the prompt prefix cache of one chat model may hold: 256 MiB
/// (SmolLM2-135M keeps 46 KiB per token, so about 5,800 tokens of
/// prompts).
pub const PREFIX_CACHE_BYTES: usize = 256 << 20;

/// Positions a new row gets beyond its prompt before it first grows (then
/// it doubles, up to what its `max_tokens` can use).
const ROW_ROOM: usize = 64;

/// Run `f` on libtorch, its errors and panics as messages that never quote
/// the request.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, tch::TchError>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(tch::TchError::Kind(m))) => Err(m),
        Ok(Err(_)) => Err(format!("libtorch reported an error in {what}")),
        Err(_) => Err(format!("libtorch panicked in {what}")),
    }
}

fn contract(message: &str) -> tch::TchError {
    tch::TchError::Kind(message.to_owned())
}

/// A sequence's key/value cache, `[L, KV, P, D]` each.
pub struct KvCache {
    k: Tensor,
    v: Tensor,
}

impl Clone for KvCache {
    /// The same tensors (no copy).
    fn clone(&self) -> KvCache {
        KvCache {
            k: self.k.shallow_clone(),
            v: self.v.shallow_clone(),
        }
    }
}

/// A decoding row's cache, `[L, KV, C, D]` with C its room.
pub struct RowCache {
    k: Tensor,
    v: Tensor,
    room: usize,
    limit: usize,
}

/// The TorchScript decoder, owned by its model's scheduler thread.
pub struct TchDecoder {
    module: CModule,
    device: Device,
    /// `[layers, kv heads, head dim]`.
    shape: [i64; 3],
}

impl TchDecoder {
    fn zeros(&self, positions: usize) -> Result<Tensor, tch::TchError> {
        let [l, kv, d] = self.shape;
        Tensor::f_zeros([l, kv, positions as i64, d], (Kind::Float, self.device))
    }

    /// The first `held` positions of `cache` in a new tensor with `room`
    /// positions.
    fn regrown(&self, cache: &Tensor, held: usize, room: usize) -> Result<Tensor, tch::TchError> {
        let bigger = self.zeros(room)?;
        bigger
            .f_narrow(2, 0, held as i64)?
            .f_copy_(&cache.f_narrow(2, 0, held as i64)?)?;
        Ok(bigger)
    }
}

impl Decoder for TchDecoder {
    type Prefix = KvCache;
    type Row = RowCache;
    type Logits = Tensor;

    fn prefix_len(&self, p: &KvCache) -> usize {
        p.k.size().get(2).copied().unwrap_or(0).max(0) as usize
    }

    fn prefix_bytes(&self, p: &KvCache) -> usize {
        (p.k.numel() + p.v.numel()) * 4
    }

    fn cut(&self, p: &KvCache, n: usize) -> Result<KvCache, String> {
        guarded("the prefix cache", || {
            Ok(KvCache {
                k: p.k.f_narrow(2, 0, n as i64)?,
                v: p.v.f_narrow(2, 0, n as i64)?,
            })
        })
    }

    fn prefill(
        &mut self,
        ids: &[i64],
        past: Option<&KvCache>,
    ) -> Result<(Tensor, KvCache), String> {
        guarded("the prefill", || {
            let t = Tensor::from_slice(ids)
                .f_view([1, ids.len() as i64])?
                .f_to_device(self.device)?;
            let past = match past {
                Some(p) => p.clone(),
                None => KvCache {
                    k: self.zeros(0)?,
                    v: self.zeros(0)?,
                },
            };
            let out = tch::no_grad(|| {
                self.module.forward_is(&[
                    IValue::Tensor(t),
                    IValue::Tensor(past.k),
                    IValue::Tensor(past.v),
                ])
            })?;
            let IValue::Tuple(mut parts) = out else {
                return Err(contract("forward did not return a tuple"));
            };
            if parts.len() != 3 {
                return Err(contract("forward did not return 3 values"));
            }
            let (IValue::Tensor(v), IValue::Tensor(k), IValue::Tensor(logits)) =
                (parts.remove(2), parts.remove(1), parts.remove(0))
            else {
                return Err(contract("forward did not return tensors"));
            };
            Ok((logits, KvCache { k, v }))
        })
    }

    fn row(&mut self, prompt: &KvCache, limit: usize) -> Result<RowCache, String> {
        let held = self.prefix_len(prompt);
        let room = limit.min(held + ROW_ROOM).max(held);
        guarded("the key/value cache", || {
            Ok(RowCache {
                k: self.regrown(&prompt.k, held, room)?,
                v: self.regrown(&prompt.v, held, room)?,
                room,
                limit,
            })
        })
    }

    fn decode(
        &mut self,
        width: usize,
        ids: &[i64],
        pos: &[usize],
        rows: &mut [&mut RowCache],
    ) -> Result<Tensor, String> {
        guarded("the decoding step", || {
            for (row, &p) in rows.iter_mut().zip(pos) {
                if p >= row.room {
                    if p >= row.limit {
                        return Err(contract("a row ran past its room"));
                    }
                    let room = (row.room * 2).clamp(p + 1, row.limit);
                    row.k = self.regrown(&row.k, p, room)?;
                    row.v = self.regrown(&row.v, p, room)?;
                    row.room = room;
                }
            }
            let ids = Tensor::from_slice(ids).f_to_device(self.device)?;
            let pos: Vec<i64> = pos.iter().map(|&p| p as i64).collect();
            let ks = rows.iter().map(|r| r.k.shallow_clone()).collect();
            let vs = rows.iter().map(|r| r.v.shallow_clone()).collect();
            let out = tch::no_grad(|| {
                self.module.method_is(
                    "decode_batch",
                    &[
                        IValue::Tensor(ids),
                        IValue::IntList(pos),
                        IValue::TensorList(ks),
                        IValue::TensorList(vs),
                    ],
                )
            })?;
            let IValue::Tensor(logits) = out else {
                return Err(contract("decode_batch did not return a tensor"));
            };
            if logits.size().first() != Some(&(width as i64)) {
                return Err(contract("decode_batch returned the wrong number of rows"));
            }
            Ok(logits)
        })
    }

    fn pick(
        &mut self,
        logits: &Tensor,
        samplers: &mut [Option<&mut Sampler>],
    ) -> Result<Vec<Choice>, String> {
        guarded("picking the next token", || {
            let n = samplers.len() as i64;
            // Greedy rows: the argmax on the device, one copy for all.
            let argmax = if samplers.iter().any(Option::is_none) {
                let top = logits
                    .f_narrow(0, 0, n)?
                    .f_argmax(-1, false)?
                    .f_to_device(Device::Cpu)?;
                Vec::<i64>::try_from(top)?
            } else {
                Vec::new()
            };
            let mut out = Vec::with_capacity(samplers.len());
            for (r, sampler) in samplers.iter_mut().enumerate() {
                let Some(sampler) = sampler else {
                    let token = *argmax.get(r).ok_or_else(|| contract("no argmax"))?;
                    out.push(Choice {
                        token,
                        logprobs: None,
                    });
                    continue;
                };
                let row = logits
                    .f_get(r as i64)?
                    .f_to_kind(Kind::Float)?
                    .f_to_device(Device::Cpu)?;
                let mut row = Vec::<f32>::try_from(row)?;
                let pick = sampler
                    .pick(&mut row)
                    .ok_or_else(|| contract("the model returned no logits"))?;
                out.push(Choice {
                    token: i64::from(pick.token),
                    logprobs: pick.logprobs,
                });
            }
            Ok(out)
        })
    }
}

/// A chat model being served: the caller's side of its scheduler thread.
pub struct ChatModel {
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    system_prompt: Option<String>,
    layers: i64,
}

/// Sets the job's flag when the caller returns, however it returns: its
/// row leaves the batch at the next token boundary.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl ChatModel {
    /// Load from checked `bytes`, check it behaves as a chat decoder (one
    /// prefill and one batched step), and start its scheduler thread
    /// decoding up to `width` conversations per step.
    pub fn start(
        name: &str,
        bytes: &[u8],
        device: Device,
        path: &str,
        tokenizer: &CheckedTokenizer,
        system_prompt: Option<String>,
        width: usize,
    ) -> Result<ChatModel, LoadError> {
        let invalid = |message: String| super::invalid_model(path, message);
        let module = super::load_module(bytes, device, path)?;
        let shape =
            match module.method_is::<IValue>("cache_shape", &[]) {
                Ok(IValue::IntList(v)) if v.len() == 3 && v.iter().all(|&x| x > 0) => {
                    [v[0], v[1], v[2]]
                }
                _ => return Err(invalid(
                    "it is not a chat decoder: no cache_shape() -> [layers, kv heads, head dim]"
                        .into(),
                )),
            };
        let stop: Vec<i64> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_id(t))
            .map(i64::from)
            .collect();
        if stop.is_empty() {
            return Err(invalid(
                "its tokenizer has no <|im_end|> or <|endoftext|> token (ChatML)".into(),
            ));
        }
        let mut decoder = TchDecoder {
            module,
            device,
            shape,
        };
        probe(&mut decoder, width).map_err(invalid)?;
        let scheduler = Scheduler::new(decoder, width, stop, PREFIX_CACHE_BYTES);
        let counters = scheduler.counters();
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("tch-chat-{name}"))
            .spawn(move || scheduler.run(queue))
            .map_err(|e| LoadError::Device(format!("cannot start the model thread: {e}")))?;
        Ok(ChatModel {
            jobs,
            counters,
            system_prompt,
            layers: shape[0],
        })
    }

    /// Its decoder's layers.
    pub fn layers(&self) -> i64 {
        self.layers
    }

    /// What its batch has done so far.
    pub fn stats(&self) -> ChatStats {
        self.counters.snapshot()
    }

    /// The conversation in the ChatML template, ending with the assistant's
    /// turn opened.
    pub fn prompt(&self, messages: &[ChatMessage]) -> String {
        let mut s = String::new();
        if let (Some(system), Some(first)) = (&self.system_prompt, messages.first()) {
            if first.role != Role::System {
                s.push_str("<|im_start|>system\n");
                s.push_str(system);
                s.push_str("<|im_end|>\n");
            }
        }
        for m in messages {
            s.push_str("<|im_start|>");
            s.push_str(m.role.as_str());
            s.push('\n');
            s.push_str(&m.content);
            s.push_str("<|im_end|>\n");
        }
        s.push_str("<|im_start|>assistant\n");
        s
    }

    /// Up to `max_tokens` tokens after `prompt_ids`, decoded in the model's
    /// batch: greedy on the device for plain greedy sampling, else by a
    /// [`Sampler`]. Every token is emitted; its text is what it completes
    /// of valid UTF-8 (empty while a character is incomplete). Returns the
    /// tokens delivered, the prompt tokens served from the prefix cache and
    /// why it ended.
    pub(super) fn generate(
        &self,
        tokenizer: &CheckedTokenizer,
        scope: Option<&Scope>,
        prompt_ids: Vec<i64>,
        max_tokens: u32,
        sampling: &Sampling,
        emit: &mut dyn FnMut(Generated<'_>) -> ControlFlow<()>,
    ) -> Result<(u64, u64, Finish), BackendError> {
        if max_tokens == 0 || prompt_ids.is_empty() {
            return Ok((0, 0, Finish::Length));
        }
        let failed = BackendError::Failed;
        let stopped = || failed("the chat model's thread has stopped".into());
        let (events, rx) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let _leave = CancelOnDrop(cancelled.clone());
        self.jobs
            .send(Job {
                prompt: prompt_ids,
                scope: scope.copied(),
                max_tokens,
                sampler: (!sampling.is_plain_greedy()).then(|| Sampler::new(sampling)),
                events,
                cancelled,
            })
            .map_err(|_| stopped())?;
        let cached = match rx.recv() {
            Ok(Event::Prefilled { cached }) => cached as u64,
            Ok(Event::Failed(e)) => return Err(failed(e)),
            Ok(_) => return Err(failed("the chat model's thread broke its protocol".into())),
            Err(_) => return Err(stopped()),
        };
        let mut generated: Vec<u32> = Vec::new();
        let mut sent = 0usize;
        let mut delivered = 0u64;
        loop {
            let choice = match rx.recv() {
                Ok(Event::Token(c)) => c,
                Ok(Event::Stop) => return Ok((delivered, cached, Finish::Stop)),
                Ok(Event::Failed(e)) => return Err(failed(e)),
                Ok(Event::Prefilled { .. }) => {
                    return Err(failed("the chat model's thread broke its protocol".into()))
                }
                Err(_) => return Err(stopped()),
            };
            let Ok(id) = u32::try_from(choice.token) else {
                return Err(failed("the model produced an invalid token id".into()));
            };
            generated.push(id);
            let text = tokenizer.decode(&generated).map_err(failed)?;
            let logprob = choice.logprobs.map(|lp| token_logprob(tokenizer, id, lp));
            // A token may end inside a UTF-8 sequence: wait for the rest.
            let mut piece = "";
            if !text.ends_with('\u{FFFD}') {
                if let Some(p) = text.get(sent..) {
                    piece = p;
                    sent = text.len();
                }
            }
            if emit(Generated {
                text: piece,
                logprob,
            })
            .is_break()
            {
                return Ok((delivered, cached, Finish::Stop));
            }
            delivered += 1;
            if delivered == u64::from(max_tokens) {
                return Ok((delivered, cached, Finish::Length));
            }
        }
    }
}

/// One prefill and one batched step with `width` rows, checked for shape.
fn probe(decoder: &mut TchDecoder, width: usize) -> Result<(), String> {
    let (logits, prefix) = decoder
        .prefill(&[0], None)
        .map_err(|e| format!("it does not behave as a chat decoder: {e}"))?;
    let vocab = logits.size().last().copied().unwrap_or(0);
    let mut row = decoder.row(&prefix, 2)?;
    let mut ids = vec![0i64; width];
    ids[0] = 1;
    let out = decoder
        .decode(width, &ids, &[1], &mut [&mut row])
        .map_err(|e| {
            format!(
            "it has no working decode_batch(ids, pos, cache_k, cache_v) for continuous batching \
             (an export older than scripts/export-smollm2.py's reproducible-v3?): {e}"
        )
        })?;
    if out.size() != [width as i64, vocab] {
        return Err(format!(
            "decode_batch returned logits of shape {:?}, expected [{width}, {vocab}]",
            out.size()
        ));
    }
    Ok(())
}

/// A token's bytes as the tokenizer decodes it alone, within the wire's limit.
fn token_bytes(tokenizer: &CheckedTokenizer, id: u32) -> Vec<u8> {
    let mut b = tokenizer.decode(&[id]).unwrap_or_default().into_bytes();
    b.truncate(MAX_TOKEN_BYTES);
    b
}

fn token_logprob(tokenizer: &CheckedTokenizer, id: u32, lp: sampling::Logprobs) -> TokenLogprob {
    TokenLogprob {
        chosen: TopLogprob {
            token: token_bytes(tokenizer, id),
            logprob: Logprob::from_f32(lp.chosen),
        },
        top: lp
            .top
            .into_iter()
            .map(|(t, l)| TopLogprob {
                token: token_bytes(tokenizer, t),
                logprob: Logprob::from_f32(l),
            })
            .collect(),
    }
}
