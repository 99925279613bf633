//! Static placement of activations in one arena.
//!
//! Greedy by size, as TFLite's arena planner does: the largest tensors are placed first, each at the
//! lowest aligned offset where it overlaps no already-placed tensor that is alive at the same time.

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

/// Offsets (multiples of `align` elements) for every block, and the arena length they need.
///
/// Blocks alive at the same time never share an element; the result is deterministic.
pub fn place(blocks: &[Block], align: usize) -> (Vec<usize>, usize) {
    let align = align.max(1);
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    // Largest first; ties by birth then index keep the layout deterministic.
    order.sort_by_key(|&i| (std::cmp::Reverse(blocks[i].len), blocks[i].first, i));
    let mut offsets = vec![0; blocks.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(blocks.len());
    let mut total = 0;
    for &i in &order {
        let b = &blocks[i];
        if b.len == 0 {
            continue;
        }
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| blocks[j].lives_with(b))
            .map(|&j| (offsets[j], offsets[j] + blocks[j].len))
            .collect();
        busy.sort_unstable();
        let mut at = 0;
        for (start, end) in busy {
            if at + b.len <= start {
                break;
            }
            at = at.max(end.next_multiple_of(align));
        }
        offsets[i] = at;
        total = total.max(at + b.len);
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
                    Block { len: next(300), first, last: first + next(6) }
                })
                .collect();
            let (offsets, total) = place(&blocks, 16);
            check_disjoint(&blocks, &offsets);
            assert!(blocks.iter().zip(&offsets).all(|(b, o)| o + b.len <= total));
        }
    }
}
