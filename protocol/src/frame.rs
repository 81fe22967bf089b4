//! Host ↔ enclave frames over vsock (or a Unix socket in tests).
//!
//! Owns the framing only: how a byte stream is cut into frames, the frame
//! types and their numbers, and the size bound. What a payload means is the
//! business of the module that owns it ([`crate::seal`], [`crate::stream`],
//! [`crate::receipt`]); this module never looks inside one and does no I/O.
//!
//! # Wire
//!
//! Every frame is a 9-byte header followed by its payload:
//!
//! ```text
//! offset  size  field
//! 0       4     payload length, u32 big-endian (0 ..= MAX_PAYLOAD)
//! 4       4     stream id, u32 big-endian
//! 8       1     frame type (FrameType)
//! 9       len   payload
//! ```
//!
//! The length counts the payload only. Stream ids multiplex many requests on
//! one connection: the host picks a fresh id per request and every frame of
//! that request (the request, its response chunks, its receipt, an error or
//! a cancel) carries it. Stream id 0 is the connection itself (evidence
//! request and response).
//!
//! [`FrameDecoder`] is incremental: push whatever the socket returned, pull
//! complete frames. A header declaring more than the decoder's maximum
//! payload, or an unknown frame type, is refused as soon as its 9 bytes are
//! in, before any of its payload is buffered, and the decoder stays failed
//! from then on (the byte stream is no longer in sync; close the
//! connection).

/// Header length: payload length (4) + stream id (4) + frame type (1).
pub const HEADER_LEN: usize = 9;
/// Largest payload a frame may carry: 1 MiB. A sealed request
/// ([`crate::seal::MAX_SEALED_REQUEST`]) and a response chunk
/// ([`crate::stream::MAX_CHUNK_WIRE`]) each fit in one frame.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest frame on the wire, header included.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD;
/// The stream id of connection-level frames (evidence).
pub const CONNECTION_STREAM: u32 = 0;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameType {
    /// Host → enclave: a sealed request ([`crate::seal::SealedRequest`] CBOR).
    Request = 1,
    /// Enclave → host: one response chunk ([`crate::stream`] wire form), to
    /// be forwarded to the client unchanged.
    ResponseChunk = 2,
    /// Enclave → host: the host's copy of the usage receipt (COSE_Sign1,
    /// [`crate::receipt`]).
    Receipt = 3,
    /// Either way: the stream failed; the payload is a short UTF-8 reason
    /// meant for logs (never plaintext of a request or response).
    Error = 4,
    /// Host → enclave: the client went away; stop work on the stream.
    /// Empty payload.
    Cancel = 5,
    /// Host → enclave: send the current evidence bundle. Empty payload, or
    /// a client nonce to bind into the claims.
    EvidenceRequest = 6,
    /// Enclave → host: the evidence bundle
    /// ([`cocoon_attestation::bundle::EvidenceBundle`] CBOR).
    EvidenceResponse = 7,
    /// Host → enclave, stream 0: send the price table. Empty payload.
    PriceTableRequest = 8,
    /// Enclave → host, stream 0: its measured prices
    /// ([`crate::pricing::PriceTable`] CBOR).
    PriceTable = 9,
    /// Host → enclave, stream 0: the host has durably committed these
    /// receipts ([`crate::tabs::ReceiptAck`]); count them into the
    /// accounts' tabs.
    ReceiptAck = 10,
    /// Enclave → host, stream 0: signed tabs after an acknowledgement
    /// ([`crate::tabs::TabUpdate`]).
    Tab = 11,
}

impl FrameType {
    /// Every frame type, in wire-number order.
    pub const ALL: [FrameType; 11] = [
        FrameType::Request,
        FrameType::ResponseChunk,
        FrameType::Receipt,
        FrameType::Error,
        FrameType::Cancel,
        FrameType::EvidenceRequest,
        FrameType::EvidenceResponse,
        FrameType::PriceTableRequest,
        FrameType::PriceTable,
        FrameType::ReceiptAck,
        FrameType::Tab,
    ];

    /// The wire number.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    /// The type with this wire number.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        FrameType::ALL.into_iter().find(|t| t.to_u8() == b)
    }
}

/// Why bytes are not a frame, or a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header declares (or the caller gave) a payload over the limit.
    #[error("frame payload of {len} bytes exceeds the {max}-byte limit")]
    Oversize {
        /// Declared or given payload length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The header names a frame type this build does not know.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The byte stream ended inside a frame.
    #[error("connection ended inside a frame ({buffered} bytes of an incomplete frame buffered)")]
    Truncated {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Which request (or 0, the connection) it belongs to.
    pub stream_id: u32,
    /// What it carries.
    pub kind: FrameType,
    /// The payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame.
    pub fn new(stream_id: u32, kind: FrameType, payload: Vec<u8>) -> Frame {
        Frame {
            stream_id,
            kind,
            payload,
        }
    }

    /// The frame's wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        encode_into(self.stream_id, self.kind, &self.payload, &mut out)?;
        Ok(out)
    }
}

/// Append one frame's wire bytes to `out` (nothing is appended on error).
pub fn encode_into(
    stream_id: u32,
    kind: FrameType,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_PAYLOAD)
        .ok_or(FrameError::Oversize {
            len: payload.len() as u64,
            max: MAX_PAYLOAD,
        })?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(kind.to_u8());
    out.extend_from_slice(payload);
    Ok(())
}

/// The wire bytes of one frame.
pub fn encode(stream_id: u32, kind: FrameType, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_into(stream_id, kind, payload, &mut out)?;
    Ok(out)
}

/// Make `buf` one frame where it lies: `buf[..HEADER_LEN]` is room (any
/// value) and the payload follows; the header is written into the room, so
/// a payload built behind it is never copied.
pub fn frame_in_place(stream_id: u32, kind: FrameType, buf: &mut [u8]) -> Result<(), FrameError> {
    let payload = buf.len().saturating_sub(HEADER_LEN);
    let len = u32::try_from(payload)
        .ok()
        .filter(|_| payload <= MAX_PAYLOAD && buf.len() >= HEADER_LEN)
        .ok_or(FrameError::Oversize {
            len: payload as u64,
            max: MAX_PAYLOAD,
        })?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf[4..8].copy_from_slice(&stream_id.to_be_bytes());
    buf[8] = kind.to_u8();
    Ok(())
}

/// A parsed, checked header.
struct Header {
    len: usize,
    stream_id: u32,
    kind: FrameType,
}

/// Incremental frame decoder: [`push`](FrameDecoder::push) bytes as they
/// arrive, [`next_frame`](FrameDecoder::next_frame) until it returns
/// `Ok(None)`, and [`finish`](FrameDecoder::finish) at end of stream.
///
/// Memory is bounded by what the caller pushed and has not pulled: each
/// header is checked as soon as it is complete, so an oversize frame is
/// refused after 9 bytes, not after its payload.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the first frame not yet returned.
    start: usize,
    /// Start of the first frame whose header is not yet checked (≥ start).
    checked: usize,
    max_payload: usize,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    /// A decoder that accepts payloads up to [`MAX_PAYLOAD`].
    pub fn new() -> FrameDecoder {
        FrameDecoder::with_max_payload(MAX_PAYLOAD)
    }

    /// A decoder with a smaller payload limit (clamped to [`MAX_PAYLOAD`]),
    /// for a side that expects only small frames.
    pub fn with_max_payload(max_payload: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            checked: 0,
            max_payload: max_payload.min(MAX_PAYLOAD),
            failed: None,
        }
    }

    /// Feed bytes read from the connection. Fails (and stays failed) at the
    /// first header that declares an oversize payload or an unknown type.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.compact();
        while !bytes.is_empty() {
            // Bytes still missing from the frame at `checked` before its
            // header can be checked, or before it is complete.
            let have = self.buf.len() - self.checked;
            if have < HEADER_LEN {
                let take = (HEADER_LEN - have).min(bytes.len());
                let (head, rest) = bytes.split_at(take);
                self.buf.extend_from_slice(head);
                bytes = rest;
                if self.buf.len() - self.checked < HEADER_LEN {
                    break;
                }
                if let Err(e) = self.header_at(self.checked) {
                    self.buf.truncate(self.checked);
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
            let len = match self.header_at(self.checked) {
                Ok(h) => h.len,
                Err(e) => {
                    // Checked above; kept for a total function.
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            };
            let frame_end = self.checked + HEADER_LEN + len;
            let missing = frame_end - self.buf.len();
            let take = missing.min(bytes.len());
            let (body, rest) = bytes.split_at(take);
            self.buf.extend_from_slice(body);
            bytes = rest;
            if self.buf.len() == frame_end {
                self.checked = frame_end;
            }
        }
        Ok(())
    }

    /// The next complete frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.start == self.checked {
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            return Ok(None);
        }
        // Every frame before `checked` is complete and its header valid.
        let h = self.header_at(self.start)?;
        let body = self.start + HEADER_LEN;
        let payload = self
            .buf
            .get(body..body + h.len)
            .unwrap_or_default()
            .to_vec();
        self.start = body + h.len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.checked = 0;
        }
        Ok(Some(Frame {
            stream_id: h.stream_id,
            kind: h.kind,
            payload,
        }))
    }

    /// Bytes pushed and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// End of stream: an error when it cut a frame (or the decoder failed).
    /// Frames still to be pulled are not an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let partial = self.buf.len() - self.checked;
        if partial > 0 {
            return Err(FrameError::Truncated { buffered: partial });
        }
        Ok(())
    }

    fn header_at(&self, at: usize) -> Result<Header, FrameError> {
        let h = self
            .buf
            .get(at..at + HEADER_LEN)
            .ok_or(FrameError::Truncated {
                buffered: self.buf.len().saturating_sub(at),
            })?;
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let stream_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let kind = FrameType::from_u8(h[8]).ok_or(FrameError::UnknownType(h[8]))?;
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if len_usize > self.max_payload {
            return Err(FrameError::Oversize {
                len: u64::from(len),
                max: self.max_payload,
            });
        }
        Ok(Header {
            len: len_usize,
            stream_id,
            kind,
        })
    }

    /// Drop returned frames from the front of the buffer.
    fn compact(&mut self) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.checked -= self.start;
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Frame> {
        vec![
            Frame::new(0, FrameType::EvidenceRequest, vec![]),
            Frame::new(1, FrameType::Request, b"sealed".to_vec()),
            Frame::new(1, FrameType::ResponseChunk, vec![7; 300]),
            Frame::new(u32::MAX, FrameType::Receipt, vec![0xd2, 0x84]),
            Frame::new(2, FrameType::Cancel, vec![]),
        ]
    }

    fn wire(frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            encode_into(f.stream_id, f.kind, &f.payload, &mut out).unwrap();
        }
        out
    }

    fn drain(d: &mut FrameDecoder) -> Vec<Frame> {
        let mut v = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            v.push(f);
        }
        v
    }

    #[test]
    fn header_layout() {
        let b = encode(0x0102_0304, FrameType::Receipt, b"ab").unwrap();
        assert_eq!(b, [0, 0, 0, 2, 1, 2, 3, 4, 3, b'a', b'b']);
        assert_eq!(
            Frame::new(0x0102_0304, FrameType::Receipt, b"ab".to_vec())
                .encode()
                .unwrap(),
            b
        );
        for t in FrameType::ALL {
            assert_eq!(FrameType::from_u8(t.to_u8()), Some(t));
        }
        assert_eq!(FrameType::from_u8(0), None);
        assert_eq!(FrameType::from_u8(12), None);
    }

    #[test]
    fn split_at_every_boundary() {
        let frames = sample();
        let bytes = wire(&frames);
        for cut in 0..=bytes.len() {
            let mut d = FrameDecoder::new();
            d.push(&bytes[..cut]).unwrap();
            let mut got = drain(&mut d);
            d.push(&bytes[cut..]).unwrap();
            got.extend(drain(&mut d));
            d.finish().unwrap();
            assert_eq!(got, frames, "cut at {cut}");
            assert_eq!(d.buffered(), 0);
        }
        // One byte at a time, pulling after each.
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b)).unwrap();
            got.extend(drain(&mut d));
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn truncated_stream_is_an_error_at_finish() {
        let frames = sample();
        let bytes = wire(&frames);
        let boundaries: Vec<usize> = frames
            .iter()
            .scan(0, |end, f| {
                *end += HEADER_LEN + f.payload.len();
                Some(*end)
            })
            .collect();
        for cut in 1..bytes.len() {
            let mut d = FrameDecoder::new();
            d.push(&bytes[..cut]).unwrap();
            let _ = drain(&mut d);
            let on_boundary = boundaries.contains(&cut);
            assert_eq!(d.finish().is_ok(), on_boundary, "cut at {cut}");
            if !on_boundary {
                assert!(matches!(d.finish(), Err(FrameError::Truncated { .. })));
            }
        }
    }

    #[test]
    fn oversize_refused_from_the_header() {
        let mut header = Vec::new();
        header.extend_from_slice(&((MAX_PAYLOAD as u32) + 1).to_be_bytes());
        header.extend_from_slice(&1u32.to_be_bytes());
        header.push(FrameType::Request.to_u8());
        let mut d = FrameDecoder::new();
        d.push(&header[..8]).unwrap();
        let e = d.push(&header[8..]).unwrap_err();
        assert_eq!(
            e,
            FrameError::Oversize {
                len: MAX_PAYLOAD as u64 + 1,
                max: MAX_PAYLOAD
            }
        );
        assert!(d.buffered() <= HEADER_LEN, "nothing of the payload is kept");
        // Failed for good.
        assert!(d.push(&[0; 4]).is_err());
        assert!(d.next_frame().is_err());
        assert!(d.finish().is_err());

        let mut d = FrameDecoder::new();
        let mut big = vec![0xff; 4];
        big.extend_from_slice(&[0, 0, 0, 1, 1]);
        big.extend(std::iter::repeat_n(0u8, 4096));
        assert!(matches!(
            d.push(&big),
            Err(FrameError::Oversize {
                len: 0xffff_ffff,
                ..
            })
        ));

        // A frame exactly at the limit is fine; one byte more is refused by encode.
        let max = vec![0u8; MAX_PAYLOAD];
        let b = encode(3, FrameType::ResponseChunk, &max).unwrap();
        assert_eq!(b.len(), MAX_FRAME);
        let mut d = FrameDecoder::new();
        d.push(&b).unwrap();
        assert_eq!(d.next_frame().unwrap().unwrap().payload.len(), MAX_PAYLOAD);
        let over = vec![0u8; MAX_PAYLOAD + 1];
        assert!(matches!(
            encode(3, FrameType::ResponseChunk, &over),
            Err(FrameError::Oversize { .. })
        ));
        let mut out = vec![1, 2];
        assert!(encode_into(3, FrameType::Error, &over, &mut out).is_err());
        assert_eq!(out, [1, 2], "nothing appended on error");

        // A smaller decoder limit.
        let mut d = FrameDecoder::with_max_payload(16);
        assert!(d
            .push(&encode(1, FrameType::Error, &[0; 17]).unwrap())
            .is_err());
    }

    #[test]
    fn unknown_type_refused() {
        let mut b = encode(1, FrameType::Cancel, &[]).unwrap();
        b[8] = 0;
        let mut d = FrameDecoder::new();
        assert_eq!(d.push(&b), Err(FrameError::UnknownType(0)));
        // Good frames before the bad one are still delivered.
        let mut two = encode(1, FrameType::Cancel, &[]).unwrap();
        two.extend_from_slice(&b);
        let mut d = FrameDecoder::new();
        assert!(d.push(&two).is_err());
        assert_eq!(d.next_frame().unwrap().unwrap().kind, FrameType::Cancel);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn buffer_is_compacted() {
        let f = encode(1, FrameType::ResponseChunk, &[5; 1000]).unwrap();
        let mut d = FrameDecoder::new();
        for _ in 0..1000 {
            d.push(&f[..500]).unwrap();
            assert!(d.next_frame().unwrap().is_none());
            d.push(&f[500..]).unwrap();
            d.push(&f[..3]).unwrap();
            assert_eq!(d.next_frame().unwrap().unwrap().payload.len(), 1000);
            d.push(&f[3..]).unwrap();
            assert!(d.next_frame().unwrap().is_some());
        }
        assert!(d.buf.capacity() < 16 * 1024);
    }
}
