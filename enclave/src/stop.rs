//! Stop strings: cutting a streamed answer before the first occurrence of
//! any of the request's stop strings, without ever sending part of one.
//!
//! Owns [`StopFilter`], a pure state machine over text pieces; the server
//! runs every backend's tokens through it, so stop strings work the same
//! for every backend. Text that could still be the start of a stop string
//! is held back until the next piece tells (or the answer ends).

/// What to do with a piece of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStep {
    /// Send this text (possibly empty: all of it is held back for now).
    Send(String),
    /// A stop string was found: send this text (what came before it) and
    /// end the answer.
    Stop(String),
}

/// Holds back text that could begin a stop string.
#[derive(Debug, Clone, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

impl StopFilter {
    /// A filter for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> StopFilter {
        StopFilter {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// The next piece of the answer.
    pub fn push(&mut self, piece: &str) -> StopStep {
        if self.stops.is_empty() {
            return StopStep::Send(piece.to_owned());
        }
        self.held.push_str(piece);
        // Everything sent so far ended before any partial match, so the
        // first occurrence, if any, lies within what is held.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            return StopStep::Stop(text);
        }
        let keep = self.longest_partial_suffix();
        let send_to = self.held.len() - keep;
        let rest = self.held.split_off(send_to);
        StopStep::Send(std::mem::replace(&mut self.held, rest))
    }

    /// The answer ended without a stop string: what is still held.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Bytes at the end of `held` that are a proper prefix of a stop
    /// string (such a suffix starts at a character boundary, since the stop
    /// string's first byte does).
    fn longest_partial_suffix(&self) -> usize {
        let h = self.held.as_bytes();
        self.stops
            .iter()
            .map(|s| {
                let s = s.as_bytes();
                (1..s.len().min(h.len() + 1))
                    .rev()
                    .find(|&k| h[h.len() - k..] == s[..k])
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces`; the text sent and whether a stop string ended it.
    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut sent = Vec::new();
        for p in pieces {
            match f.push(p) {
                StopStep::Send(t) => sent.push(t),
                StopStep::Stop(t) => {
                    sent.push(t);
                    return (sent, true);
                }
            }
        }
        sent.push(f.finish());
        (sent, false)
    }

    #[test]
    fn a_stop_string_across_pieces_cuts_without_leaking_a_prefix() {
        let (sent, stopped) = run(&["END"], &["Hello E", "N", "D tail"]);
        assert!(stopped);
        assert_eq!(sent, vec!["Hello ", "", ""]);
        assert_eq!(sent.concat(), "Hello ");
        // A false start is released once it cannot be a stop string.
        let (sent, stopped) = run(&["END"], &["a E", "Nx", " b"]);
        assert!(!stopped);
        assert_eq!(sent, vec!["a ", "ENx", " b", ""]);
        // Held text comes out at the end.
        let (sent, stopped) = run(&["END"], &["a EN"]);
        assert_eq!((sent.concat().as_str(), stopped), ("a EN", false));
        assert_eq!(sent[0], "a ");
    }

    #[test]
    fn the_first_occurrence_of_any_stop_wins() {
        let (sent, stopped) = run(&["zz", "b"], &["a", "bzz"]);
        assert_eq!((sent.concat().as_str(), stopped), ("a", true));
        let (sent, _) = run(&["xyz", "yq"], &["axy", "q"]);
        assert_eq!(sent.concat(), "ax");
        // A stop string inside one piece.
        let (sent, stopped) = run(&["\n\n"], &["one\n\ntwo"]);
        assert_eq!((sent.concat().as_str(), stopped), ("one", true));
        // At the very start.
        let (sent, stopped) = run(&["Hi"], &["Hi there"]);
        assert_eq!((sent.concat().as_str(), stopped), ("", true));
    }

    #[test]
    fn multibyte_text_and_no_stops() {
        let (sent, stopped) = run(&["é!"], &["café", "?", "é", "!"]);
        assert!(stopped);
        assert_eq!(sent.concat(), "café?");
        assert_eq!(sent[0], "caf", "the é could start the stop string");
        let (sent, stopped) = run(&[], &["a", "b"]);
        assert_eq!(
            (sent, stopped),
            (vec!["a".into(), "b".into(), String::new()], false)
        );
    }
}
