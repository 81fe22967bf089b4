//! The connection machines' cost against the raw framing they wrap: one
//! request's frames (request, 64 response chunks of 64 bytes, receipt,
//! final chunk released by the commit) through `HostConn` → wire →
//! `EnclaveConn` → wire → `HostConn`, against the same frames through
//! `frame::encode` and `FrameDecoder` alone. (The acknowledgement and the
//! tab are left out: the tab's ECDSA signature would dwarf both.) Prints the ratio (machines / raw), measured side by
//! side in one run, interleaved. `cargo bench -p cocoon-protocol --bench mux`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cocoon_protocol::frame::{self, FrameDecoder, FrameType};
use cocoon_protocol::mux::{EnclaveConn, EnclaveEvent, HostConn, HostEvent, StreamEvent};
use cocoon_protocol::receipt::{ReceiptSigner, UnitPrice, UsageReceipt};
use cocoon_protocol::tabs::TabBook;
use cocoon_protocol::RequestId;

const CHUNKS: usize = 64;

fn chunk(last: bool) -> Vec<u8> {
    let mut c = vec![7u8; 64];
    c[8] = u8::from(last);
    c
}

fn receipt(n: u64) -> UsageReceipt {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    UsageReceipt {
        request_id: RequestId(id),
        model: "m".into(),
        prompt_tokens: 1,
        completion_tokens: CHUNKS as u64,
        total_tokens: 1 + CHUNKS as u64,
        cached_tokens: 0,
        unit_price: UnitPrice::default(),
        multiplier_milli: 1000,
        time: 1,
        enclave_seq: n,
        client_account: [1; 32],
    }
}

/// One request through both machines.
fn machines(book: &Arc<TabBook>, signed: &[u8], n: u64) -> usize {
    let mut host = HostConn::new();
    let mut enclave = EnclaveConn::new(8, Arc::from(&b"p"[..]), book.clone());
    let mut wire = Vec::new();
    let sid = host.open_request(b"request").unwrap();
    while let Some(b) = host.poll_transmit() {
        wire.extend_from_slice(&b);
    }
    let mut d = FrameDecoder::new();
    d.push(&wire).unwrap();
    wire.clear();
    while let Some(f) = d.next_frame().unwrap() {
        enclave.on_frame(f).unwrap();
    }
    let Some(EnclaveEvent::Request { stream, token, .. }) = enclave.poll_event() else {
        unreachable!()
    };
    let c = chunk(false);
    for _ in 0..CHUNKS {
        enclave.chunk(stream, &token, &c).unwrap();
    }
    let r = receipt(n);
    let _ = enclave
        .finish(stream, &token, &r, signed, &chunk(true))
        .unwrap();
    while let Some(t) = enclave.poll_transmit() {
        wire.extend_from_slice(&t.bytes);
    }
    let mut d = FrameDecoder::new();
    d.push(&wire).unwrap();
    wire.clear();
    let mut got = 0;
    while let Some(f) = d.next_frame().unwrap() {
        host.on_frame(f).unwrap();
        while let Some(ev) = host.poll_event() {
            if let HostEvent::Stream {
                event: StreamEvent::Receipt(_),
                ..
            } = ev
            {
                if let Some(last) = host
                    .commit(sid, r.request_id, r.client_account, Instant::now())
                    .unwrap()
                {
                    got += last.len();
                }
            } else if let HostEvent::Stream { event, .. } = ev {
                got += black_box(&event) as *const _ as usize & 1;
            }
        }
    }
    got
}

/// The same frames, encoded and decoded by hand.
fn raw(signed: &[u8]) -> usize {
    let mut wire = frame::encode(1, FrameType::Request, b"request").unwrap();
    let mut d = FrameDecoder::new();
    d.push(&wire).unwrap();
    wire.clear();
    let mut got = 0;
    while let Some(f) = d.next_frame().unwrap() {
        got += f.payload.len();
    }
    let c = chunk(false);
    for _ in 0..CHUNKS {
        frame::encode_into(1, FrameType::ResponseChunk, &c, &mut wire).unwrap();
    }
    frame::encode_into(1, FrameType::Receipt, signed, &mut wire).unwrap();
    frame::encode_into(1, FrameType::ResponseChunk, &chunk(true), &mut wire).unwrap();
    let mut d = FrameDecoder::new();
    d.push(&wire).unwrap();
    wire.clear();
    while let Some(f) = d.next_frame().unwrap() {
        got += black_box(f).payload.len() & 1;
    }
    got
}

fn main() {
    let signer = ReceiptSigner::from_scalar(&[0x42; 32]).unwrap();
    let book = Arc::new(TabBook::new(signer.clone()));
    let signed = signer.sign(&receipt(0)).unwrap();
    let rounds = 200;
    let (mut t_mux, mut t_raw) = (Duration::ZERO, Duration::ZERO);
    let mut n = 0;
    for _ in 0..10 {
        let t = Instant::now();
        for _ in 0..rounds {
            n += 1;
            black_box(machines(&book, &signed, n));
        }
        t_mux += t.elapsed();
        let t = Instant::now();
        for _ in 0..rounds {
            n += 1;
            black_box(raw(&signed));
        }
        t_raw += t.elapsed();
    }
    println!(
        "mux: one request ({CHUNKS} chunks, receipt, final) through both connection machines vs raw framing: {:.2}x",
        t_mux.as_secs_f64() / t_raw.as_secs_f64()
    );
}
