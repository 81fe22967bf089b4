//! Where a chat backend's tokens go: counted against the paid
//! `max_tokens`, run through the request's stop strings
//! ([`crate::stop`]), and sealed into `logprobs` and `text` events.
//!
//! A token's `logprobs` event is sent before the `text` event that
//! carries its last byte; text held back because it could begin a stop
//! string holds its tokens' logprobs back with it. When a stop string
//! ends the answer, the logprobs of the tokens that contributed text
//! before the cut are sent and the rest are dropped.

use std::collections::VecDeque;
use std::ops::ControlFlow;

use cocoon_protocol::message::ResponseEvent;
use cocoon_protocol::sampling::TokenLogprob;
use cocoon_protocol::stream::ResponseSealer;

use super::connection::StreamCtx;
use super::request::{split_text, Abort, MAX_TEXT_PIECE};
use crate::backend::Generated;
use crate::stop::{StopFilter, StopStep};

/// One chat request's token sink.
pub(super) struct ChatSink<'a> {
    s: &'a StreamCtx,
    sealer: &'a mut ResponseSealer,
    max: u64,
    /// Tokens accepted from the backend (sent or held back).
    pub(super) delivered: u64,
    /// `max_tokens` stopped the backend.
    pub(super) cut: bool,
    /// A stop string ended the answer.
    pub(super) stopped: bool,
    /// Why the stream must end without an `End`.
    pub(super) abort: Option<Abort>,
    stop: StopFilter,
    /// Logprobs not sent yet: (logprob, start, end) of the token's text in
    /// the answer as the backend produced it.
    pending: VecDeque<(TokenLogprob, usize, usize)>,
    /// Bytes of text the backend produced.
    produced: usize,
    /// Bytes of text sent.
    sent: usize,
}

impl<'a> ChatSink<'a> {
    pub(super) fn new(
        s: &'a StreamCtx,
        sealer: &'a mut ResponseSealer,
        max: u64,
        stops: &[String],
    ) -> ChatSink<'a> {
        ChatSink {
            s,
            sealer,
            max,
            delivered: 0,
            cut: false,
            stopped: false,
            abort: None,
            stop: StopFilter::new(stops),
            pending: VecDeque::new(),
            produced: 0,
            sent: 0,
        }
    }

    /// The backend's `emit`.
    pub(super) fn token(&mut self, g: Generated<'_>) -> ControlFlow<()> {
        // A backend that keeps calling after a Break gets nothing through.
        if self.stopped || self.abort.is_some() {
            return ControlFlow::Break(());
        }
        if self.s.is_cancelled() {
            self.abort = Some(Abort::Cancelled);
            return ControlFlow::Break(());
        }
        if self.delivered >= self.max {
            self.cut = true;
            return ControlFlow::Break(());
        }
        // Generated, so billed, whether its text is sent, held or cut.
        self.delivered += 1;
        let start = self.produced;
        self.produced += g.text.len();
        if let Some(lp) = g.logprob {
            self.pending.push_back((lp, start, self.produced));
        }
        let result = match self.stop.push(g.text) {
            StopStep::Send(text) => self.send(&text, false),
            StopStep::Stop(text) => {
                self.stopped = true;
                self.send(&text, true)
            }
        };
        match result {
            Err(a) => {
                self.abort = Some(a);
                ControlFlow::Break(())
            }
            Ok(()) if self.stopped => ControlFlow::Break(()),
            Ok(()) => ControlFlow::Continue(()),
        }
    }

    /// The backend is done (not by a stop string): send what is held.
    pub(super) fn finish(&mut self) -> Result<(), Abort> {
        if self.stopped || self.abort.is_some() {
            return Ok(());
        }
        let rest = self.stop.finish();
        self.send(&rest, false)?;
        // Whatever is left has no text after it to wait for.
        while let Some((lp, _, _)) = self.pending.pop_front() {
            self.event(&ResponseEvent::Logprobs(lp))?;
        }
        Ok(())
    }

    /// Send `text` after the logprobs of the tokens it completes. `at_stop`:
    /// the answer ends after it, so tokens that began before its end count.
    fn send(&mut self, text: &str, at_stop: bool) -> Result<(), Abort> {
        self.sent += text.len();
        while let Some((_, start, end)) = self.pending.front() {
            let due = if at_stop {
                *start < self.sent
            } else {
                *end <= self.sent
            };
            if !due {
                break;
            }
            if let Some((lp, _, _)) = self.pending.pop_front() {
                self.event(&ResponseEvent::Logprobs(lp))?;
            }
        }
        for part in split_text(text, MAX_TEXT_PIECE) {
            self.event(&ResponseEvent::Text(part.to_owned()))?;
        }
        Ok(())
    }

    fn event(&mut self, ev: &ResponseEvent) -> Result<(), Abort> {
        self.s.send_event(self.sealer, ev)
    }
}
