//! Turns token bytes into text that is safe to stream: never half a UTF-8 character,
//! never the start of a stop string that may still complete, never the stop string.

/// What one push produced.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Pushed {
    /// Text that can go to the client now.
    pub text: String,
    /// A stop string matched: `text` ends right before it and generation must end.
    pub stopped: bool,
    /// Which one (the earliest in the text).
    pub matched: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct TextAssembler {
    /// Trailing bytes of a character that has not fully arrived.
    partial: Vec<u8>,
    /// Decoded text held back because it may be the start of a stop string.
    held: String,
    stops: Vec<String>,
}

impl TextAssembler {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        TextAssembler {
            partial: Vec::new(),
            held: String::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) -> Pushed {
        self.partial.extend_from_slice(bytes);
        decode_prefix(&mut self.partial, &mut self.held);

        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = hit {
            let matched = Some(stop.clone());
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            self.partial.clear();
            return Pushed {
                text,
                stopped: true,
                matched,
            };
        }

        let keep = self.longest_stop_prefix_suffix();
        let emit_to = self.held.len() - keep;
        let rest = self.held.split_off(emit_to);
        let text = std::mem::replace(&mut self.held, rest);
        Pushed {
            text,
            stopped: false,
            matched: None,
        }
    }

    /// Everything still held, at the end of generation. A character cut off by the
    /// end (max_tokens hit mid-character) is dropped: half a character is not text, and
    /// a U+FFFD would end the answer with garbage.
    pub(crate) fn finish(&mut self) -> String {
        self.partial.clear();
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let held = self.held.as_str();
        let mut best = 0;
        for stop in &self.stops {
            let max = (stop.len() - 1).min(held.len());
            for k in (best + 1..=max).rev() {
                let start = held.len() - k;
                if held.is_char_boundary(start) && stop.starts_with(&held[start..]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

/// Moves the complete characters at the front of `bytes` into `out`. Invalid bytes
/// become U+FFFD; an incomplete character at the end stays in `bytes`.
fn decode_prefix(bytes: &mut Vec<u8>, out: &mut String) {
    let mut start = 0;
    loop {
        match std::str::from_utf8(bytes.get(start..).unwrap_or_default()) {
            Ok(s) => {
                out.push_str(s);
                bytes.clear();
                return;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // Safe: from_utf8 just checked these bytes.
                let checked = bytes.get(start..start + valid).unwrap_or_default();
                out.push_str(std::str::from_utf8(checked).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        start += valid + bad;
                    }
                    None => {
                        bytes.drain(..start + valid);
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&[u8]], stops: &[&str]) -> (String, bool) {
        let mut a = TextAssembler::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let r = a.push(p);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&a.finish());
        (out, false)
    }

    #[test]
    fn cyrillic_split_at_every_byte_streams_whole_characters() {
        let text = "Софийският университет е основан през 1888 г.";
        let bytes = text.as_bytes();
        let mut a = TextAssembler::new(vec![]);
        let mut out = String::new();
        for b in bytes {
            let r = a.push(std::slice::from_ref(b));
            // Every emitted piece is valid UTF-8 by construction; check nothing is lost.
            out.push_str(&r.text);
        }
        out.push_str(&a.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn stop_across_pieces_is_not_emitted() {
        let (out, stopped) = run(&[b"Hello ", b"wor", b"ld and more"], &["world"]);
        assert_eq!(out, "Hello ");
        assert!(stopped);
    }

    #[test]
    fn held_prefix_is_released_when_it_does_not_complete() {
        let mut a = TextAssembler::new(vec!["STOP".into()]);
        assert_eq!(a.push(b"abc ST").text, "abc ");
        assert_eq!(a.push(b"ay").text, "STay");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, stopped) = run(&[b"one two three"], &["three", "two"]);
        assert_eq!(out, "one ");
        assert!(stopped);
    }

    #[test]
    fn multibyte_stop_split_inside_a_character() {
        let stop = "край";
        let bytes = "текст край".as_bytes();
        let pieces: Vec<&[u8]> = bytes.iter().map(std::slice::from_ref).collect();
        let (out, stopped) = run(&pieces, &[stop]);
        assert_eq!(out, "текст ");
        assert!(stopped);
    }

    #[test]
    fn invalid_bytes_become_replacement_and_a_cut_char_at_end_is_dropped() {
        let (out, _) = run(&[b"a\xffb", b"\xd0"], &[]);
        assert_eq!(out, "a\u{FFFD}b");
        // An emoji cut after 2 of its 4 bytes leaves nothing behind.
        let (out, _) = run(&[b"ok ", &"😀".as_bytes()[..2]], &[]);
        assert_eq!(out, "ok ");
    }

    #[test]
    fn every_split_point_of_a_mixed_string_round_trips_with_stop() {
        let text = "Здравей, свят! <end> след";
        for cut in 0..=text.len() {
            let (a, b) = text.as_bytes().split_at(cut);
            let (out, stopped) = run(&[a, b], &["<end>"]);
            assert_eq!(out, "Здравей, свят! ", "cut at {cut}");
            assert!(stopped);
        }
    }
}

/// Fuzzing (bounded, runs with `cargo test`): arbitrary bytes cut at arbitrary points.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn assemble(bytes: &[u8], cuts: &[usize], stops: &[String]) -> (String, bool) {
        let mut a = TextAssembler::new(stops.to_vec());
        let mut out = String::new();
        let mut at = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        points.push(bytes.len());
        for p in points {
            let r = a.push(&bytes[at..p]);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
            at = p;
        }
        out.push_str(&a.finish());
        (out, false)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn splits_never_change_the_text(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                        cuts in proptest::collection::vec(any::<usize>(), 0..8),
                                        stop in "[a-cа-в]{1,3}") {
            let stops = vec![stop.clone()];
            let whole = assemble(&bytes, &[], &stops);
            let split = assemble(&bytes, &cuts, &stops);
            prop_assert_eq!(&whole, &split);
            // The stop string itself never reaches the caller, nor a trailing U+FFFD
            // from a cut character.
            prop_assert!(!split.0.contains(&stop));
        }

        #[test]
        fn valid_text_round_trips(text in "\\PC{0,40}", cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let (out, stopped) = assemble(text.as_bytes(), &cuts, &[]);
            prop_assert!(!stopped);
            prop_assert_eq!(out, text);
        }
    }
}
