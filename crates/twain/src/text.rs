//! Turning a stream of token bytes into text pieces that are always valid
//! UTF-8 and never contain (any part of) a stop sequence.

/// Assembles token bytes into text, holding back incomplete UTF-8 sequences
/// and any suffix that could be the start of a stop sequence.
#[derive(Debug, Clone, Default)]
pub struct TextAssembler {
    pending: Vec<u8>,
    held: String,
    stops: Vec<String>,
}

/// What one push produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Piece {
    /// Text safe to show now (may be empty).
    pub text: String,
    /// The stop sequence that was completed, if any; `text` ends right before it.
    pub stopped: Option<String>,
}

impl TextAssembler {
    /// An assembler that stops at any of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            pending: Vec::new(),
            held: String::new(),
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
        }
    }

    /// Add the bytes of one token.
    pub fn push(&mut self, bytes: &[u8]) -> Piece {
        self.pending.extend_from_slice(bytes);
        // Move the longest valid UTF-8 prefix into `held`; invalid sequences
        // (not merely incomplete ones) become U+FFFD.
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix up to `valid` is valid UTF-8.
                    self.held
                        .push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            self.held.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                    }
                }
            }
        }
        // A completed stop sequence ends the text.
        if let Some((idx, stop)) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s.clone())))
            .min_by_key(|(i, _)| *i)
        {
            let text = self.held[..idx].to_string();
            self.held.clear();
            self.pending.clear();
            return Piece {
                text,
                stopped: Some(stop),
            };
        }
        // Hold back the longest suffix that is a proper prefix of a stop sequence.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.held.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        Piece {
            text,
            stopped: None,
        }
    }

    /// Everything still held (at the end of generation): held text plus any
    /// incomplete bytes, lossily decoded.
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&String::from_utf8_lossy(&self.pending));
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&[u8]]) -> (Vec<String>, Option<String>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut a = TextAssembler::new(&stops);
        let mut pieces = Vec::new();
        for c in chunks {
            let p = a.push(c);
            assert!(std::str::from_utf8(p.text.as_bytes()).is_ok());
            if !p.text.is_empty() {
                pieces.push(p.text);
            }
            if p.stopped.is_some() {
                return (pieces, p.stopped, String::new());
            }
        }
        let rest = a.finish();
        (pieces, None, rest)
    }

    #[test]
    fn multibyte_characters_split_across_tokens_are_held_until_complete() {
        let s = "é👍".as_bytes();
        let (pieces, stop, rest) = run(&[], &[&s[..1], &s[1..3], &s[3..5], &s[5..]]);
        assert_eq!(pieces, vec!["é".to_string(), "👍".to_string()]);
        assert_eq!(stop, None);
        assert_eq!(rest, "");
    }

    #[test]
    fn stop_sequence_spanning_tokens_never_leaks() {
        let (pieces, stop, _) = run(&["END"], &[b"abc E", b"N", b"D tail"]);
        assert_eq!(pieces.concat(), "abc ");
        assert_eq!(stop.as_deref(), Some("END"));
    }

    #[test]
    fn false_start_of_a_stop_sequence_is_released() {
        let (pieces, stop, rest) = run(&["END"], &[b"E", b"N", b"x"]);
        assert_eq!(stop, None);
        assert_eq!(pieces.concat() + &rest, "ENx");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (pieces, _, rest) = run(&[], &[&[0xff, b'a']]);
        assert_eq!(pieces.concat() + &rest, "\u{FFFD}a");
    }
}
