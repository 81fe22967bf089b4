//! The response stream: the enclave's answer as a sequence of AEAD chunks
//! that only the client can read and that the host can neither reorder,
//! replay, drop, cut short nor extend unnoticed.
//!
//! Owns the response key schedule, the chunk wire form and the state
//! machines on both ends ([`ResponseSealer`] in the enclave,
//! [`ResponseOpener`] in the client). It does not decide what the chunks
//! contain (tokens, an error, the receipt): that is the enclave's and the
//! client's business.
//!
//! # Key schedule
//!
//! As Oblivious HTTP (RFC 9458 §4.4) does, the response keys come from the
//! request's HPKE context, mixed with a fresh random `response_nonce` that
//! the enclave picks and sends in the first chunk:
//!
//! ```text
//! response_nonce  = random(32)                                  (enclave; max(Nk, Nn))
//! key ‖ base_nonce = HPKE.Export("cocoon-response-v1" ‖ response_nonce, Nk + Nn = 44)
//! key             = first 32 bytes   (AES-256-GCM)
//! base_nonce      = last 12 bytes
//! ```
//!
//! OHTTP exports a secret and runs HKDF over it with `enc ‖ response_nonce`
//! as salt; here the response nonce goes into the exporter context instead,
//! which is one labelled HKDF-Expand of the context's exporter secret (RFC
//! 9180 §5.3) and has the same property: only the two holders of the HPKE
//! context can compute the keys, and every response gets fresh ones. The
//! fresh nonce matters: a host that replays a sealed request makes the
//! enclave answer it again, and without it the second answer would reuse
//! the first one's AES-GCM keys and nonces.
//!
//! # Chunks
//!
//! ```text
//! offset  size  field
//! 0       8     seq, u64 big-endian: 0, 1, 2, ...
//! 8       1     flags: bit 0 = last chunk; other bits must be 0
//! 9       32    response_nonce (in chunk 0 only)
//! ...     n+16  AES-256-GCM(key, nonce, aad, data) with the tag appended
//!
//! nonce = base_nonce XOR (0^4 ‖ seq as u64 big-endian)     (RFC 9180 §5.2)
//! aad   = request_id (32) ‖ seq (8, big-endian) ‖ flags (1)
//! ```
//!
//! The request id in the AAD ties every chunk to one request; the sequence
//! number (in nonce and AAD) fixes its position; the flags byte (in the AAD)
//! marks the end. The opener expects exactly 0, 1, 2, ... and one last
//! chunk: an earlier number is a replay, a later one means chunks were
//! dropped or reordered, anything after the last chunk is refused, and a
//! stream that ends without one is truncated ([`ResponseOpener::finish`]).
//! The sequence number is on the wire, in clear, only so those errors can
//! say what happened; it is authenticated through nonce and AAD.
//!
//! After any error the opener refuses everything: a response is accepted
//! whole or not at all.

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroize;

use crate::chunk_aead::{ChunkKey, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::seal::{ClientSession, EnclaveSession};
use crate::RequestId;

/// Exporter label of the response keys.
pub const RESPONSE_EXPORT_LABEL: &[u8] = b"cocoon-response-v1";
/// Length of the enclave's response nonce (max(Nk, Nn) of AES-256-GCM).
pub const RESPONSE_NONCE_LEN: usize = 32;
/// Fixed header of every chunk: seq (8) + flags (1).
pub const CHUNK_HEADER_LEN: usize = 9;
/// AEAD tag length.
pub const CHUNK_TAG_LEN: usize = TAG_LEN;
/// Most plaintext bytes in one chunk, so that every chunk fits in one frame.
pub const MAX_CHUNK_DATA: usize =
    crate::frame::MAX_PAYLOAD - CHUNK_HEADER_LEN - RESPONSE_NONCE_LEN - CHUNK_TAG_LEN;
/// Most bytes of one chunk on the wire (= one frame's payload).
pub const MAX_CHUNK_WIRE: usize =
    CHUNK_HEADER_LEN + RESPONSE_NONCE_LEN + MAX_CHUNK_DATA + CHUNK_TAG_LEN;

const FLAG_LAST: u8 = 1;
const AAD_LEN: usize = 32 + 8 + 1;

/// Why a chunk cannot be sealed or opened, or a stream is incomplete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Shorter than a chunk can be, or unknown flag bits.
    #[error("malformed response chunk: {0}")]
    Malformed(&'static str),
    /// A chunk whose sequence number was already accepted.
    #[error("response chunk {got} replayed (expected chunk {expected})")]
    Replayed {
        /// The number the next chunk must have.
        expected: u64,
        /// The number it had.
        got: u64,
    },
    /// A chunk from further ahead: chunks in between were dropped or
    /// reordered.
    #[error("response chunks {expected}..{got} missing (dropped or reordered)")]
    Gap {
        /// The number the next chunk must have.
        expected: u64,
        /// The number it had.
        got: u64,
    },
    /// A chunk after the last one.
    #[error("response chunk after the last one")]
    AfterLast,
    /// The stream ended before its last chunk.
    #[error("response truncated: ended after {received} chunks without a last chunk")]
    Truncated {
        /// Chunks accepted.
        received: u64,
    },
    /// The chunk does not authenticate: tampered, or for another request.
    #[error("response chunk {seq} does not authenticate (tampered, or not for this request)")]
    Authentication {
        /// Its sequence number.
        seq: u64,
    },
    /// The sealer was given more data than one chunk may carry.
    #[error("chunk data is {got} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// Given size.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// The sealer already sealed its last chunk (or ran out of numbers).
    #[error("response stream already finished")]
    Finished,
    /// An earlier chunk failed; the stream is refused as a whole.
    #[error("response stream already failed: {0}")]
    Failed(Box<StreamError>),
    /// Key derivation or the AEAD refused its input (never expected).
    #[error("response key derivation failed")]
    Crypto,
}

/// One opened chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Its position in the stream.
    pub seq: u64,
    /// Whether it is the last chunk.
    pub last: bool,
    /// The plaintext.
    pub data: Vec<u8>,
}

/// The key and base nonce of one response.
struct ResponseKeys {
    key: ChunkKey,
    base_nonce: [u8; NONCE_LEN],
}

impl ResponseKeys {
    fn derive(
        export: impl FnOnce(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
        response_nonce: &[u8; RESPONSE_NONCE_LEN],
    ) -> Result<ResponseKeys, StreamError> {
        let mut ctx = [0u8; RESPONSE_EXPORT_LABEL.len() + RESPONSE_NONCE_LEN];
        ctx[..RESPONSE_EXPORT_LABEL.len()].copy_from_slice(RESPONSE_EXPORT_LABEL);
        ctx[RESPONSE_EXPORT_LABEL.len()..].copy_from_slice(response_nonce);
        let mut okm = [0u8; KEY_LEN + NONCE_LEN];
        export(&ctx, &mut okm).map_err(|_| StreamError::Crypto)?;
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&okm[..KEY_LEN]);
        let mut base_nonce = [0u8; NONCE_LEN];
        base_nonce.copy_from_slice(&okm[KEY_LEN..]);
        let chunk_key = ChunkKey::new(&key).map_err(|_| StreamError::Crypto);
        okm.zeroize();
        key.zeroize();
        Ok(ResponseKeys {
            key: chunk_key?,
            base_nonce,
        })
    }

    fn nonce(&self, seq: u64) -> [u8; NONCE_LEN] {
        let mut n = self.base_nonce;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

impl Drop for ResponseKeys {
    fn drop(&mut self) {
        self.base_nonce.zeroize();
    }
}

fn aad(request_id: &RequestId, seq: u64, flags: u8) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[..32].copy_from_slice(&request_id.0);
    a[32..40].copy_from_slice(&seq.to_be_bytes());
    a[40] = flags;
    a
}

/// The enclave's end: seals the response to one request, chunk by chunk.
pub struct ResponseSealer {
    request_id: RequestId,
    keys: ResponseKeys,
    response_nonce: [u8; RESPONSE_NONCE_LEN],
    next_seq: u64,
    finished: bool,
}

impl std::fmt::Debug for ResponseSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseSealer")
            .field("request_id", &self.request_id)
            .field("next_seq", &self.next_seq)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl EnclaveSession {
    /// Start the response: pick the response nonce and derive its keys.
    pub fn response_sealer(
        self,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<ResponseSealer, StreamError> {
        ResponseSealer::new(self, rng)
    }
}

impl ResponseSealer {
    /// Start the response to `session`'s request.
    pub fn new(
        session: EnclaveSession,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<ResponseSealer, StreamError> {
        let mut response_nonce = [0u8; RESPONSE_NONCE_LEN];
        rng.fill_bytes(&mut response_nonce);
        let keys = ResponseKeys::derive(|c, out| session.ctx.export(c, out), &response_nonce)?;
        Ok(ResponseSealer {
            request_id: session.request_id,
            keys,
            response_nonce,
            next_seq: 0,
            finished: false,
        })
    }

    /// The request being answered.
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }

    /// Seal the next chunk; `last` closes the stream. Returns its wire bytes.
    pub fn seal_chunk(&mut self, data: &[u8], last: bool) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::new();
        self.seal_chunk_into(data, last, &mut out)?;
        Ok(out)
    }

    /// Like [`seal_chunk`](ResponseSealer::seal_chunk), writing into `out`
    /// (cleared first) so a caller can reuse one buffer.
    pub fn seal_chunk_into(
        &mut self,
        data: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        out.clear();
        if data.len() > MAX_CHUNK_DATA {
            return Err(StreamError::TooLarge {
                got: data.len(),
                limit: MAX_CHUNK_DATA,
            });
        }
        let headroom = self.headroom();
        out.reserve(headroom + data.len() + TAG_LEN);
        out.resize(headroom, 0);
        out.extend_from_slice(data);
        self.seal_in_place(out, last)
    }

    /// The length of the next chunk's clear header: what a caller of
    /// [`seal_in_place`](ResponseSealer::seal_in_place) leaves free in
    /// front of the data (the first chunk carries the response nonce too).
    pub fn headroom(&self) -> usize {
        if self.next_seq == 0 {
            CHUNK_HEADER_LEN + RESPONSE_NONCE_LEN
        } else {
            CHUNK_HEADER_LEN
        }
    }

    /// Seal the next chunk where it lies, with no copy: `buf` holds
    /// [`headroom`](ResponseSealer::headroom) bytes (any value) and then the
    /// chunk's data, as a caller that encoded its data after reserving the
    /// header writes it. On return `buf` is the chunk's wire bytes (header,
    /// ciphertext, tag); on error it is cleared and nothing was sealed.
    pub fn seal_in_place(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), StreamError> {
        self.seal_in_place_at(buf, 0, last)
    }

    /// Like [`seal_in_place`](ResponseSealer::seal_in_place) for a chunk
    /// that starts at `start` in `buf` (behind a frame header's room, say):
    /// `buf[start..]` is header room and data; the bytes before `start` are
    /// left alone. On error `buf` is cut back to `start`.
    pub fn seal_in_place_at(
        &mut self,
        buf: &mut Vec<u8>,
        start: usize,
        last: bool,
    ) -> Result<(), StreamError> {
        let headroom = self.headroom();
        let sealed = self.seal_prefixed(buf, start, headroom, last);
        if sealed.is_err() {
            buf.truncate(start);
        }
        sealed
    }

    fn seal_prefixed(
        &mut self,
        buf: &mut Vec<u8>,
        start: usize,
        headroom: usize,
        last: bool,
    ) -> Result<(), StreamError> {
        if self.finished {
            return Err(StreamError::Finished);
        }
        let Some(len) = buf
            .len()
            .checked_sub(start)
            .and_then(|n| n.checked_sub(headroom))
        else {
            return Err(StreamError::Malformed(
                "seal_in_place: the buffer is shorter than the chunk header",
            ));
        };
        if len > MAX_CHUNK_DATA {
            return Err(StreamError::TooLarge {
                got: len,
                limit: MAX_CHUNK_DATA,
            });
        }
        let seq = self.next_seq;
        // The last number is kept back so that `next_seq` cannot wrap.
        let Some(next) = seq.checked_add(1) else {
            self.finished = true;
            return Err(StreamError::Finished);
        };
        let flags = if last { FLAG_LAST } else { 0 };
        let header = &mut buf[start..start + headroom];
        header[..8].copy_from_slice(&seq.to_be_bytes());
        header[8] = flags;
        if seq == 0 {
            header[CHUNK_HEADER_LEN..].copy_from_slice(&self.response_nonce);
        }
        buf.reserve(TAG_LEN);
        let aad = aad(&self.request_id, seq, flags);
        if self
            .keys
            .key
            .seal_append_tag(self.keys.nonce(seq), &aad, buf, start + headroom)
            .is_err()
        {
            return Err(StreamError::Crypto);
        }
        self.next_seq = next;
        self.finished = last;
        Ok(())
    }

    /// Chunks sealed so far.
    pub fn sealed(&self) -> u64 {
        self.next_seq
    }

    /// Whether the last chunk has been sealed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

enum OpenerState {
    /// Before chunk 0: the HPKE context, to derive keys from its nonce.
    AwaitingFirst(Box<ClientSession>),
    Open(Box<ResponseKeys>),
    Finished,
    Failed(StreamError),
}

/// The client's end: opens and checks the response to one request.
pub struct ResponseOpener {
    request_id: RequestId,
    state: OpenerState,
    next_seq: u64,
}

impl std::fmt::Debug for ResponseOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            OpenerState::AwaitingFirst(_) => "awaiting first chunk",
            OpenerState::Open(_) => "open",
            OpenerState::Finished => "finished",
            OpenerState::Failed(_) => "failed",
        };
        f.debug_struct("ResponseOpener")
            .field("request_id", &self.request_id)
            .field("next_seq", &self.next_seq)
            .field("state", &state)
            .finish()
    }
}

impl ClientSession {
    /// Get ready to read the response to this request.
    pub fn response_opener(self) -> ResponseOpener {
        ResponseOpener::new(self)
    }
}

impl ResponseOpener {
    /// Get ready to read the response to `session`'s request.
    pub fn new(session: ClientSession) -> ResponseOpener {
        ResponseOpener {
            request_id: session.request_id,
            state: OpenerState::AwaitingFirst(Box::new(session)),
            next_seq: 0,
        }
    }

    /// The request whose response this is.
    pub fn request_id(&self) -> RequestId {
        self.request_id
    }

    /// Open the next chunk. Any error fails the whole stream.
    pub fn open_chunk(&mut self, bytes: &[u8]) -> Result<Chunk, StreamError> {
        let mut buf = bytes.to_vec();
        let (seq, last, start, len) = self.open_in_place(&mut buf)?;
        buf.truncate(start + len);
        buf.drain(..start);
        Ok(Chunk {
            seq,
            last,
            data: buf,
        })
    }

    /// Open the next chunk in place: on success `bytes` holds the plaintext
    /// (no second buffer). Returns its sequence number and last flag.
    pub fn open_chunk_in_place(&mut self, bytes: &mut Vec<u8>) -> Result<(u64, bool), StreamError> {
        let (seq, last, start, len) = self.open_in_place(bytes)?;
        bytes.truncate(start + len);
        bytes.drain(..start);
        Ok((seq, last))
    }

    fn open_in_place(
        &mut self,
        bytes: &mut [u8],
    ) -> Result<(u64, bool, usize, usize), StreamError> {
        match self.try_open(bytes) {
            Ok(v) => Ok(v),
            Err(e) => {
                if !matches!(self.state, OpenerState::Failed(_)) {
                    self.state = OpenerState::Failed(e.clone());
                }
                Err(e)
            }
        }
    }

    fn try_open(&mut self, bytes: &mut [u8]) -> Result<(u64, bool, usize, usize), StreamError> {
        match &self.state {
            OpenerState::Failed(e) => return Err(StreamError::Failed(Box::new(e.clone()))),
            OpenerState::Finished => return Err(StreamError::AfterLast),
            _ => {}
        }
        let (header, _) = bytes
            .split_first_chunk::<CHUNK_HEADER_LEN>()
            .ok_or(StreamError::Malformed("shorter than the chunk header"))?;
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&header[..8]);
        let seq = u64::from_be_bytes(seq_bytes);
        let flags = header[8];
        if flags & !FLAG_LAST != 0 {
            return Err(StreamError::Malformed("unknown flag bits"));
        }
        if seq < self.next_seq {
            return Err(StreamError::Replayed {
                expected: self.next_seq,
                got: seq,
            });
        }
        if seq > self.next_seq {
            return Err(StreamError::Gap {
                expected: self.next_seq,
                got: seq,
            });
        }
        let mut start = CHUNK_HEADER_LEN;
        if let OpenerState::AwaitingFirst(session) = &self.state {
            let nonce: &[u8; RESPONSE_NONCE_LEN] = bytes
                .get(CHUNK_HEADER_LEN..)
                .and_then(|b| b.first_chunk())
                .ok_or(StreamError::Malformed(
                    "first chunk shorter than its response nonce",
                ))?;
            let keys = ResponseKeys::derive(|c, out| session.ctx.export(c, out), nonce)?;
            self.state = OpenerState::Open(Box::new(keys));
            start += RESPONSE_NONCE_LEN;
        }
        let OpenerState::Open(keys) = &self.state else {
            return Err(StreamError::Crypto);
        };
        let body = bytes
            .get_mut(start..)
            .filter(|b| b.len() >= TAG_LEN)
            .ok_or(StreamError::Malformed("shorter than the AEAD tag"))?;
        let aad = aad(&self.request_id, seq, flags);
        let len = keys
            .key
            .open_in_place(keys.nonce(seq), &aad, body)
            .map_err(|_| StreamError::Authentication { seq })?;
        let last = flags & FLAG_LAST != 0;
        // `seq` < u64::MAX here: the sealer never uses the last number.
        self.next_seq = seq.saturating_add(1);
        if last {
            self.state = OpenerState::Finished;
        }
        Ok((seq, last, start, len))
    }

    /// Chunks accepted so far.
    pub fn received(&self) -> u64 {
        self.next_seq
    }

    /// Whether the last chunk has been accepted.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, OpenerState::Finished)
    }

    /// The stream ended: an error unless its last chunk was accepted.
    pub fn finish(&self) -> Result<(), StreamError> {
        match &self.state {
            OpenerState::Finished => Ok(()),
            OpenerState::Failed(e) => Err(StreamError::Failed(Box::new(e.clone()))),
            _ => Err(StreamError::Truncated {
                received: self.next_seq,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::tests::{meta, rng};
    use crate::seal::{open_request, seal_request, EvidenceDigest, HpkeSecretKey};

    fn pair() -> (ResponseSealer, ResponseOpener) {
        let mut rng = rng();
        let sk = HpkeSecretKey::generate(&mut rng);
        let d = EvidenceDigest::of_claims(b"claims");
        let (req, client) = seal_request(sk.public_key(), &d, &meta(), b"q", &mut rng).unwrap();
        let (_, _, enclave) = open_request(&sk, &d, &req).unwrap();
        (
            enclave.response_sealer(&mut rng).unwrap(),
            client.response_opener(),
        )
    }

    fn chunks(s: &mut ResponseSealer, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                s.seal_chunk(format!("chunk {i}").as_bytes(), i + 1 == n)
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let (mut s, mut o) = pair();
        assert_eq!(s.request_id(), o.request_id());
        let c = chunks(&mut s, 4);
        assert!(s.is_finished());
        assert_eq!(s.seal_chunk(b"more", true), Err(StreamError::Finished));
        assert_eq!(
            c[0].len(),
            CHUNK_HEADER_LEN + RESPONSE_NONCE_LEN + 7 + TAG_LEN
        );
        assert_eq!(c[1].len(), CHUNK_HEADER_LEN + 7 + TAG_LEN);
        for (i, bytes) in c.iter().enumerate() {
            let chunk = o.open_chunk(bytes).unwrap();
            assert_eq!(chunk.seq, i as u64);
            assert_eq!(chunk.last, i == 3);
            assert_eq!(chunk.data, format!("chunk {i}").as_bytes());
        }
        o.finish().unwrap();
        assert_eq!(o.received(), 4);
        assert_eq!(o.open_chunk(&c[3]), Err(StreamError::AfterLast));
    }

    #[test]
    fn sealing_where_the_data_lies_gives_the_same_wire_bytes() {
        // Two sealers with the same keys and response nonce: one copies,
        // one seals in place; the wire bytes must be identical.
        let mut rng = rng();
        let sk = HpkeSecretKey::generate(&mut rng);
        let d = EvidenceDigest::of_claims(b"claims");
        let (req, client) = seal_request(sk.public_key(), &d, &meta(), b"q", &mut rng).unwrap();
        let (_, _, enclave) = open_request(&sk, &d, &req).unwrap();
        let mut copying = enclave.response_sealer(&mut rng).unwrap();
        let (_, _, enclave) = open_request(&sk, &d, &req).unwrap();
        let mut in_place = ResponseSealer::new(enclave, &mut rng).unwrap();
        // Same response nonce: derive the second from the first's.
        in_place.response_nonce = copying.response_nonce;
        in_place.keys = ResponseKeys::derive(
            |c, out| {
                let (_, _, e) = open_request(&sk, &d, &req).unwrap();
                e.ctx.export(c, out)
            },
            &copying.response_nonce,
        )
        .unwrap();
        let mut opener = client.response_opener();
        for (i, data) in [&b"first"[..], b"", &[7u8; 300][..]].iter().enumerate() {
            let last = i == 2;
            let want = copying.seal_chunk(data, last).unwrap();
            // Chunk 1 lies behind 9 bytes that are not its own (a frame
            // header's room): they are left alone.
            let start = if i == 1 { 9 } else { 0 };
            let mut buf = vec![0xaa; start];
            buf.resize(start + in_place.headroom(), 0xee);
            buf.extend_from_slice(data);
            in_place.seal_in_place_at(&mut buf, start, last).unwrap();
            assert_eq!(buf[..start], vec![0xaa; start][..]);
            assert_eq!(buf[start..], want[..], "chunk {i}");
            assert_eq!(opener.open_chunk(&buf[start..]).unwrap().data, *data);
        }
        // Too short for its header: refused, cleared, nothing sealed.
        let (mut s, _) = pair();
        let mut short = vec![0; s.headroom() - 1];
        assert!(matches!(
            s.seal_in_place(&mut short, false),
            Err(StreamError::Malformed(_))
        ));
        assert!(short.is_empty());
        assert_eq!(s.sealed(), 0);
    }

    #[test]
    fn empty_and_in_place() {
        let (mut s, mut o) = pair();
        let mut buf = Vec::new();
        s.seal_chunk_into(b"", false, &mut buf).unwrap();
        let (seq, last) = o.open_chunk_in_place(&mut buf).unwrap();
        assert_eq!((seq, last, buf.len()), (0, false, 0));
        s.seal_chunk_into(&[9; 100], true, &mut buf).unwrap();
        assert_eq!(o.open_chunk_in_place(&mut buf).unwrap(), (1, true));
        assert_eq!(buf, [9; 100]);
        o.finish().unwrap();
    }

    #[test]
    fn every_bit_flip_is_caught() {
        for k in 0..2 {
            let (mut s, _) = pair();
            let len = chunks(&mut s, 2)[k].len();
            for bit in 0..len * 8 {
                let (mut s, mut o) = pair();
                let c = chunks(&mut s, 2);
                for earlier in &c[..k] {
                    o.open_chunk(earlier).unwrap();
                }
                let mut bad = c[k].clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(o.open_chunk(&bad).is_err(), "chunk {k} bit {bit}");
                // Failed for good: not even the genuine chunk is taken now.
                assert!(matches!(o.open_chunk(&c[k]), Err(StreamError::Failed(_))));
                assert!(o.finish().is_err());
            }
        }
    }

    #[test]
    fn flipped_last_flag_is_caught() {
        let (mut s, mut o) = pair();
        let c = chunks(&mut s, 2);
        o.open_chunk(&c[0]).unwrap();
        let mut not_last = c[1].clone();
        not_last[8] = 0;
        assert_eq!(
            o.open_chunk(&not_last),
            Err(StreamError::Authentication { seq: 1 })
        );
        let (mut s, mut o) = pair();
        let c = chunks(&mut s, 3);
        let mut early_end = c[0].clone();
        early_end[8] = FLAG_LAST;
        assert_eq!(
            o.open_chunk(&early_end),
            Err(StreamError::Authentication { seq: 0 })
        );
        let mut unknown = c[0].clone();
        unknown[8] = 2;
        assert!(matches!(
            o.open_chunk(&unknown),
            Err(StreamError::Failed(_))
        ));
        let (_, mut o) = pair();
        assert_eq!(
            o.open_chunk(&unknown),
            Err(StreamError::Malformed("unknown flag bits"))
        );
    }

    #[test]
    fn replay_reorder_drop_truncate() {
        // Replayed chunk.
        let (mut s, mut o) = pair();
        let c = chunks(&mut s, 3);
        o.open_chunk(&c[0]).unwrap();
        o.open_chunk(&c[1]).unwrap();
        assert_eq!(
            o.open_chunk(&c[1]),
            Err(StreamError::Replayed {
                expected: 2,
                got: 1
            })
        );
        assert!(o.finish().is_err());

        // Reordered.
        let (mut s, mut o) = pair();
        let c = chunks(&mut s, 3);
        o.open_chunk(&c[0]).unwrap();
        assert_eq!(
            o.open_chunk(&c[2]),
            Err(StreamError::Gap {
                expected: 1,
                got: 2
            })
        );

        // Dropped first chunk.
        let (mut s, mut o) = pair();
        let c = chunks(&mut s, 3);
        assert_eq!(
            o.open_chunk(&c[1]),
            Err(StreamError::Gap {
                expected: 0,
                got: 1
            })
        );

        // Dropped middle chunk, stream otherwise complete.
        let (mut s, mut o) = pair();
        let c = chunks(&mut s, 3);
        o.open_chunk(&c[0]).unwrap();
        assert!(o.open_chunk(&c[2]).is_err());
        assert!(o.finish().is_err());

        // Truncated: everything but the last chunk, or nothing at all.
        let (mut s, mut o) = pair();
        let c = chunks(&mut s, 3);
        o.open_chunk(&c[0]).unwrap();
        o.open_chunk(&c[1]).unwrap();
        assert_eq!(o.finish(), Err(StreamError::Truncated { received: 2 }));
        let (_, o) = pair();
        assert_eq!(o.finish(), Err(StreamError::Truncated { received: 0 }));

        // Cut inside a chunk.
        for cut in 0..c[0].len() {
            let (mut s, mut o) = pair();
            let c = chunks(&mut s, 1);
            assert!(o.open_chunk(&c[0][..cut]).is_err(), "cut at {cut}");
        }

        // A chunk after the last one (a forged seq 3 is refused as well).
        let (mut s, mut o) = pair();
        let c = chunks(&mut s, 3);
        for chunk in &c {
            o.open_chunk(chunk).unwrap();
        }
        let mut extra = c[2].clone();
        extra[..8].copy_from_slice(&3u64.to_be_bytes());
        assert_eq!(o.open_chunk(&extra), Err(StreamError::AfterLast));
        // Extra chunks are an attack on the stream: it is refused whole.
        assert_eq!(
            o.finish(),
            Err(StreamError::Failed(Box::new(StreamError::AfterLast)))
        );
    }

    #[test]
    fn chunks_of_another_request_are_refused() {
        let (mut s1, _) = pair();
        let (_, mut o2) = pair();
        let c = chunks(&mut s1, 2);
        assert_eq!(
            o2.open_chunk(&c[0]),
            Err(StreamError::Authentication { seq: 0 })
        );
    }

    #[test]
    fn replayed_request_gets_fresh_response_keys() {
        let mut rng = rng();
        let sk = HpkeSecretKey::generate(&mut rng);
        let d = EvidenceDigest::of_claims(b"claims");
        let (req, client) = seal_request(sk.public_key(), &d, &meta(), b"q", &mut rng).unwrap();
        let (_, _, e1) = open_request(&sk, &d, &req).unwrap();
        let (_, _, e2) = open_request(&sk, &d, &req).unwrap();
        assert_eq!(e1.request_id(), e2.request_id());
        let mut s1 = e1.response_sealer(&mut rng).unwrap();
        let mut s2 = e2.response_sealer(&mut rng).unwrap();
        let a = s1.seal_chunk(&[0; 64], true).unwrap();
        let b = s2.seal_chunk(&[0; 64], true).unwrap();
        // Same plaintext, same seq: different ciphertext, because the keys differ.
        assert_ne!(
            a[CHUNK_HEADER_LEN + RESPONSE_NONCE_LEN..],
            b[CHUNK_HEADER_LEN + RESPONSE_NONCE_LEN..]
        );
        // The client accepts either (both are genuine answers to its request).
        let mut o = client.response_opener();
        assert_eq!(o.open_chunk(&b).unwrap().data, [0; 64]);
    }

    #[test]
    fn sealer_limits() {
        let (mut s, mut o) = pair();
        let too_big = vec![0u8; MAX_CHUNK_DATA + 1];
        assert!(matches!(
            s.seal_chunk(&too_big, false),
            Err(StreamError::TooLarge { .. })
        ));
        let most = vec![1u8; MAX_CHUNK_DATA];
        let c = s.seal_chunk(&most, true).unwrap();
        assert_eq!(c.len(), MAX_CHUNK_WIRE);
        assert!(c.len() <= crate::frame::MAX_PAYLOAD);
        assert_eq!(o.open_chunk(&c).unwrap().data.len(), MAX_CHUNK_DATA);
        assert_eq!(s.sealed(), 1);
        assert!(format!("{s:?}{o:?}").contains("finished"));
    }

    #[test]
    fn nonce_is_base_xor_seq() {
        let (s, _) = pair();
        let base = s.keys.base_nonce;
        assert_eq!(s.keys.nonce(0), base);
        let n = s.keys.nonce(0x0102_0304_0506_0708);
        assert_eq!(n[..4], base[..4]);
        for (i, b) in [1u8, 2, 3, 4, 5, 6, 7, 8].iter().enumerate() {
            assert_eq!(n[4 + i], base[4 + i] ^ b);
        }
    }
}
