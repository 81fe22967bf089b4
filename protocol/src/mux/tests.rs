use std::sync::Arc;
use std::time::Instant;

use rand_core::OsRng;

use super::*;
use crate::frame::{Frame, FrameDecoder, FrameType};
use crate::receipt::{ReceiptSigner, UnitPrice, UsageReceipt};
use crate::tabs::TabBook;
use crate::RequestId;

fn receipt(id: u8) -> UsageReceipt {
    UsageReceipt {
        request_id: RequestId([id; 32]),
        model: "m".into(),
        prompt_tokens: 2,
        completion_tokens: 3,
        total_tokens: 5,
        cached_tokens: 0,
        unit_price: UnitPrice {
            prompt: 1,
            cached: 1,
            completion: 2,
        },
        multiplier_milli: 1000,
        time: 1,
        enclave_seq: u64::from(id),
        client_account: [7; 32],
    }
}

fn chunk(last: bool) -> Vec<u8> {
    let mut c = vec![0u8; 30];
    c[8] = u8::from(last);
    c
}

fn frames(bytes: Vec<Vec<u8>>) -> Vec<Frame> {
    let mut d = FrameDecoder::new();
    for b in bytes {
        d.push(&b).unwrap();
    }
    std::iter::from_fn(|| d.next_frame().unwrap()).collect()
}

fn drain_enclave(e: &mut EnclaveConn) -> Vec<Frame> {
    frames(std::iter::from_fn(|| e.poll_transmit().map(|t| t.bytes)).collect())
}

fn drain_host(h: &mut HostConn) -> Vec<Frame> {
    frames(std::iter::from_fn(|| h.poll_transmit()).collect())
}

fn pair() -> (HostConn, EnclaveConn, Arc<TabBook>) {
    let book = Arc::new(TabBook::new(ReceiptSigner::generate(&mut OsRng)));
    let e = EnclaveConn::new(4, Arc::from(&b"prices"[..]), book.clone());
    (HostConn::new(), e, book)
}

#[test]
fn a_request_runs_receipt_commit_final_ack_tab_in_that_order() {
    let (mut h, mut e, book) = pair();
    let sid = h.open_request(b"signed request").unwrap();
    assert_eq!(sid, 1);
    for f in drain_host(&mut h) {
        e.on_frame(f).unwrap();
    }
    let Some(EnclaveEvent::Request {
        stream,
        token,
        payload,
    }) = e.poll_event()
    else {
        panic!("a request event")
    };
    assert_eq!((stream, payload.as_slice()), (1, &b"signed request"[..]));
    assert!(e.chunk(1, &token, &chunk(false)).unwrap());
    // The final chunk cannot go out on its own.
    assert_eq!(
        e.chunk(1, &token, &chunk(true)),
        Err(Misuse::LastFlag { stream: 1 })
    );
    let r = receipt(1);
    assert_eq!(
        e.finish(1, &token, &r, b"signed receipt", &chunk(true)),
        Ok(Finished::Sent)
    );
    assert_eq!(book.pending(), 1);
    assert_eq!(
        e.open_streams(),
        0,
        "the id is free once the final chunk is queued"
    );
    let out = drain_enclave(&mut e);
    let kinds: Vec<_> = out.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            FrameType::ResponseChunk,
            FrameType::Receipt,
            FrameType::ResponseChunk
        ]
    );
    for f in out {
        h.on_frame(f).unwrap();
    }
    assert_eq!(
        h.poll_event(),
        Some(HostEvent::Stream {
            stream: 1,
            event: StreamEvent::Chunk(chunk(false))
        })
    );
    assert_eq!(
        h.poll_event(),
        Some(HostEvent::Stream {
            stream: 1,
            event: StreamEvent::Receipt(b"signed receipt".to_vec())
        })
    );
    // The final chunk is held until the receipt is committed.
    assert_eq!(h.poll_event(), None);
    assert!(h.poll_timeout().is_none());
    let now = Instant::now();
    let held = h.commit(1, r.request_id, r.client_account, now).unwrap();
    assert_eq!(held, Some(chunk(true)));
    assert!(!h.is_live(1));
    // The acknowledgement waits ACK_DELAY for company, then goes.
    assert!(drain_host(&mut h).is_empty());
    h.handle_timeout(now + ACK_DELAY);
    let acks = drain_host(&mut h);
    assert_eq!(acks.len(), 1);
    for f in acks {
        e.on_frame(f).unwrap();
    }
    assert!(matches!(
        e.poll_event(),
        Some(EnclaveEvent::Acknowledged {
            receipts: 1,
            counted: 1,
            tabs: 1
        })
    ));
    assert_eq!(book.pending(), 0);
    for f in drain_enclave(&mut e) {
        assert_eq!(f.kind, FrameType::Tab);
        h.on_frame(f).unwrap();
    }
    assert!(matches!(h.poll_event(), Some(HostEvent::Tab(_))));
}

#[test]
fn a_final_chunk_without_a_receipt_or_after_a_refusal_never_passes() {
    let (mut h, _, _) = pair();
    let a = h.open_request(b"a").unwrap();
    h.on_frame(Frame::new(a, FrameType::ResponseChunk, chunk(true)))
        .unwrap();
    assert_eq!(
        h.poll_event(),
        Some(HostEvent::Stream {
            stream: a,
            event: StreamEvent::Broken(Broken::FinalWithoutReceipt)
        })
    );
    let b = h.open_request(b"b").unwrap();
    h.on_frame(Frame::new(b, FrameType::Receipt, vec![1]))
        .unwrap();
    h.poll_event();
    h.on_frame(Frame::new(b, FrameType::ResponseChunk, chunk(true)))
        .unwrap();
    h.refuse(b);
    assert_eq!(h.poll_event(), None);
    assert!(!h.is_live(b));
    assert!(h
        .commit(b, RequestId([0; 32]), [0; 32], Instant::now())
        .is_err());
    // A second receipt, and a chunk after the receipt, break the stream.
    let c = h.open_request(b"c").unwrap();
    h.on_frame(Frame::new(c, FrameType::Receipt, vec![1]))
        .unwrap();
    h.on_frame(Frame::new(c, FrameType::Receipt, vec![1]))
        .unwrap();
    h.poll_event();
    assert_eq!(
        h.poll_event(),
        Some(HostEvent::Stream {
            stream: c,
            event: StreamEvent::Broken(Broken::SecondReceipt)
        })
    );
}

#[test]
fn wrong_senders_close() {
    let (mut h, mut e, _) = pair();
    assert!(matches!(
        h.on_frame(Frame::new(3, FrameType::Request, vec![])),
        Err(Violation::WrongSender {
            kind: FrameType::Request,
            stream: 3
        })
    ));
    assert!(matches!(
        e.on_frame(Frame::new(1, FrameType::Receipt, vec![])),
        Err(Violation::WrongSender {
            kind: FrameType::Receipt,
            ..
        })
    ));
}

#[test]
fn ids_skip_zero_and_live_ids_and_the_enclave_refuses_busy_ones() {
    let (mut h, mut e, _) = pair();
    let ids: Vec<u32> = (0..3).map(|_| h.open_request(b"x").unwrap()).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert!(h.cancel(2));
    assert!(!h.cancel(2), "cancelled already");
    assert!(
        h.is_live(2),
        "a cancelled stream still takes a receipt for the work done"
    );
    h.forget(2);
    assert!(!h.is_live(2));
    for f in drain_host(&mut h) {
        e.on_frame(f).unwrap();
    }
    // The same id twice while open, and over the limit of 4 (2 stays open
    // until its work stops, though cancelled).
    e.on_frame(Frame::new(1, FrameType::Request, vec![]))
        .unwrap();
    for id in [5, 6, 7] {
        e.on_frame(Frame::new(id, FrameType::Request, vec![]))
            .unwrap();
    }
    let errors: Vec<String> = drain_enclave(&mut e)
        .into_iter()
        .map(|f| String::from_utf8(f.payload).unwrap())
        .collect();
    assert_eq!(
        errors,
        [
            "stream id 1 is already in use on this connection",
            "too many open streams on this connection (limit 4)",
            "too many open streams on this connection (limit 4)"
        ]
    );
}

#[test]
fn a_cancelled_stream_sends_and_records_nothing() {
    let (_, mut e, book) = pair();
    e.on_frame(Frame::new(9, FrameType::Request, vec![]))
        .unwrap();
    let Some(EnclaveEvent::Request { token, .. }) = e.poll_event() else {
        panic!()
    };
    assert!(e.chunk(9, &token, &chunk(false)).unwrap());
    let queued = e.poll_transmit().unwrap();
    e.on_frame(Frame::new(9, FrameType::Cancel, vec![]))
        .unwrap();
    assert!(
        queued.is_dropped(),
        "queued frames of a cancelled stream are dropped"
    );
    assert!(!e.chunk(9, &token, &chunk(false)).unwrap());
    assert_eq!(
        e.finish(9, &token, &receipt(9), b"r", &chunk(true)),
        Ok(Finished::Cancelled)
    );
    assert_eq!(book.pending(), 0);
    assert!(e.poll_transmit().is_none());
}

#[test]
fn stream_limits_reuse_stale_closes_and_close_all() {
    // Moved from the enclave's stream table: the same rules, on the machine.
    let book = Arc::new(TabBook::new(ReceiptSigner::generate(&mut OsRng)));
    let mut e = EnclaveConn::new(2, Arc::from(&b""[..]), book);
    let open = |e: &mut EnclaveConn, id: u32| -> Option<CancelToken> {
        e.on_frame(Frame::new(id, FrameType::Request, vec![]))
            .unwrap();
        match e.poll_event() {
            Some(EnclaveEvent::Request { token, .. }) => Some(token),
            _ => None,
        }
    };
    let a = open(&mut e, 1).unwrap();
    assert!(open(&mut e, 1).is_none(), "in use");
    let _b = open(&mut e, 2).unwrap();
    assert!(open(&mut e, 3).is_none(), "too many");
    e.on_frame(Frame::new(1, FrameType::Cancel, vec![]))
        .unwrap();
    assert!(a.is_cancelled());
    // A cancel for a stream that is not open changes nothing.
    while e.poll_event().is_some() {}
    e.on_frame(Frame::new(9, FrameType::Cancel, vec![]))
        .unwrap();
    assert!(e.poll_event().is_none());
    e.close(1, &a);
    let a2 = open(&mut e, 1).unwrap();
    // A stale close does not free the new entry.
    e.close(1, &a);
    assert!(open(&mut e, 1).is_none(), "still in use");
    e.on_close();
    assert!(a2.is_cancelled());
    assert_eq!(e.open_streams(), 0);
}

#[test]
fn last_flag_is_read_from_the_clear_header() {
    let mut c = vec![0u8; 9];
    assert_eq!(chunk_is_last(&c), Some(false));
    c[8] = 1;
    assert_eq!(chunk_is_last(&c), Some(true));
    assert_eq!(chunk_is_last(&c[..8]), None);
}

#[test]
fn stream_ids_wrap_skipping_zero_and_ids_in_use() {
    let mut h = HostConn::new();
    assert_eq!(h.open_request(b"x").unwrap(), 1);
    h.next_id = u32::MAX;
    assert_eq!(h.open_request(b"x").unwrap(), u32::MAX);
    assert_eq!(
        h.open_request(b"x").unwrap(),
        2,
        "0 is the connection, 1 is in use"
    );
}

#[test]
fn a_chunk_built_where_its_frame_lies_goes_out_as_the_copied_one_does() {
    let (mut h, mut e, _) = pair();
    h.open_request(b"r").unwrap();
    for f in drain_host(&mut h) {
        e.on_frame(f).unwrap();
    }
    let Some(EnclaveEvent::Request { token, .. }) = e.poll_event() else {
        panic!("a request event")
    };
    assert!(e.chunk(1, &token, &chunk(false)).unwrap());
    let copied = e.poll_transmit().unwrap().bytes;
    let mut framed = vec![0xee; crate::frame::HEADER_LEN];
    framed.extend_from_slice(&chunk(false));
    assert!(e.chunk_framed(1, &token, framed).unwrap());
    assert_eq!(e.poll_transmit().unwrap().bytes, copied);
    // The last flag is refused here as in `chunk`; so is a buffer with no
    // room for its header.
    let mut last = vec![0; crate::frame::HEADER_LEN];
    last.extend_from_slice(&chunk(true));
    assert!(matches!(
        e.chunk_framed(1, &token, last),
        Err(Misuse::LastFlag { stream: 1 })
    ));
    assert!(matches!(
        e.chunk_framed(1, &token, vec![0; 3]),
        Err(Misuse::LastFlag { stream: 1 })
    ));
}
