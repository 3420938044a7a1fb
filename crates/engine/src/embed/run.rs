//! The embedding engine thread's loop: gathers the waiting jobs' inputs into packs of
//! whole sequences and decodes them, one pack on all threads or, with enough work
//! waiting, several packs side by side on one thread each (see `lanes`).

use super::lanes::Lane;
use super::{Job, MAX_SEQS, PACK_TOKENS, QUICK_DECODE, SMALL_DECODE};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use parlance_core::priority::Background;
use parlance_core::Error;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// The engine thread's llama.cpp contexts.
pub(super) struct Contexts<'m> {
    pub main: LlamaContext<'m>,
    /// On the file's own weights, for decodes of up to `SMALL_DECODE` tokens.
    pub small: Option<LlamaContext<'m>>,
    /// One compute thread, up to `PACK_TOKENS`: for packs while a chat engine has work
    /// (a second thread would keep a team of OpenMP threads alive, and with more of
    /// those than CPUs every team's barriers sleep instead of spinning, see `omp`), and
    /// for the engine thread's own pack when packs run side by side.
    pub single: LlamaContext<'m>,
}

/// Jobs being served, each with the vectors made so far (in input order).
type Open = VecDeque<(Job, Vec<Vec<f32>>)>;

/// A pack: the (job, input) places of its sequences, in arrival order.
type Pack = Vec<(usize, usize)>;

pub(super) struct Engine<'a, 'm> {
    pub contexts: Contexts<'m>,
    pub lanes: &'a [Lane],
    pub n_batch: usize,
    pub normalize: bool,
    pub queued: &'a AtomicUsize,
}

impl Engine<'_, '_> {
    /// Serves jobs until every sender is gone.
    pub(super) fn run(mut self, rx: mpsc::Receiver<Job>, background: &mut Background) {
        let mut batch = LlamaBatch::new(self.n_batch, MAX_SEQS as i32);
        let mut open: Open = VecDeque::new();
        loop {
            if open.is_empty() {
                background.waiting();
                match crate::omp::next_or_rest(&rx) {
                    Some(job) => open.push_back((job, Vec::new())),
                    None => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                open.push_back((job, Vec::new()));
            }
            // A caller that went away is not worked for.
            open.retain(|(job, _)| {
                let gone = job.tx.is_closed();
                if gone {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                }
                !gone
            });
            let whole = plan(&open, 1);
            let Some(first) = whole.first() else { continue };
            let tokens = tokens_of(&open, first);
            let beside_chat = background.update(tokens <= QUICK_DECODE);
            let side_by_side = match beside_chat || self.lanes.is_empty() {
                true => Vec::new(),
                false => lane_packs(&open, 1 + self.lanes.len()),
            };
            // Only when every lane gets a pack: on many cores, a few packs on one thread
            // each would leave the other cores idle where one pack on all of them would
            // finish sooner. Only the packs that decode are put in tile order.
            let (packs, made) = if side_by_side.len() == 1 + self.lanes.len() {
                let packs = aligned(&open, side_by_side);
                let made = self.side_by_side(&mut batch, &open, &packs);
                (packs, made)
            } else {
                let whole = aligned(&open, whole);
                let ctx = match self.contexts.small.as_mut() {
                    _ if beside_chat && tokens <= PACK_TOKENS => {
                        crate::omp::rest();
                        &mut self.contexts.single
                    }
                    Some(small) if tokens <= SMALL_DECODE => small,
                    _ => &mut self.contexts.main,
                };
                let pack = whole.first().map_or(&[][..], Vec::as_slice);
                let made = decode(ctx, &mut batch, inputs(&open, pack));
                (whole, made)
            };
            match made {
                Ok(vectors) => self.deliver(&mut open, packs.iter().flatten(), vectors),
                Err(e) => fail_all(&mut open, self.queued, &Error::internal(e)),
            }
        }
    }

    /// Decodes the first pack here on one thread while the lanes decode the others; the
    /// vectors of all of them in order. Every lane handed a pack is waited for, so none
    /// is still decoding when the next round starts.
    fn side_by_side(
        &mut self,
        batch: &mut LlamaBatch<'_>,
        open: &Open,
        packs: &[Pack],
    ) -> Result<Vec<Vec<f32>>, String> {
        // This thread's team of OpenMP threads would spin beside the lanes.
        crate::omp::rest();
        let (first, rest) = packs.split_first().ok_or("no pack to decode")?;
        let mut handed = Vec::with_capacity(rest.len());
        for (lane, pack) in self.lanes.iter().zip(rest) {
            let owned = inputs(open, pack).map(<[LlamaToken]>::to_vec).collect();
            lane.hand(owned)?;
            handed.push(lane);
        }
        let mut made = decode(&mut self.contexts.single, batch, inputs(open, first));
        for lane in handed {
            made = match (made, lane.vectors()) {
                (Ok(mut all), Ok(more)) => {
                    all.extend(more);
                    Ok(all)
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
        }
        made
    }

    /// Gives each vector to its job; answers the jobs at the front that are complete.
    fn deliver<'p>(
        &self,
        open: &mut Open,
        members: impl Iterator<Item = &'p (usize, usize)>,
        vectors: Vec<Vec<f32>>,
    ) {
        place(open, members, vectors, self.normalize);
        while open
            .front()
            .is_some_and(|(job, done)| done.len() == job.inputs.len())
        {
            if let Some((job, done)) = open.pop_front() {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                // An error means the caller hung up: there is no one to hand the vectors to.
                job.tx.send(Ok(done)).ok();
            }
        }
    }
}

/// Appends each vector to its job's. A pack's order is the attention tiles' (see
/// `aligned`) and a job's vectors go in input order: a round answers a run of each
/// job's next inputs, so sorted by place they extend each job's answered prefix.
fn place<'p>(
    open: &mut Open,
    members: impl Iterator<Item = &'p (usize, usize)>,
    vectors: Vec<Vec<f32>>,
    normalize: bool,
) {
    let mut placed: Vec<_> = members.copied().zip(vectors).collect();
    placed.sort_unstable_by_key(|&(place, _)| place);
    for ((j, _), v) in placed {
        if let Some((_, done)) = open.get_mut(j) {
            done.push(if normalize { unit(v) } else { v });
        }
    }
}

/// Packs for `lanes` decodes side by side, each small enough for a lane's context;
/// fewer when the waiting work does not fill them.
fn lane_packs(open: &Open, lanes: usize) -> Vec<Pack> {
    let mut packs = plan(open, lanes);
    let fits = packs
        .iter()
        .position(|p| tokens_of(open, p) > PACK_TOKENS)
        .unwrap_or(packs.len());
    packs.truncate(fits);
    packs
}

/// Splits the next waiting inputs, in arrival order and whole sequences only, into up
/// to `n` packs of even size: each of at most `PACK_TOKENS` tokens (an input longer
/// than that goes alone) and `MAX_SEQS` sequences, and, when `n` > 1, none smaller
/// than `SMALL_DECODE` tokens unless it is all there is: side by side, a lane stays
/// idle while the longest pack decodes.
fn plan(open: &Open, n: usize) -> Vec<Pack> {
    let mut waiting: Vec<((usize, usize), usize)> = Vec::new();
    let mut total = 0;
    'jobs: for (j, (job, done)) in open.iter().enumerate() {
        for (k, input) in job.inputs.iter().enumerate().skip(done.len()) {
            if total >= n * PACK_TOKENS || waiting.len() == n * MAX_SEQS {
                break 'jobs;
            }
            waiting.push(((j, k), input.len()));
            total += input.len();
        }
    }
    let n = n.min(total / SMALL_DECODE).max(1);
    let target = total.div_ceil(n);
    let mut packs = Vec::with_capacity(n);
    let (mut pack, mut tokens): (Pack, usize) = (Vec::new(), 0);
    for (place, len) in waiting {
        let full = tokens + len > PACK_TOKENS || pack.len() == MAX_SEQS || tokens >= target;
        if !pack.is_empty() && full {
            packs.push(std::mem::take(&mut pack));
            tokens = 0;
            if packs.len() == n {
                return packs;
            }
        }
        pack.push(place);
        tokens += len;
    }
    if !pack.is_empty() {
        packs.push(pack);
    }
    packs
}

/// The packs, each ordered for llama.cpp's attention tiles (see `tiles`).
fn aligned(open: &Open, mut packs: Vec<Pack>) -> Vec<Pack> {
    for pack in &mut packs {
        super::tiles::align(pack, |&(j, k)| {
            open.get(j)
                .and_then(|(job, _)| job.inputs.get(k))
                .map_or(0, Vec::len)
        });
    }
    packs
}

fn tokens_of(open: &Open, pack: &[(usize, usize)]) -> usize {
    inputs(open, pack).map(<[LlamaToken]>::len).sum()
}

/// The token sequences a pack names.
fn inputs<'o>(
    open: &'o Open,
    pack: &'o [(usize, usize)],
) -> impl Iterator<Item = &'o [LlamaToken]> {
    pack.iter().filter_map(|&(j, k)| {
        open.get(j)
            .and_then(|(job, _)| job.inputs.get(k))
            .map(Vec::as_slice)
    })
}

/// One decode of whole sequences (one per input); their pooled outputs, in order.
pub(super) fn decode<'i>(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch<'_>,
    inputs: impl Iterator<Item = &'i [LlamaToken]>,
) -> Result<Vec<Vec<f32>>, String> {
    batch.clear();
    let mut seqs = 0;
    for (seq, input) in inputs.enumerate() {
        // Every position an output: pooling reads them all (llama.cpp would override
        // the flags and log a warning each decode).
        for (pos, &t) in input.iter().enumerate() {
            batch
                .add(t, pos as i32, &[seq as i32], true)
                .map_err(|e| format!("cannot fill the batch: {e}"))?;
        }
        seqs += 1;
    }
    ctx.clear_kv_cache();
    ctx.decode(batch)
        .map_err(|e| format!("llama.cpp could not embed: {e}"))?;
    (0..seqs)
        .map(|seq| {
            ctx.embeddings_seq_ith(seq)
                .map(<[f32]>::to_vec)
                .map_err(|e| format!("llama.cpp gave no vector: {e}"))
        })
        .collect()
}

/// Fails every open job with one error (a failed decode spoils the whole batch).
fn fail_all(open: &mut Open, queued: &AtomicUsize, err: &Error) {
    for (job, _) in open.drain(..) {
        queued.fetch_sub(1, Ordering::SeqCst);
        // An error means the caller hung up: no one is left to tell.
        job.tx.send(Err(err.clone())).ok();
    }
}

/// The vector scaled to length 1 (as sentence-transformers and llama-server do).
fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// Jobs of inputs with these token counts, each job's first `done` inputs answered;
    /// the receivers keep the callers "connected".
    #[allow(clippy::type_complexity)]
    fn open(
        jobs: &[(&[usize], usize)],
    ) -> (Open, Vec<oneshot::Receiver<Result<Vec<Vec<f32>>, Error>>>) {
        let mut open = VecDeque::new();
        let mut callers = Vec::new();
        for (lens, done) in jobs {
            let (tx, rx) = oneshot::channel();
            let inputs = lens.iter().map(|&n| vec![LlamaToken::new(7); n]).collect();
            open.push_back((Job { inputs, tx }, vec![Vec::new(); *done]));
            callers.push(rx);
        }
        (open, callers)
    }

    fn sizes(open: &Open, packs: &[Pack]) -> Vec<(usize, usize)> {
        packs
            .iter()
            .map(|p| (p.len(), tokens_of(open, p)))
            .collect()
    }

    #[test]
    fn one_pack_fills_up_to_its_limits_in_arrival_order() {
        let (o, _c) = open(&[(&[10; 40], 0)]);
        let packs = plan(&o, 1);
        assert_eq!(sizes(&o, &packs), [(25, 250)]);
        assert_eq!(packs[0][..2], [(0, 0), (0, 1)]);
        let (o, _c) = open(&[(&[1; 200], 0)]);
        assert_eq!(sizes(&o, &plan(&o, 1)), [(MAX_SEQS, MAX_SEQS)]);
        // Inputs already answered are skipped; the next job's follow.
        let (o, _c) = open(&[(&[10; 6], 4), (&[20; 3], 0)]);
        let packs = plan(&o, 1);
        assert_eq!(packs, [vec![(0, 4), (0, 5), (1, 0), (1, 1), (1, 2)]]);
    }

    #[test]
    fn side_by_side_packs_are_even_and_only_where_the_work_fills_them() {
        let (o, _c) = open(&[(&[10; 20], 0), (&[10; 20], 0)]);
        let packs = lane_packs(&o, 2);
        assert_eq!(sizes(&o, &packs), [(20, 200), (20, 200)]);
        // The second pack continues where the first ends: no input twice, none skipped.
        let all: Vec<_> = packs.iter().flatten().copied().collect();
        let want: Vec<_> = (0..2).flat_map(|j| (0..20).map(move |k| (j, k))).collect();
        assert_eq!(all, want);
        // More work than two packs hold: two full packs, the rest waits.
        let (o, _c) = open(&[(&[12; 100], 0)]);
        assert_eq!(sizes(&o, &lane_packs(&o, 2)), [(21, 252), (21, 252)]);
        // Sequences, not tokens, can be the limit.
        let (o, _c) = open(&[(&[1; 300], 0)]);
        assert_eq!(sizes(&o, &lane_packs(&o, 2)), [(64, 64), (64, 64)]);
        // Too little for two decodes worth splitting: one pack.
        let (o, _c) = open(&[(&[10; 10], 0)]);
        assert_eq!(lane_packs(&o, 2).len(), 1);
    }

    #[test]
    fn vectors_of_packs_in_tile_order_reach_their_jobs_in_input_order() {
        let lens = [13, 11, 13, 9, 14, 10, 12, 11, 13, 9, 14, 10, 12, 11];
        let (mut o, _c) = open(&[(&lens[..5], 1), (&lens[5..], 0)]);
        let packs = aligned(&o, lane_packs(&o, 2));
        let flat: Vec<_> = packs.iter().flatten().copied().collect();
        assert_ne!(
            flat,
            {
                let mut f = flat.clone();
                f.sort_unstable();
                f
            },
            "{packs:?}"
        );
        // Each "vector" names its input: [job, input].
        let vectors = flat
            .iter()
            .map(|&(j, k)| vec![j as f32, k as f32])
            .collect();
        place(&mut o, flat.iter(), vectors, false);
        let got: Vec<Vec<Vec<f32>>> = o.iter().map(|(_, done)| done.clone()).collect();
        assert_eq!(
            got[0][1..],
            [[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]]
        );
        let want: Vec<Vec<f32>> = (0..9).map(|k| vec![1.0, k as f32]).collect();
        assert_eq!(got[1], want);
    }

    #[test]
    fn an_input_longer_than_a_lane_takes_goes_alone_and_not_to_a_lane() {
        let (o, _c) = open(&[(&[10; 5], 0), (&[300], 0), (&[10; 5], 0)]);
        assert_eq!(sizes(&o, &lane_packs(&o, 2)), [(5, 50)]);
        assert_eq!(sizes(&o, &plan(&o, 1)), [(5, 50)]);
        let (o, _c) = open(&[(&[300], 0), (&[10; 30], 0)]);
        assert_eq!(sizes(&o, &plan(&o, 1)), [(1, 300)]);
        assert!(lane_packs(&o, 2).is_empty());
    }
}
