//! The order of a pack's sequences. llama.cpp's CPU flash attention takes a pack of 64
//! tokens or more in tiles of 64 queries by 64 keys (`GGML_FA_TILE_Q` / `_KV`) and
//! skips a tile only when the mask hides all of it. Short sequences in arrival order
//! cross most tile borders, so a 256-token pack computes 10 of its 16 tiles where 4
//! would do: ordered so that sequences end on the borders, the tiles off the diagonal
//! are all skipped. Each sequence attends only to itself, so the order changes no
//! vector (beyond float rounding in the softmax's running sums).

/// Tokens per side of llama.cpp's attention tile.
pub(super) const TILE: usize = 64;

/// Reorders `items` (sequences of `len` tokens) so that as many tile borders as
/// possible fall between two sequences: before each border, a subset of what is left
/// that fills the gap to it exactly, else the fullest one, then the earliest left
/// crosses. Within a group, arrival order is kept.
pub(super) fn align<T>(items: &mut Vec<T>, len: impl Fn(&T) -> usize) {
    let total: usize = items.iter().map(&len).sum();
    if total < TILE {
        return;
    }
    let mut rest: Vec<T> = std::mem::take(items);
    let mut at = 0;
    while !rest.is_empty() {
        let gap = TILE - at % TILE;
        let lens: Vec<usize> = rest.iter().map(&len).collect();
        let chosen = fullest_subset(&lens, gap);
        let filled: usize = chosen.iter().filter_map(|&i| lens.get(i)).sum();
        // Taken from the back so the indices before stay valid; then put in order.
        let mut group: Vec<T> = chosen.iter().rev().map(|&i| rest.remove(i)).collect();
        group.reverse();
        items.extend(group);
        at += filled;
        if filled < gap && !rest.is_empty() {
            let first = rest.remove(0);
            at += len(&first);
            items.push(first);
        }
    }
}

/// Indices (ascending) of a subset of `lens` with the largest sum not over `cap`
/// (at most `TILE`), preferring the earliest items.
fn fullest_subset(lens: &[usize], cap: usize) -> Vec<usize> {
    let cap = cap.min(TILE);
    let mask: u128 = (1 << (cap + 1)) - 1;
    // reach[i]: bit s set where some subset of the first i lengths sums to s.
    let mut reach: Vec<u128> = vec![1];
    for &l in lens {
        let last = reach.last().copied().unwrap_or(1);
        let more = if l > cap { 0 } else { last << l };
        reach.push((last | more) & mask);
    }
    let all = reach.last().copied().unwrap_or(1);
    let mut s = (127 - all.leading_zeros()) as usize;
    let mut chosen = Vec::new();
    for (i, (&l, before)) in lens.iter().zip(&reach).enumerate().rev() {
        // Not reachable without item i: it is in.
        if (before >> s) & 1 == 0 {
            chosen.push(i);
            s -= l;
        }
    }
    chosen.reverse();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many tile borders a sequence crosses, for sequences of these lengths in order.
    fn crossed(lens: &[usize]) -> usize {
        let mut at = 0;
        let mut n = 0;
        for l in lens {
            if l > &0 && at / TILE != (at + l - 1) / TILE {
                n += (at + l - 1) / TILE - at / TILE;
            }
            at += l;
        }
        n
    }

    #[test]
    fn sequences_end_on_tile_borders_where_some_subset_fills_the_gap() {
        // Arrival order crosses all three borders of a 256-token pack.
        let mut lens = vec![
            13, 11, 13, 9, 14, 10, 12, 11, 13, 9, 14, 10, 12, 11, 13, 9, 14, 10, 12, 11, 13,
        ];
        let total: usize = lens.iter().sum();
        assert_eq!(total, 244);
        assert_eq!(crossed(&lens), 3);
        let mut sorted = lens.clone();
        align(&mut lens, |l| *l);
        assert_eq!(crossed(&lens), 0, "{lens:?}");
        // The same sequences, each once.
        let mut got = lens.clone();
        got.sort_unstable();
        sorted.sort_unstable();
        assert_eq!(got, sorted);
    }

    #[test]
    fn where_no_subset_fits_exactly_one_sequence_crosses_and_the_next_border_is_still_met() {
        // 30 + 30 leaves 4 to the border and nothing left fills it: the earliest left,
        // the 40, crosses it and ends at 100, and the 28 reaches 128.
        let mut lens = vec![30, 40, 30, 28];
        align(&mut lens, |l| *l);
        assert_eq!(lens, [30, 30, 40, 28]);
        assert_eq!(crossed(&lens), 1);
        // A sequence longer than a tile crosses whatever the order; the short one goes
        // first, so the long one ends on the next border.
        let mut lens = vec![100, 28];
        align(&mut lens, |l| *l);
        assert_eq!(lens, [28, 100]);
        assert_eq!(crossed(&lens), 1);
    }

    #[test]
    fn packs_under_one_tile_and_groups_keep_arrival_order() {
        let mut small = vec![(1, 20), (2, 30)];
        align(&mut small, |p| p.1);
        assert_eq!(small, [(1, 20), (2, 30)]);
        // (a, 32) and (c, 32) fill the first tile; their order is kept, then (b, 40).
        let mut items = vec![('a', 32), ('b', 40), ('c', 32)];
        align(&mut items, |p| p.1);
        assert_eq!(items, [('a', 32), ('c', 32), ('b', 40)]);
    }

    #[test]
    fn the_fullest_subset_is_exact_when_one_exists() {
        assert_eq!(fullest_subset(&[10, 20, 30, 5], 35), [0, 1, 3]);
        assert_eq!(fullest_subset(&[50, 60], 40), Vec::<usize>::new());
        assert_eq!(fullest_subset(&[], 64), Vec::<usize>::new());
        assert_eq!(fullest_subset(&[7, 9], 64), [0, 1]);
    }
}
