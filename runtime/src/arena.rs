//! Static placement of activations in one arena.
//!
//! Greedy, as TFLite's arena planner is: tensors are placed one by one, each at the lowest aligned
//! offset where it overlaps no already-placed tensor that is alive at the same time, in two orders
//! (largest first, and longest-lived first), keeping the smaller arena. Neither order is best for
//! every graph, and the better one usually reaches the bound (the most elements alive at one
//! step): BlazeFace's 393,600 floats largest first against 311,552 longest-lived first (bound
//! 311,296); MobileNetV3-Small with its squeeze-excite products folded 301,312 against 282,240
//! (the bound); MobileNetV2 and PP-OCRv4 det within 0.2 % of their bounds either way.
//!
//! Tensors of a page or more that are alive together also start at least 512 bytes apart modulo
//! 4 KiB. x86 cores guess whether a load depends on an earlier store from the low 12 bits of
//! their addresses: when an output and the residual added to it (or a layer's input) start at the
//! same 4 KiB phase and their planes are whole pages apart (64×64 and 32×32 f32 planes), every
//! load of a plane's row matches the store just made to the row before it in the other tensor,
//! and waits for it. BlazeFace ran 4-5 % faster with its tensors skewed (2-vCPU Zen 3, 1 thread).

/// One tensor to place: its size and the (inclusive) range of steps during which it is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Elements.
    pub len: usize,
    /// Step that writes it first.
    pub first: usize,
    /// Step that reads it last.
    pub last: usize,
}

impl Block {
    /// True when both blocks are alive during some step.
    pub fn lives_with(&self, other: &Block) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// f32 elements in 4 KiB: the span of the address bits that store-to-load dependence guesses
/// compare.
const PAGE: usize = 1024;

/// Elements (512 bytes) between the alternative starts of a block, and the least distance modulo
/// [`PAGE`] wanted between blocks that live together. A kernel stores a strip of output columns
/// and then loads the next strips of its inputs: phases only a strip (64 bytes) apart still match
/// those loads to the stores just made. BlazeFace at 1 thread (Zen 3): 1.13 ms with 512-byte
/// steps, 1.14 with 256 or 1024, 1.15-1.16 with 64.
const SKEW: usize = 128;

/// Alternative starts a block may take, [`SKEW`] elements apart (spread over the page).
const SKEWS: usize = PAGE / SKEW;

/// Offsets (multiples of `align` elements) for every block, and the arena length they need.
///
/// Blocks alive at the same time never share an element, and those of at least `PAGE` (1024)
/// elements start at least `SKEW` (128) apart modulo `PAGE` where the lowest gap that fits, or
/// the lowest with a page to spare, allows it; the result is deterministic.
pub fn place(blocks: &[Block], align: usize) -> (Vec<usize>, usize) {
    use std::cmp::Reverse;
    // Ties by birth, then index, keep the layouts deterministic.
    let mut largest: Vec<usize> = (0..blocks.len()).collect();
    largest.sort_by_key(|&i| (Reverse(blocks[i].len), blocks[i].first, i));
    let mut longest: Vec<usize> = (0..blocks.len()).collect();
    longest.sort_by_key(|&i| {
        (Reverse(blocks[i].last.saturating_sub(blocks[i].first)), Reverse(blocks[i].len), i)
    });
    let by_size = place_in_order(blocks, align, &largest);
    let by_life = place_in_order(blocks, align, &longest);
    // A tie keeps the order by size.
    if by_life.1 < by_size.1 {
        by_life
    } else {
        by_size
    }
}

/// [`place`] in one order of the blocks.
fn place_in_order(blocks: &[Block], align: usize, order: &[usize]) -> (Vec<usize>, usize) {
    let align = align.max(1);
    // Skewed starts stay multiples of `align`.
    let step = SKEW.next_multiple_of(align);
    let mut offsets = vec![0; blocks.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(blocks.len());
    let mut total = 0;
    for &i in order {
        let b = &blocks[i];
        if b.len == 0 {
            continue;
        }
        let live: Vec<usize> = placed.iter().copied().filter(|&j| blocks[j].lives_with(b)).collect();
        let mut busy: Vec<(usize, usize)> =
            live.iter().map(|&j| (offsets[j], offsets[j] + blocks[j].len)).collect();
        busy.sort_unstable();
        let first_fit = |len: usize| {
            let mut at = 0;
            for &(start, end) in &busy {
                if at + len <= start {
                    break;
                }
                at = at.max(end.next_multiple_of(align));
            }
            at
        };
        // The lowest start, or one up to a page after it, at least SKEW from every live block's 4 KiB
        // phase; when the lowest gap is too tight for that, the lowest gap a page larger; at
        // worst the start farthest from them.
        let fits = |o: usize| busy.iter().all(|&(start, end)| o + b.len <= start || end <= o);
        let distance = |o: usize| {
            let phase = o % PAGE;
            live.iter()
                .filter(|&&j| blocks[j].len >= PAGE)
                .map(|&j| {
                    let d = (offsets[j] % PAGE).abs_diff(phase);
                    d.min(PAGE - d)
                })
                .min()
                .unwrap_or(PAGE)
        };
        // Blocks shorter than a page hold no planes a page apart: packed as they come.
        let skews = if b.len >= PAGE { SKEWS } else { 1 };
        let candidates = |at: usize| (0..skews).map(move |s| at + s * step).filter(|&o| fits(o));
        let tight = first_fit(b.len);
        let roomy = || first_fit(b.len + PAGE);
        offsets[i] = candidates(tight)
            .find(|&o| distance(o) >= SKEW)
            .or_else(|| candidates(roomy()).find(|&o| distance(o) >= SKEW))
            .unwrap_or_else(|| {
                candidates(tight).max_by_key(|&o| (distance(o), std::cmp::Reverse(o))).unwrap_or(tight)
            });
        total = total.max(offsets[i] + b.len);
        placed.push(i);
    }
    (offsets, total.next_multiple_of(align))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_disjoint(blocks: &[Block], offsets: &[usize]) {
        for (i, a) in blocks.iter().enumerate() {
            for (j, b) in blocks.iter().enumerate().skip(i + 1) {
                if a.len > 0 && b.len > 0 && a.lives_with(b) {
                    let (x, y) = (offsets[i], offsets[j]);
                    assert!(x + a.len <= y || y + b.len <= x, "blocks {i} and {j} overlap");
                }
            }
        }
    }

    #[test]
    fn chain_reuses_memory() {
        // a -> b -> c -> d: only neighbours live together.
        let blocks: Vec<Block> = (0..4).map(|i| Block { len: 100, first: i, last: i + 1 }).collect();
        let (offsets, total) = place(&blocks, 16);
        check_disjoint(&blocks, &offsets);
        assert!(total < 400, "arena {total} should reuse memory");
        assert_eq!(total, 224, "two 100-element buffers, the second aligned to 112");
    }

    #[test]
    fn keeps_the_order_that_packs_tighter() {
        // Largest first places b (9, step 1) and then d (9, steps 1-2) above it, c (9, step 3)
        // at 0 and a (7, steps 2-3) above d: 25. Longest-lived first: d at 0, a and then b at 9
        // (they do not meet), c at 0: 18, the most alive at one step (steps 2 and 3).
        let blocks = [
            Block { len: 7, first: 2, last: 3 },
            Block { len: 9, first: 1, last: 1 },
            Block { len: 9, first: 3, last: 3 },
            Block { len: 9, first: 1, last: 2 },
        ];
        let (offsets, total) = place(&blocks, 1);
        check_disjoint(&blocks, &offsets);
        assert_eq!(total, 18, "{offsets:?}");
    }

    #[test]
    fn fills_gaps_and_aligns() {
        let blocks = [
            Block { len: 64, first: 0, last: 3 },
            Block { len: 10, first: 0, last: 1 },
            Block { len: 40, first: 2, last: 3 },
            Block { len: 5, first: 1, last: 2 },
        ];
        let (offsets, total) = place(&blocks, 16);
        check_disjoint(&blocks, &offsets);
        assert!(offsets.iter().all(|o| o % 16 == 0));
        assert_eq!(offsets[0], 0);
        assert_eq!(offsets[2], 64, "dies with block 0, lives with it");
        assert_eq!(offsets[1], 64, "reuses the space of block 2, which is born later");
        // Block 3 lives with all others: after block 1 (64..74) rounds up to 80, block 2 ends at 104.
        assert_eq!(offsets[3], 112);
        assert_eq!(total, 128);
    }

    #[test]
    fn blocks_alive_together_start_at_different_4k_phases() {
        // Whole pages (64×64 f32 planes), so packing them back to back would give every block
        // phase 0: a residual block (0) lives with the next two; the others only with neighbours.
        let mut blocks: Vec<Block> = (0..5).map(|i| Block { len: 4 * PAGE, first: i, last: i + 1 }).collect();
        blocks[0].last = 3;
        let (offsets, total) = place(&blocks, 16);
        check_disjoint(&blocks, &offsets);
        for (i, a) in blocks.iter().enumerate() {
            for (j, b) in blocks.iter().enumerate().skip(i + 1) {
                if a.lives_with(b) {
                    let d = (offsets[i] % PAGE).abs_diff(offsets[j] % PAGE);
                    assert!(d.min(PAGE - d) >= SKEW, "blocks {i} and {j} start {d} elements apart in a page");
                }
            }
        }
        // At most two skews beyond the three buffers the lifetimes need.
        assert!(total <= 3 * 4 * PAGE + 2 * SKEW, "arena of {total}");
        // Blocks of one page: each one's lowest start has a live block's phase, so it moves on.
        let tight = [
            Block { len: PAGE, first: 0, last: 2 },
            Block { len: PAGE, first: 0, last: 0 },
            Block { len: PAGE, first: 0, last: 2 },
            Block { len: PAGE, first: 1, last: 2 },
        ];
        let (offsets, _) = place(&tight, 16);
        check_disjoint(&tight, &offsets);
        assert_eq!(offsets[..3], [0, PAGE + SKEW, 2 * PAGE + 2 * SKEW], "each skewed past the one before");
        // Block 3 lives with 0 and 2 only: block 1's place, skewed off block 0's phase, suits it.
        assert_eq!(offsets[3], PAGE + SKEW, "{offsets:?}");
    }

    #[test]
    fn random_lifetimes_never_collide() {
        let mut seed = 12345u64;
        let mut next = |m: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % m
        };
        for _ in 0..50 {
            let blocks: Vec<Block> = (0..30)
                .map(|_| {
                    let first = next(20);
                    // Up to three pages: long enough to be skewed.
                    Block { len: next(3 * PAGE), first, last: first + next(6) }
                })
                .collect();
            for align in [16, 48] {
                let (offsets, total) = place(&blocks, align);
                check_disjoint(&blocks, &offsets);
                assert!(blocks.iter().zip(&offsets).all(|(b, o)| o + b.len <= total));
                assert!(offsets.iter().all(|o| o % align == 0), "offsets off the {align} alignment");
            }
        }
    }
}
