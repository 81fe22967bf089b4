//! The tch backend: TorchScript models run in-process by libtorch, on CUDA
//! when there is a device and on the CPU otherwise.
//!
//! Each model named in `[models.NAME]` is read once, checked against the
//! SHA-256 in the configuration (the digest the claims carry) and loaded
//! from those same bytes; a mismatch stops the boot. Its tokenizer is
//! checked the same way. Each model gets one thread that owns the module
//! and runs every forward pass, and requests queue there:
//!
//! * `embedding` models batch whatever is queued (up to `max_batch`
//!   sequences, sorted by length so padding stays small), which is what
//!   pays on a GPU and, for short inputs, on the CPU too. Contract (what
//!   `scripts/export-minilm.py` writes): `forward(input_ids: int64[B,T],
//!   attention_mask: int64[B,T])` returns `float[B,D]`, already pooled and
//!   normalised; padding positions have mask 0 and id 0.
//! * `chat` models decode with continuous batching ([`batch`]): up to
//!   `chat_batch` conversations share every decoding step, joining and
//!   leaving at token boundaries, each with its own key/value cache,
//!   position and sampling state; a prompt is prefilled alone, in chunks
//!   between the steps. The prompt is the conversation in the ChatML
//!   template; decoding is greedy by default (deterministic, so a client
//!   can check an answer against a reference run: the argmax is taken on
//!   the device, nothing else leaves it) and stops at `<|im_end|>` or
//!   `<|endoftext|>` or `max_tokens`. A request with sampling parameters
//!   (temperature, top_p, penalties, logit bias, logprobs) has its row's
//!   logits copied to the CPU at every step and picked by
//!   [`crate::sampling::Sampler`]. Every step runs `chat_batch` rows
//!   (padding included) and attention runs per row, so an answer is the
//!   same bits batched or alone. The decoder's contract is in [`chat`];
//!   the caller's thread turns tokens into text and calls `emit`.

pub mod batch;
pub mod chat;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;

use cocoon_attestation::bundle::ModelDigest;
use cocoon_protocol::message::ChatMessage;
use cocoon_protocol::sampling::Sampling;
use tch::{CModule, Device, Kind, Tensor};
use tracing::{error, info};

pub use batch::ChatStats;
use chat::ChatModel;
pub use chat::PREFIX_CACHE_BYTES;

use crate::backend::{BackendError, ChatOutcome, Generated, InferenceBackend};
use crate::config::{DeviceChoice, EnclaveConfig, ModelKind};
use crate::files::{read_checked, CheckedTokenizer, LoadError};
use crate::prefix_cache::Scope;

/// One forward pass worth of work from one caller.
struct Job {
    seqs: Vec<Vec<i64>>,
    reply: mpsc::SyncSender<Result<Vec<Vec<f32>>, String>>,
}

enum Engine {
    /// Forward passes run on the model's thread, batched.
    Embedding(mpsc::Sender<Job>),
    /// Decoding runs in the model's batch, on its thread; text and `emit`
    /// on the callers' threads.
    Chat(ChatModel),
}

struct Served {
    digest: [u8; 32],
    version: Option<String>,
    tokenizer_digest: [u8; 32],
    tokenizer: Arc<CheckedTokenizer>,
    max_input_tokens: u32,
    engine: Engine,
}

/// TorchScript models behind [`InferenceBackend`].
pub struct TchBackend {
    models: BTreeMap<String, Served>,
    device: Device,
}

impl std::fmt::Debug for TchBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TchBackend")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("device", &self.device)
            .finish()
    }
}

/// The device a [`DeviceChoice`] means on this machine. `gpu_evidence` says
/// whether the configuration has a `[gpu]` table, i.e. whether the enclave
/// takes GPU evidence for its session nonce at boot (and refuses to boot
/// unless the GPUs are in CC mode with developer tools off,
/// [`crate::gpu`]).
pub fn pick_device(choice: DeviceChoice, gpu_evidence: bool) -> Result<Device, LoadError> {
    decide_device(choice, tch::Cuda::is_available(), gpu_evidence)
}

/// The rule behind [`pick_device`]: a model runs on a CUDA device only when
/// the enclave takes GPU evidence for it; a GPU without evidence is never
/// used silently.
/// A model file that loaded but is not what its configuration says.
pub(crate) fn invalid_model(path: &str, message: String) -> LoadError {
    LoadError::Invalid {
        what: "model file",
        path: path.into(),
        message,
    }
}

/// TorchScript from `bytes` (already checked by the caller) on `device`,
/// in evaluation mode.
pub(crate) fn load_module(bytes: &[u8], device: Device, path: &str) -> Result<CModule, LoadError> {
    let mut module = CModule::load_data_on_device(&mut Cursor::new(bytes), device)
        .map_err(|e| invalid_model(path, e.to_string()))?;
    module.set_eval();
    Ok(module)
}

fn decide_device(
    choice: DeviceChoice,
    cuda_available: bool,
    gpu_evidence: bool,
) -> Result<Device, LoadError> {
    const NO_EVIDENCE: &str = "the configuration has no [gpu] table: the enclave runs models on a GPU only after taking \
         GPU evidence for its session nonce (CC mode on, developer tools off). Add [gpu] evidence = \"nvml\", \
         or set device = \"cpu\"";
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto if !cuda_available => Ok(Device::Cpu),
        DeviceChoice::Auto if !gpu_evidence => Err(LoadError::Device(format!(
            "device = \"auto\" and a CUDA device is present, but {NO_EVIDENCE}"
        ))),
        DeviceChoice::Auto => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda if !gpu_evidence => {
            Err(LoadError::Device(format!("device = \"cuda\", but {NO_EVIDENCE}")))
        }
        DeviceChoice::Cuda if cuda_available => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(LoadError::Device(
            "device = \"cuda\", but libtorch sees no CUDA device (driver missing, GPU not passed through, or a CPU-only libtorch)".into(),
        )),
    }
}

/// A loaded TorchScript embedding model and the device it runs on: the
/// forward pass the backend runs, also used bare by the benchmarks.
pub struct EmbeddingModel {
    module: CModule,
    device: Device,
}

impl EmbeddingModel {
    /// Load TorchScript from `bytes` (already checked by the caller) and
    /// check it answers a one-token batch with `[1, D]` floats.
    pub fn load(
        bytes: &[u8],
        device: Device,
        path: &str,
    ) -> Result<(EmbeddingModel, usize), LoadError> {
        let invalid = |message: String| invalid_model(path, message);
        let module = load_module(bytes, device, path)?;
        let model = EmbeddingModel { module, device };
        let probe = model
            .forward(&[vec![0i64, 0]])
            .map_err(|e| invalid(format!("it does not behave as an embedding model: {e}")))?;
        let dim = probe.first().map(Vec::len).unwrap_or(0);
        if dim == 0 {
            return Err(invalid("it returned an empty embedding".into()));
        }
        Ok((model, dim))
    }

    /// One forward pass over `seqs` (padded to the longest), one vector per
    /// sequence. Errors never quote the input.
    pub fn forward(&self, seqs: &[Vec<i64>]) -> Result<Vec<Vec<f32>>, String> {
        let b = seqs.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; b * t];
        let mut mask = vec![0i64; b * t];
        for (i, s) in seqs.iter().enumerate() {
            ids[i * t..i * t + s.len()].copy_from_slice(s);
            mask[i * t..i * t + s.len()].fill(1);
        }
        let shape = [b as i64, t as i64];
        let run = || -> Result<Vec<Vec<f32>>, tch::TchError> {
            let ids = Tensor::from_slice(&ids)
                .f_view(shape)?
                .f_to_device(self.device)?;
            let mask = Tensor::from_slice(&mask)
                .f_view(shape)?
                .f_to_device(self.device)?;
            let out = tch::no_grad(|| self.module.forward_ts(&[ids, mask]))?;
            let out = out
                .f_to_kind(Kind::Float)?
                .f_to_device(Device::Cpu)?
                .f_contiguous()?;
            let size = out.size();
            if size.len() != 2 || size[0] != b as i64 || size[1] <= 0 {
                return Err(tch::TchError::Shape(format!(
                    "expected output [{b}, D], got {size:?}"
                )));
            }
            let dim = size[1] as usize;
            let flat = Vec::<f32>::try_from(out.f_view([-1])?)?;
            Ok(flat.chunks_exact(dim).map(<[f32]>::to_vec).collect())
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(match e {
                tch::TchError::Shape(m) => m,
                _ => "libtorch reported an error in the forward pass".into(),
            }),
            Err(_) => Err("libtorch panicked in the forward pass".into()),
        }
    }
}

impl TchBackend {
    /// Check and load every model of `config.models` on `config.device`.
    pub fn load(config: &EnclaveConfig) -> Result<TchBackend, LoadError> {
        let device = pick_device(config.device, config.gpu.is_some())?;
        // The decoder's shapes change at every step (the cache grows): the
        // profiling executor would re-specialise the graph again and again.
        // Plain execution measured as fast on the embedding model too.
        tch::jit::set_graph_executor_optimize(false);
        let mut models = BTreeMap::new();
        for (name, m) in &config.models {
            let tokenizer = Arc::new(CheckedTokenizer::load(&m.tokenizer, &m.tokenizer_sha256)?);
            let bytes = read_checked("model file", &m.path, &m.sha256)?;
            let engine = match m.kind {
                ModelKind::Embedding => {
                    let (model, dim) = EmbeddingModel::load(&bytes, device, &m.path)?;
                    let (tx, rx) = mpsc::channel::<Job>();
                    let max_batch = config.max_batch;
                    let worker_name = name.clone();
                    std::thread::Builder::new()
                        .name(format!("tch-{name}"))
                        .spawn(move || worker(&worker_name, model, rx, max_batch))
                        .map_err(|e| {
                            LoadError::Device(format!("cannot start the model thread: {e}"))
                        })?;
                    info!(model = %name, kind = "embedding", ?device, dim, sha256 = %m.sha256, "model loaded after its digest matched the configuration");
                    Engine::Embedding(tx)
                }
                ModelKind::Chat => {
                    let chat = ChatModel::start(
                        name,
                        &bytes,
                        device,
                        &m.path,
                        &tokenizer,
                        m.system_prompt.clone(),
                        config.chat_batch,
                    )?;
                    info!(model = %name, kind = "chat", ?device, layers = chat.layers(), chat_batch = config.chat_batch, sha256 = %m.sha256, "model loaded after its digest matched the configuration");
                    Engine::Chat(chat)
                }
            };
            drop(bytes);
            models.insert(
                name.clone(),
                Served {
                    digest: m.sha256.0,
                    version: m.version.clone(),
                    tokenizer_digest: m.tokenizer_sha256.0,
                    tokenizer,
                    max_input_tokens: m.max_input_tokens,
                    engine,
                },
            );
        }
        Ok(TchBackend { models, device })
    }

    /// Where the models run.
    pub fn device(&self) -> Device {
        self.device
    }

    /// What the continuous batch of chat model `model` has done so far
    /// (`None` for a model that is not a chat model).
    pub fn chat_stats(&self, model: &str) -> Option<ChatStats> {
        match &self.models.get(model)?.engine {
            Engine::Chat(chat) => Some(chat.stats()),
            Engine::Embedding(_) => None,
        }
    }

    fn served(&self, model: &str) -> Result<&Served, BackendError> {
        self.models
            .get(model)
            .ok_or_else(|| BackendError::UnknownModel(model.into()))
    }

    /// A chat, reusing `scope`'s cached prompt prefixes when given.
    fn run_chat(
        &self,
        scope: Option<&Scope>,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
        sampling: &Sampling,
        emit: &mut dyn FnMut(Generated<'_>) -> ControlFlow<()>,
    ) -> Result<ChatOutcome, BackendError> {
        let s = self.served(model)?;
        let Engine::Chat(chat) = &s.engine else {
            return Err(BackendError::Unsupported {
                model: model.into(),
                operation: "chat",
            });
        };
        let ids = s
            .tokenizer
            .ids(&chat.prompt(messages))
            .map_err(BackendError::Failed)?;
        if ids.len() as u64 > u64::from(s.max_input_tokens) {
            return Err(BackendError::TooLong {
                tokens: ids.len() as u64,
                limit: u64::from(s.max_input_tokens),
            });
        }
        let prompt_tokens = ids.len() as u64;
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        let (completion_tokens, cached_tokens, finish) =
            chat.generate(&s.tokenizer, scope, ids, max_tokens, sampling, emit)?;
        Ok(ChatOutcome {
            prompt_tokens,
            cached_tokens,
            completion_tokens,
            finish,
        })
    }
}

/// The model's thread: take the first waiting job, add whatever else is
/// queued up to `max_batch` sequences, run them sorted by length in passes
/// of at most `max_batch`, hand each caller its vectors.
fn worker(name: &str, model: EmbeddingModel, rx: mpsc::Receiver<Job>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut queued = first.seqs.len();
        let mut jobs = vec![first];
        while queued < max_batch {
            match rx.try_recv() {
                Ok(j) => {
                    queued += j.seqs.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // (job, index in job) of every sequence, longest first.
        let mut order: Vec<(usize, usize)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.seqs.len()).map(move |i| (j, i)))
            .collect();
        order.sort_by_key(|&(j, i)| std::cmp::Reverse(jobs[j].seqs[i].len()));
        let mut results: Vec<Vec<Option<Vec<f32>>>> =
            jobs.iter().map(|j| vec![None; j.seqs.len()]).collect();
        let mut failure = None;
        for pass in order.chunks(max_batch.max(1)) {
            let seqs: Vec<Vec<i64>> = pass.iter().map(|&(j, i)| jobs[j].seqs[i].clone()).collect();
            match model.forward(&seqs) {
                Ok(vectors) => {
                    for (&(j, i), v) in pass.iter().zip(vectors) {
                        results[j][i] = Some(v);
                    }
                }
                Err(e) => {
                    error!(model = %name, error = %e, "forward pass failed");
                    failure = Some(e);
                    break;
                }
            }
        }
        for (job, result) in jobs.into_iter().zip(results) {
            let answer = match &failure {
                Some(e) => Err(e.clone()),
                None => result
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| "internal error: a sequence got no result".to_owned()),
            };
            // The caller may have gone; nothing to do then.
            let _ = job.reply.send(answer);
        }
    }
}

impl InferenceBackend for TchBackend {
    fn models(&self) -> Vec<ModelDigest> {
        self.models
            .iter()
            .map(|(name, s)| ModelDigest {
                name: name.clone(),
                sha256: s.digest,
                version: s.version.clone(),
                tokenizer_sha256: Some(s.tokenizer_digest),
            })
            .collect()
    }

    fn count_tokens(&self, model: &str, text: &str) -> Result<u64, BackendError> {
        self.served(model)?
            .tokenizer
            .count(text)
            .map_err(BackendError::Failed)
    }

    fn chat(
        &self,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
        sampling: &Sampling,
        emit: &mut dyn FnMut(Generated<'_>) -> ControlFlow<()>,
    ) -> Result<ChatOutcome, BackendError> {
        self.run_chat(None, model, messages, max_tokens, sampling, emit)
    }

    fn chat_scoped(
        &self,
        scope: &Scope,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: u32,
        sampling: &Sampling,
        emit: &mut dyn FnMut(Generated<'_>) -> ControlFlow<()>,
    ) -> Result<ChatOutcome, BackendError> {
        self.run_chat(Some(scope), model, messages, max_tokens, sampling, emit)
    }

    fn embed(&self, model: &str, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), BackendError> {
        let s = self.served(model)?;
        let Engine::Embedding(queue) = &s.engine else {
            return Err(BackendError::Unsupported {
                model: model.into(),
                operation: "embeddings",
            });
        };
        let mut seqs = Vec::with_capacity(inputs.len());
        let mut tokens = 0u64;
        for input in inputs {
            let ids = s.tokenizer.model_ids(input).map_err(BackendError::Failed)?;
            if ids.len() as u64 > u64::from(s.max_input_tokens) {
                return Err(BackendError::TooLong {
                    tokens: ids.len() as u64,
                    limit: u64::from(s.max_input_tokens),
                });
            }
            tokens += ids.len() as u64;
            seqs.push(ids.into_iter().map(i64::from).collect());
        }
        if seqs.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        queue
            .send(Job { seqs, reply: tx })
            .map_err(|_| BackendError::Failed("the model's worker thread has stopped".into()))?;
        let vectors = rx
            .recv()
            .map_err(|_| BackendError::Failed("the model's worker thread has stopped".into()))?
            .map_err(BackendError::Failed)?;
        Ok((vectors, tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_is_used_only_with_gpu_evidence() {
        use DeviceChoice::*;
        let ok = |c, cuda, ev| decide_device(c, cuda, ev).map_err(|e| e.to_string());
        assert_eq!(ok(Cpu, true, false), Ok(Device::Cpu));
        assert_eq!(ok(Cpu, true, true), Ok(Device::Cpu));
        assert_eq!(ok(Auto, false, false), Ok(Device::Cpu));
        assert_eq!(ok(Auto, false, true), Ok(Device::Cpu));
        assert_eq!(ok(Auto, true, true), Ok(Device::Cuda(0)));
        assert_eq!(ok(Cuda, true, true), Ok(Device::Cuda(0)));
        let e = ok(Auto, true, false).unwrap_err();
        assert!(
            e.contains("a CUDA device is present") && e.contains("[gpu]"),
            "{e}"
        );
        let e = ok(Cuda, true, false).unwrap_err();
        assert!(e.contains("no [gpu] table"), "{e}");
        assert!(ok(Cuda, false, true)
            .unwrap_err()
            .contains("no CUDA device"));
    }
}
