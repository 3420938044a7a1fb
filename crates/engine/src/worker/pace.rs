//! Prefill pacing (`--prefill-pace R`): while sequences are generating, each step's
//! prompt chunk is sized from measured step times so the step takes at most R times a
//! step without prompt tokens; the generating streams' inter-token latency then stays
//! under R times its idle value while a long prompt prefills, and the prompt gets
//! whatever compute is left. Off (0): a fixed `--prefill-chunk`.

use std::time::{Duration, Instant};

/// Weight of the newest observation: step costs drift as contexts grow and streams
/// come and go, so old ones fade within a few steps.
const ALPHA: f64 = 0.3;
/// The first chunk while the cost of a prompt token is unknown.
const PROBE: usize = 8;
/// How old the decode-only time may get before a step goes without prompt tokens to
/// measure it again: the streams' own cost grows with their contexts.
const REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct Pacer {
    ratio: f64,
    /// A step's time with generating tokens only.
    decode_only: Option<f64>,
    /// What one prompt token adds to a step's time.
    per_prompt_token: Option<f64>,
    measured: Option<Instant>,
}

impl Pacer {
    pub(super) fn new(ratio: f32) -> Self {
        Pacer {
            ratio: f64::from(ratio),
            ..Pacer::default()
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.ratio > 1.0
    }

    /// Prompt tokens for a step that also decodes generating sequences (0 for a step
    /// that measures the decode-only time again).
    pub(super) fn chunk(&self, max: usize) -> usize {
        if !self.enabled() {
            return max;
        }
        if self.measured.is_some_and(|at| at.elapsed() > REFRESH) {
            return 0;
        }
        let (Some(step), Some(token)) = (self.decode_only, self.per_prompt_token) else {
            return PROBE.min(max);
        };
        let room = (self.ratio - 1.0) * step;
        ((room / token.max(1e-9)) as usize).clamp(1, max.max(1))
    }

    /// Records a decode of `generating` next tokens and `prompt` prompt tokens.
    pub(super) fn observe(&mut self, generating: usize, prompt: usize, took: Duration) {
        if !self.enabled() || generating == 0 {
            return;
        }
        let secs = took.as_secs_f64();
        if prompt == 0 {
            self.decode_only = Some(ewma(self.decode_only, secs));
            self.measured = Some(Instant::now());
        } else if let Some(step) = self.decode_only {
            let per = (secs - step).max(0.0) / prompt as f64;
            self.per_prompt_token = Some(ewma(self.per_prompt_token, per));
        }
    }
}

fn ewma(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| o + ALPHA * (new - o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn chunks_fill_the_allowed_stretch_of_a_step() {
        let mut p = Pacer::new(2.0);
        assert_eq!(p.chunk(256), PROBE, "nothing measured yet");
        for _ in 0..20 {
            p.observe(7, 0, ms(80));
        }
        assert_eq!(
            p.chunk(256),
            PROBE,
            "a prompt token's cost not measured yet"
        );
        for _ in 0..20 {
            // 8 prompt tokens add 40 ms: 5 ms each, so 80 ms of room holds 16.
            p.observe(7, 8, ms(120));
        }
        assert!((15..=16).contains(&p.chunk(256)), "{}", p.chunk(256));
        assert_eq!(p.chunk(4), 4, "never above --prefill-chunk");
        // Dearer tokens (deeper into a long prompt) shrink the chunk, never below 1.
        for _ in 0..40 {
            p.observe(7, 16, ms(80 + 16 * 200));
        }
        assert_eq!(p.chunk(256), 1);
    }

    #[test]
    fn off_is_the_fixed_chunk() {
        let mut p = Pacer::new(0.0);
        p.observe(7, 0, ms(80));
        p.observe(7, 100, ms(5000));
        assert!(!p.enabled());
        assert_eq!(p.chunk(256), 256);
    }
}
