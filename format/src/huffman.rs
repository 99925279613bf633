//! Canonical Huffman coding of codebook index streams (encoding 4 of `SPEC.md`, format 1.1).
//!
//! A Huffman blob is a 12-byte header (`u64 bit_count`, `u16 symbols`, `u16 reserved`), one code
//! length per codebook entry, then the code words of every index of the tensor, row-major, written
//! most significant bit first. The writer builds optimal length-limited codes (package-merge); the
//! reader checks the code-length table and the stream and decodes once into the packed layout.

/// Longest code word allowed, in bits. 2^12 ≥ 256 symbols, and a 4096-entry decode table fits L1.
pub(crate) const MAX_CODE_LEN: u8 = 12;
/// Bytes before the code-length table.
pub(crate) const HEADER_LEN: usize = 12;

/// Code lengths (0 = unused symbol) of an optimal prefix code for `freqs` with no code longer than
/// `limit` bits (package-merge). A lone used symbol gets length 1. Needs `#used <= 2^limit`.
pub(crate) fn limited_code_lengths(freqs: &[u64], limit: u8) -> Vec<u8> {
    let mut lengths = vec![0u8; freqs.len()];
    let mut syms: Vec<usize> = (0..freqs.len()).filter(|&s| freqs[s] > 0).collect();
    match syms.len() {
        0 => return lengths,
        1 => {
            lengths[syms[0]] = 1;
            return lengths;
        }
        _ => {}
    }
    debug_assert!(syms.len() <= 1 << limit);
    // Ties broken by symbol: the result depends only on `freqs`.
    syms.sort_by_key(|&s| (freqs[s], s));
    let n = syms.len();
    // An item is a weight and, per leaf (in sorted order), how often the item contains it.
    let leaves: Vec<(u64, Vec<u8>)> = syms
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let mut c = vec![0u8; n];
            c[i] = 1;
            (freqs[s], c)
        })
        .collect();
    let mut list = leaves.clone();
    for _ in 1..limit {
        let mut packages = list
            .chunks_exact(2)
            .map(|p| (p[0].0 + p[1].0, p[0].1.iter().zip(&p[1].1).map(|(a, b)| a + b).collect::<Vec<u8>>()));
        let mut merged = Vec::with_capacity(n + list.len() / 2);
        let mut next_pkg = packages.next();
        let mut lv = leaves.iter().peekable();
        loop {
            match (lv.peek(), next_pkg.take()) {
                (Some(l), Some(p)) if l.0 <= p.0 => {
                    merged.push((*l).clone());
                    lv.next();
                    next_pkg = Some(p);
                }
                (_, Some(p)) => {
                    merged.push(p);
                    next_pkg = packages.next();
                }
                (Some(l), None) => {
                    merged.push((*l).clone());
                    lv.next();
                }
                (None, None) => break,
            }
        }
        list = merged;
    }
    for item in &list[..2 * n - 2] {
        for (i, &c) in item.1.iter().enumerate() {
            lengths[syms[i]] += c;
        }
    }
    lengths
}

/// Canonical code words for `lengths` (DEFLATE's construction): shorter codes first, and within a
/// length, increasing symbol order gets increasing consecutive codes. Unused symbols get 0.
pub(crate) fn canonical_codes(lengths: &[u8]) -> Vec<u32> {
    let mut count = [0u32; MAX_CODE_LEN as usize + 1];
    for &l in lengths.iter().filter(|&&l| l != 0) {
        count[l as usize] += 1;
    }
    let mut next = [0u32; MAX_CODE_LEN as usize + 1];
    let mut code = 0u32;
    for len in 1..=MAX_CODE_LEN as usize {
        code = (code + count[len - 1]) << 1;
        next[len] = code;
    }
    lengths
        .iter()
        .map(|&l| {
            if l == 0 {
                return 0;
            }
            let c = next[l as usize];
            next[l as usize] += 1;
            c
        })
        .collect()
}

/// Calls `f` with every index of `rows` packed rows (`row_stride` bytes each, LSB-first at `bits`).
fn for_each_index(indices: &[u8], bits: u8, row_len: usize, row_stride: usize, mut f: impl FnMut(u8)) {
    if row_stride == 0 {
        return;
    }
    let mask = (1u32 << bits) - 1;
    for row in indices.chunks_exact(row_stride) {
        let (mut acc, mut have) = (0u32, 0u32);
        let mut bytes = row.iter();
        for _ in 0..row_len {
            if have < bits as u32 {
                acc |= (*bytes.next().unwrap_or(&0) as u32) << have;
                have += 8;
            }
            f((acc & mask) as u8);
            acc >>= bits;
            have -= bits as u32;
        }
    }
}

/// Huffman-codes the packed indices of a valid codebook tensor (every index `< entries`).
pub(crate) fn encode(indices: &[u8], bits: u8, entries: usize, row_len: usize, row_stride: usize) -> Vec<u8> {
    let mut freqs = vec![0u64; entries];
    for_each_index(indices, bits, row_len, row_stride, |s| freqs[s as usize] += 1);
    let lengths = limited_code_lengths(&freqs, MAX_CODE_LEN);
    let codes = canonical_codes(&lengths);
    let bit_count: u64 = freqs.iter().zip(&lengths).map(|(&f, &l)| f * l as u64).sum();
    let stream_len = bit_count.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(HEADER_LEN + entries + stream_len);
    out.extend_from_slice(&bit_count.to_le_bytes());
    out.extend_from_slice(&(entries as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&lengths);
    // MSB-first: the low `n` bits of `acc` are pending, oldest highest.
    let (mut acc, mut n) = (0u64, 0u32);
    for_each_index(indices, bits, row_len, row_stride, |s| {
        let len = lengths[s as usize] as u32;
        acc = (acc << len) | codes[s as usize] as u64;
        n += len;
        while n >= 8 {
            out.push((acc >> (n - 8)) as u8);
            n -= 8;
        }
    });
    if n > 0 {
        out.push((acc << (8 - n)) as u8);
    }
    debug_assert_eq!(out.len(), HEADER_LEN + entries + stream_len);
    out
}

/// A checked Huffman blob: code-length table and stream.
pub(crate) struct Parsed<'a> {
    lengths: &'a [u8],
    stream: &'a [u8],
    bit_count: u64,
}

/// Checks the header, the code-length table and the sizes of a Huffman blob that must code `numel`
/// indices of a codebook with `entries` entries. Allocates nothing.
pub(crate) fn parse(blob: &[u8], entries: usize, numel: usize) -> Result<Parsed<'_>, String> {
    if blob.len() < HEADER_LEN {
        return Err(format!("blob of {} bytes is shorter than the {HEADER_LEN}-byte header", blob.len()));
    }
    let bit_count = u64::from_le_bytes(blob[0..8].try_into().expect("8 bytes"));
    let symbols = u16::from_le_bytes([blob[8], blob[9]]) as usize;
    let reserved = u16::from_le_bytes([blob[10], blob[11]]);
    if reserved != 0 {
        return Err(format!("reserved header field is {reserved}, not 0"));
    }
    if symbols != entries {
        return Err(format!(
            "code-length table declares {symbols} symbols but the codebook has {entries} entries"
        ));
    }
    // numel < 2^60 (checked with the shape), so the product below cannot overflow.
    let numel = numel as u64;
    // Every index costs 1..=MAX_CODE_LEN bits: this bounds the decoded size by the blob size.
    if bit_count < numel || bit_count > numel * MAX_CODE_LEN as u64 {
        return Err(format!(
            "stream declares {bit_count} bits for {numel} indices (each index takes 1..={MAX_CODE_LEN} bits)"
        ));
    }
    let stream_len = bit_count.div_ceil(8);
    let want = (HEADER_LEN + symbols) as u64 + stream_len;
    if blob.len() as u64 != want {
        return Err(format!(
            "blob is {} bytes but header, {symbols} code lengths and a {bit_count}-bit stream take {want}",
            blob.len()
        ));
    }
    let lengths = &blob[HEADER_LEN..HEADER_LEN + symbols];
    check_lengths(lengths)?;
    let stream = &blob[HEADER_LEN + symbols..];
    let pad = (8 - bit_count % 8) % 8;
    if pad != 0 && stream.last().is_some_and(|&b| b & ((1u8 << pad) - 1) != 0) {
        return Err("padding bits after the last code word are not zero".into());
    }
    Ok(Parsed { lengths, stream, bit_count })
}

/// A code-length table must be a complete prefix code (Kraft sum exactly 1) with lengths in
/// `0..=MAX_CODE_LEN`, or a single used symbol of length 1.
fn check_lengths(lengths: &[u8]) -> Result<(), String> {
    if let Some((s, &l)) = lengths.iter().enumerate().find(|(_, &l)| l > MAX_CODE_LEN) {
        return Err(format!("code length {l} of symbol {s} exceeds the limit of {MAX_CODE_LEN}"));
    }
    let used: Vec<u8> = lengths.iter().copied().filter(|&l| l != 0).collect();
    if used.is_empty() {
        return Err("code-length table gives no symbol a code".into());
    }
    if used == [1] {
        return Ok(());
    }
    let kraft: u64 = used.iter().map(|&l| 1u64 << (MAX_CODE_LEN - l)).sum();
    let full = 1u64 << MAX_CODE_LEN;
    if kraft > full {
        return Err(format!("code lengths are over-subscribed (Kraft sum {kraft}/{full} > 1)"));
    }
    if kraft < full {
        return Err(format!("code lengths are incomplete (Kraft sum {kraft}/{full} < 1)"));
    }
    Ok(())
}

/// MSB-first bit reader: the top `nbits` bits of `buf` are the next stream bits; bits past the end
/// of the stream read as zero (the caller compares the bits it consumed with the declared count).
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    nbits: u32,
}

impl BitReader<'_> {
    /// Tops `buf` up to at least 56 valid bits.
    #[inline]
    fn refill(&mut self) {
        if let Some(word) = self.data.get(self.pos..self.pos + 8) {
            // Bits below the whole bytes taken are the correct stream continuation, so OR-ing
            // them in again at the next refill is harmless.
            let w = u64::from_be_bytes(word.try_into().expect("8 bytes"));
            self.buf |= w >> self.nbits;
            let take = (63 - self.nbits) / 8;
            self.pos += take as usize;
            self.nbits += take * 8;
        } else {
            while self.nbits <= 56 {
                let b = self.data.get(self.pos).copied().unwrap_or(0);
                self.buf |= (b as u64) << (56 - self.nbits);
                self.pos += 1;
                self.nbits += 8;
            }
        }
    }
}

/// Geometry of the packed output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packing {
    pub bits: u8,
    pub rows: usize,
    pub row_len: usize,
    pub row_stride: usize,
}

/// Decodes a checked blob into `out` (`rows * row_stride` bytes, zeroed), packing each row's
/// indices LSB-first at `bits` bits. Fails on an invalid code word, a stream too short for the
/// indices, or bits left over after the last index.
pub(crate) fn decode(p: &Parsed<'_>, g: Packing, out: &mut [u8]) -> Result<(), String> {
    if g.row_len == 0 || g.rows == 0 {
        return if p.bit_count == 0 { Ok(()) } else { Err(format!("{} bits left over", p.bit_count)) };
    }
    let max_len = p.lengths.iter().copied().max().unwrap_or(1) as u32;
    let single = single_table(p.lengths, max_len);
    // A pair table on the next PAIR_BITS bits halves the serial table lookups; building it costs
    // 2^PAIR_BITS steps, so only when there are many more indices than that.
    let pairs = (g.rows * g.row_len >= 2 << PAIR_BITS).then(|| pair_table(&single, max_len));
    let mut br = BitReader { data: p.stream, pos: 0, buf: 0, nbits: 0 };
    let peek_shift = 64 - max_len;
    let bits = g.bits as u32;
    let consumed = |br: &BitReader<'_>| br.pos as u64 * 8 - br.nbits as u64;
    let bad_code = |br: &BitReader<'_>, i: usize, r: usize| {
        let at = consumed(br);
        if at + max_len as u64 > p.bit_count {
            format!("stream of {} bits ends before index {i} of row {r}", p.bit_count)
        } else {
            format!("invalid code word at bit {at} (index {i} of row {r})")
        }
    };
    for (r, row) in out.chunks_exact_mut(g.row_stride).enumerate().take(g.rows) {
        // Pending packed bits, flushed 4 bytes at a time (those bytes lie wholly inside the row).
        let (mut acc, mut nacc, mut w) = (0u64, 0u32, 0usize);
        let mut i = 0;
        if let Some(pairs) = &pairs {
            while i + 2 <= g.row_len {
                if br.nbits < PAIR_BITS {
                    br.refill();
                }
                let e = pairs[(br.buf >> (64 - PAIR_BITS)) as usize];
                let n = e >> 24;
                if n == 0 {
                    return Err(bad_code(&br, i, r));
                }
                let len = (e >> 16) & 0xff;
                br.buf <<= len;
                br.nbits -= len;
                // Two symbols: sym1 | sym2 << bits; one: sym1 (sym2 is 0 then).
                acc |= (((e & 0xff) | ((e >> 8) & 0xff) << bits) as u64) << nacc;
                nacc += bits * n;
                i += n as usize;
                if nacc >= 32 {
                    row[w..w + 4].copy_from_slice(&(acc as u32).to_le_bytes());
                    w += 4;
                    acc >>= 32;
                    nacc -= 32;
                }
            }
        }
        while i < g.row_len {
            if br.nbits < max_len {
                br.refill();
            }
            let e = single[(br.buf >> peek_shift) as usize];
            let len = (e >> 8) as u32;
            if len == 0 {
                return Err(bad_code(&br, i, r));
            }
            br.buf <<= len;
            br.nbits -= len;
            acc |= ((e & 0xff) as u64) << nacc;
            nacc += bits;
            i += 1;
            if nacc >= 32 {
                row[w..w + 4].copy_from_slice(&(acc as u32).to_le_bytes());
                w += 4;
                acc >>= 32;
                nacc -= 32;
            }
        }
        while nacc > 0 {
            row[w] = acc as u8;
            w += 1;
            acc >>= 8;
            nacc = nacc.saturating_sub(8);
        }
        if consumed(&br) > p.bit_count {
            return Err(format!("stream of {} bits ends before the end of row {r}", p.bit_count));
        }
    }
    let used = consumed(&br);
    if used != p.bit_count {
        return Err(format!(
            "{} bits left over after the last index (the indices use {used} of {})",
            p.bit_count - used,
            p.bit_count
        ));
    }
    Ok(())
}

/// Lookup table on the next `max_len` stream bits: `symbol | length << 8`, length 0 for bit
/// patterns that start no code word (only with a lone 1-bit code).
fn single_table(lengths: &[u8], max_len: u32) -> Vec<u16> {
    let mut table = vec![0u16; 1 << max_len];
    for ((s, &l), &c) in lengths.iter().enumerate().zip(&canonical_codes(lengths)) {
        if l != 0 {
            let shift = max_len - l as u32;
            let start = (c << shift) as usize;
            table[start..start + (1 << shift)].fill(s as u16 | (l as u16) << 8);
        }
    }
    table
}

/// Width of the two-code-word lookup table.
const PAIR_BITS: u32 = MAX_CODE_LEN as u32;

/// Lookup table on the next [`PAIR_BITS`] stream bits decoding up to two code words:
/// `sym1 | sym2 << 8 | total length << 16 | count << 24` (count 0: invalid code word).
fn pair_table(single: &[u16], max_len: u32) -> Vec<u32> {
    let mask = (1usize << PAIR_BITS) - 1;
    let lookup = |bits: usize| single[bits >> (PAIR_BITS - max_len)] as u32;
    (0..1usize << PAIR_BITS)
        .map(|idx| {
            let e1 = lookup(idx);
            let l1 = e1 >> 8;
            if l1 == 0 {
                return 0;
            }
            let e2 = lookup((idx << l1) & mask);
            let l2 = e2 >> 8;
            if l2 != 0 && l1 + l2 <= PAIR_BITS {
                (e1 & 0xff) | (e2 & 0xff) << 8 | (l1 + l2) << 16 | 2 << 24
            } else {
                (e1 & 0xff) | l1 << 16 | 1 << 24
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kraft(lengths: &[u8]) -> u64 {
        lengths.iter().filter(|&&l| l != 0).map(|&l| 1u64 << (MAX_CODE_LEN - l)).sum()
    }

    fn cost(freqs: &[u64], lengths: &[u8]) -> u64 {
        freqs.iter().zip(lengths).map(|(&f, &l)| f * l as u64).sum()
    }

    /// Unlimited Huffman cost by repeatedly merging the two lightest weights.
    fn huffman_cost(freqs: &[u64]) -> u64 {
        let mut w: Vec<u64> = freqs.iter().copied().filter(|&f| f > 0).collect();
        let mut total = 0;
        while w.len() > 1 {
            w.sort_unstable_by(|a, b| b.cmp(a));
            let (a, b) = (w.pop().unwrap(), w.pop().unwrap());
            total += a + b;
            w.push(a + b);
        }
        total
    }

    #[test]
    fn package_merge_is_optimal_when_the_limit_does_not_bind() {
        let cases: [&[u64]; 4] = [&[5, 9, 12, 13, 16, 45], &[1, 1], &[3, 0, 0, 7, 1, 1, 1, 0, 20], &[10; 16]];
        for freqs in cases {
            let l = limited_code_lengths(freqs, MAX_CODE_LEN);
            assert_eq!(kraft(&l), 1 << MAX_CODE_LEN, "{freqs:?} → {l:?}");
            assert_eq!(cost(freqs, &l), huffman_cost(freqs), "{freqs:?} → {l:?}");
            assert!(freqs.iter().zip(&l).all(|(&f, &l)| (f == 0) == (l == 0)));
        }
    }

    #[test]
    fn package_merge_respects_the_limit() {
        // Fibonacci weights give an unlimited Huffman code of depth n - 1.
        let mut fib = vec![1u64, 1];
        while fib.len() < 30 {
            fib.push(fib[fib.len() - 1] + fib[fib.len() - 2]);
        }
        for limit in [5u8, 8, 12] {
            let l = limited_code_lengths(&fib, limit);
            assert!(l.iter().all(|&x| (1..=limit).contains(&x)), "{l:?}");
            assert_eq!(kraft(&l), 1 << MAX_CODE_LEN);
            // Never better than the unlimited optimum.
            assert!(cost(&fib, &l) >= huffman_cost(&fib));
        }
        // A complete set of 256 equal weights needs exactly 8 bits each.
        assert_eq!(limited_code_lengths(&[7; 256], 8), vec![8; 256]);
    }

    #[test]
    fn lone_symbol_gets_one_bit_and_empty_input_none() {
        assert_eq!(limited_code_lengths(&[0, 0, 9, 0], 12), vec![0, 0, 1, 0]);
        assert_eq!(limited_code_lengths(&[0, 0], 12), vec![0, 0]);
    }

    #[test]
    fn canonical_codes_follow_deflate() {
        // RFC 1951 §3.2.2 example: lengths (3,3,3,3,3,2,4,4).
        let codes = canonical_codes(&[3, 3, 3, 3, 3, 2, 4, 4]);
        assert_eq!(codes, vec![0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111]);
        // SPEC.md's example.
        assert_eq!(canonical_codes(&[2, 1, 3, 3]), vec![0b10, 0b0, 0b110, 0b111]);
    }

    #[test]
    fn length_tables_are_checked() {
        assert!(check_lengths(&[1, 1]).is_ok());
        assert!(check_lengths(&[0, 1, 0]).is_ok());
        assert!(check_lengths(&[1, 1, 1]).unwrap_err().contains("over-subscribed"));
        assert!(check_lengths(&[1, 2, 0]).unwrap_err().contains("incomplete"));
        assert!(check_lengths(&[0, 2]).unwrap_err().contains("incomplete"));
        assert!(check_lengths(&[0, 0]).unwrap_err().contains("no symbol"));
        assert!(check_lengths(&[1, 13]).unwrap_err().contains("exceeds"));
    }

    #[test]
    fn encode_then_decode_is_identity() {
        // 3 rows of 5 indices at 3 bits, skewed.
        let idx = [0u8, 0, 0, 1, 0, 2, 0, 0, 5, 0, 0, 0, 7, 0, 0];
        let (bits, row_len) = (3u8, 5usize);
        let row_stride = (row_len * 3).div_ceil(8);
        let mut packed = vec![0u8; 3 * row_stride];
        for (k, &v) in idx.iter().enumerate() {
            let (r, i) = (k / row_len, k % row_len);
            for b in 0..3 {
                if v >> b & 1 == 1 {
                    let bit = i * 3 + b;
                    packed[r * row_stride + bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        let blob = encode(&packed, bits, 8, row_len, row_stride);
        let p = parse(&blob, 8, idx.len()).unwrap();
        let mut out = vec![0u8; packed.len()];
        decode(&p, Packing { bits, rows: 3, row_len, row_stride }, &mut out).unwrap();
        assert_eq!(out, packed);
    }
}
