//! Candidate lists and the selection kernels behind top-k, top-p and min-p.
//!
//! Nothing here sorts the whole vocabulary: top-k keeps a small heap while it
//! scans (or partially selects for large k), top-p partially selects ever
//! larger best-first chunks until the nucleus is complete. Every kernel breaks
//! ties by token id, so the kept set and its order are a function of the
//! logits alone; that is what makes a seed reproducible.

use std::cmp::Ordering;

/// A token and a score: a logit, a scaled logit or an unnormalised probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cand {
    pub id: u32,
    pub v: f32,
}

/// Rank order: larger score first, then smaller id.
#[inline]
pub(crate) fn rank(a: &Cand, b: &Cand) -> Ordering {
    b.v.total_cmp(&a.v).then(a.id.cmp(&b.id))
}

/// Up to this k, top-k scans the logits with a heap instead of collecting all.
pub(crate) const HEAP_TOP_K: usize = 1024;

/// The `k` best entries of `logits` (NaN and `-inf` skipped) into `out`,
/// sorted by [`rank`]. One pass; most entries cost a single comparison.
pub(crate) fn top_k_scan(logits: &[f32], k: usize, out: &mut Vec<Cand>) {
    out.clear();
    if k == 0 {
        return;
    }
    // A binary heap with the worst kept candidate at the root. Once it is
    // full, a whole 16-wide chunk whose maximum does not beat the root is
    // skipped after one vectorised pass; on language-model logits that is
    // almost every chunk.
    const L: usize = 16;
    let mut threshold = f32::NEG_INFINITY;
    for (ci, chunk) in logits.chunks(L).enumerate() {
        if out.len() == k {
            let m = chunk
                .iter()
                .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
            if m <= threshold {
                continue;
            }
        }
        for (j, &x) in chunk.iter().enumerate() {
            if x.is_nan() || x == f32::NEG_INFINITY {
                continue;
            }
            let c = Cand {
                id: (ci * L + j) as u32,
                v: x,
            };
            if out.len() < k {
                heap_push(out, c);
                if out.len() == k {
                    threshold = out[0].v;
                }
            } else if x > threshold {
                // Ids grow along the scan, so an equal value would rank lower.
                out[0] = c;
                heap_sift_down(out);
                threshold = out[0].v;
            }
        }
    }
    out.sort_unstable_by(rank);
}

/// Worse in rank order: the heap of [`top_k_scan`] keeps the worst at its root.
fn worse(a: &Cand, b: &Cand) -> bool {
    rank(a, b) == Ordering::Greater
}

fn heap_push(heap: &mut Vec<Cand>, c: Cand) {
    heap.push(c);
    let mut j = heap.len() - 1;
    while j > 0 {
        let parent = (j - 1) / 2;
        if !worse(&heap[j], &heap[parent]) {
            break;
        }
        heap.swap(j, parent);
        j = parent;
    }
}

fn heap_sift_down(heap: &mut [Cand]) {
    let n = heap.len();
    let mut j = 0;
    loop {
        let (l, r) = (2 * j + 1, 2 * j + 2);
        let mut w = j;
        if l < n && worse(&heap[l], &heap[w]) {
            w = l;
        }
        if r < n && worse(&heap[r], &heap[w]) {
            w = r;
        }
        if w == j {
            break;
        }
        heap.swap(j, w);
        j = w;
    }
}

/// Keep the `k >= 1` best candidates, in the order they are in. `work` is
/// scratch. Partial selection finds the k-th best; a filter keeps what ranks
/// at or above it, so the survivors' order does not depend on how the
/// selection permutes its copy.
pub(crate) fn top_k(c: &mut Vec<Cand>, k: usize, work: &mut Vec<Cand>) {
    if k >= c.len() {
        return;
    }
    work.clear();
    work.extend_from_slice(c);
    let (_, kth, _) = work.select_nth_unstable_by(k.max(1) - 1, rank);
    let kth = *kth;
    c.retain(|x| !worse(x, &kth));
}

/// Sum of the scores in four fixed lanes of `f64`.
pub(crate) fn total(c: &[Cand]) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = c.chunks_exact(4);
    let rest = chunks.remainder();
    for ch in chunks {
        for (a, x) in acc.iter_mut().zip(ch) {
            *a += f64::from(x.v);
        }
    }
    let mut t = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for x in rest {
        t += f64::from(x.v);
    }
    t
}

/// Probabilities in `[0, 1]` as fixed-point integers (units of `2^-30`),
/// so that sums are exact and the same in any order. A score below half a
/// unit (about 5e-10 of the best token's) weighs nothing in top-p's sums; it
/// can still be kept or drawn. Sums of up to `2^32` tokens fit in a `u64`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fixed;

impl Fixed {
    /// `v * 2^30` rounded to an integer, by the 2^52 trick: adding 2^52 to a
    /// double below it leaves the integer in the low bits. Exact, and it
    /// vectorises, unlike float-to-int conversions.
    #[inline]
    pub(crate) fn of(v: f32) -> u64 {
        const MAGIC: f64 = 4_503_599_627_370_496.0; // 2^52
        (f64::from(v) * 1_073_741_824.0 + MAGIC)
            .to_bits()
            .wrapping_sub(MAGIC.to_bits())
    }

    /// The total of `probs`, in four fixed lanes.
    pub(crate) fn total(probs: &[f32]) -> u64 {
        let mut acc = [0u64; 4];
        let chunks = probs.chunks_exact(4);
        let rest = chunks.remainder();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += Self::of(v);
            }
        }
        acc.iter().sum::<u64>() + rest.iter().map(|&v| Self::of(v)).sum::<u64>()
    }
}

/// The mass top-p must reach: `ceil(p * mass)`, at least 1 and at most `mass`.
pub(crate) fn target_mass(p: f32, mass: u64) -> u64 {
    ((f64::from(p) * mass as f64).ceil() as u64).clamp(1, mass.max(1))
}

/// In rank-sorted `c`, keep the prefix up to the token at which the running
/// mass reaches `target`; false (and `c` unchanged) if it never does.
pub(crate) fn keep_prefix_reaching(c: &mut Vec<Cand>, target: u64) -> bool {
    let mut cum = 0u64;
    for i in 0..c.len() {
        cum += Fixed::of(c[i].v);
        if cum >= target {
            c.truncate(i + 1);
            return true;
        }
    }
    false
}

/// The highest bucket at which the running mass reaches `target`, which is
/// reduced by the mass of the buckets above.
fn walk(hist: &[u64], target: &mut u64) -> usize {
    let mut lowest = 0;
    for b in (0..hist.len()).rev() {
        let m = hist[b];
        if m == 0 {
            continue;
        }
        lowest = b;
        if m >= *target {
            return b;
        }
        *target -= m;
    }
    lowest
}

/// Top-p's boundary: the first candidate in rank order at which the running
/// mass reaches `p` of the total (`None` when nothing has mass). `items` are
/// candidates with scores in `[0, 1]`. No sorting: scores in `[0, 1]` order like their bit patterns, so
/// histograms of mass by exponent (8 bits), then by mantissa (11 and 12
/// bits), each walked from the top, narrow the boundary down to one bit
/// pattern, where ties go by id. `work` is scratch.
pub(crate) fn nucleus_boundary<I>(items: I, p: f32, work: &mut Vec<Cand>) -> Option<Cand>
where
    I: Iterator<Item = Cand> + Clone,
{
    // Four interleaved histograms, so that runs of tokens in the same
    // binade do not wait on each other's stores.
    let exponent = |x: &Cand| (x.v.to_bits() >> 23 & 0xff) as usize;
    let mut hist4 = [[0u64; 256]; 4];
    for (i, x) in items.clone().enumerate() {
        hist4[i % 4][exponent(&x)] += Fixed::of(x.v);
    }
    let mut hist = [0u64; 4096];
    for (b, h) in hist[..256].iter_mut().enumerate() {
        *h = (hist4[0][b] + hist4[1][b]) + (hist4[2][b] + hist4[3][b]);
    }
    let mass: u64 = hist[..256].iter().sum();
    if mass == 0 {
        return None;
    }
    let mut target = target_mass(p, mass);
    let b = walk(&hist[..256], &mut target);
    work.clear();
    work.extend(items.filter(|x| exponent(x) == b));
    for (shift, bits) in [(12, 11), (0, 12)] {
        let key = |x: &Cand| (x.v.to_bits() >> shift & ((1 << bits) - 1)) as usize;
        let hist = &mut hist[..1 << bits];
        hist.fill(0);
        for x in work.iter() {
            hist[key(x)] += Fixed::of(x.v);
        }
        let b = walk(hist, &mut target);
        work.retain(|x| key(x) == b);
    }
    // One bit pattern left: equal scores, so rank order is id order.
    work.sort_unstable_by(rank);
    let mut found = *work.last()?;
    for x in work.iter() {
        let w = Fixed::of(x.v);
        if w >= target {
            found = *x;
            break;
        }
        target -= w;
    }
    Some(found)
}

/// True when `x` survives top-p with boundary `b`: it ranks at or above it.
/// Branch-free; for scores `>= 0`, whose bit patterns order like the scores.
#[inline]
pub(crate) fn in_nucleus(x: &Cand, b: &Cand) -> bool {
    let (xv, bv) = (x.v.to_bits(), b.v.to_bits());
    (xv > bv) | ((xv == bv) & (x.id <= b.id))
}

/// Append the items for which `keep` holds, with no branch per item: used
/// when the survivors are many and sit at random places in the vocabulary
/// (a large nucleus), where a branch would be mispredicted half the time.
pub(crate) fn extend_filtered<I, F>(out: &mut Vec<Cand>, items: I, keep: F)
where
    I: ExactSizeIterator<Item = Cand>,
    F: Fn(&Cand) -> bool,
{
    let start = out.len();
    out.resize(start + items.len(), Cand { id: 0, v: 0.0 });
    let mut len = start;
    for c in items {
        out[len] = c;
        len += usize::from(keep(&c));
    }
    out.truncate(len);
}

/// Top-p: with scores that are unnormalised probabilities in `[0, 1]`, keep
/// the smallest best-first set whose mass reaches `p` of the total (the token
/// that crosses the line is kept). `sorted` says `c` is in rank order; then
/// this is one walk, otherwise [`nucleus_boundary`] finds the token that
/// crosses the line and a filter keeps what ranks at or above it, in the
/// order `c` is in. Masses are exact fixed-point sums, so both ways give the
/// same set. `work` is scratch.
pub(crate) fn nucleus(c: &mut Vec<Cand>, p: f32, sorted: bool, work: &mut Vec<Cand>) {
    if c.len() <= 1 || p >= 1.0 {
        return;
    }
    if sorted {
        let mass: u64 = c.iter().map(|x| Fixed::of(x.v)).sum();
        keep_prefix_reaching(c, target_mass(p, mass));
    } else if let Some(b) = nucleus_boundary(c.iter().copied(), p, work) {
        c.retain(|x| in_nucleus(x, &b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(v: &[f32]) -> Vec<Cand> {
        v.iter()
            .enumerate()
            .map(|(i, &v)| Cand { id: i as u32, v })
            .collect()
    }

    #[test]
    fn heap_scan_equals_sort() {
        let logits: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.01)
            .collect();
        for k in [1, 2, 7, 64, 1013, 5000, 6000] {
            let mut heap = Vec::new();
            top_k_scan(&logits, k, &mut heap);
            let mut all = cands(&logits);
            all.sort_unstable_by(rank);
            all.truncate(k);
            assert_eq!(heap, all, "k = {k}");
            let mut sel = cands(&logits);
            top_k(&mut sel, k, &mut Vec::new());
            sel.sort_unstable_by(rank);
            assert_eq!(sel, all, "k = {k}");
        }
    }

    #[test]
    fn heap_scan_skips_nan_and_neg_inf() {
        let mut out = Vec::new();
        top_k_scan(&[f32::NAN, f32::NEG_INFINITY, 1.0, f32::NAN], 3, &mut out);
        assert_eq!(out, vec![Cand { id: 2, v: 1.0 }]);
    }

    #[test]
    fn nucleus_keeps_the_crossing_token() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 in scrambled order.
        // Probabilities 1/8, 1/2, 1/8, 1/4: exact in binary.
        for sorted in [false, true] {
            let mut c = cands(&[0.125, 0.5, 0.125, 0.25]);
            if sorted {
                c.sort_unstable_by(rank);
            }
            let ids = |p: f32, c: &mut Vec<Cand>| {
                let mut c = c.clone();
                nucleus(&mut c, p, sorted, &mut Vec::new());
                let mut ids: Vec<_> = c.iter().map(|c| c.id).collect();
                ids.sort_unstable();
                ids
            };
            assert_eq!(ids(0.5, &mut c), vec![1]);
            assert_eq!(ids(0.75, &mut c), vec![1, 3]);
            assert_eq!(ids(0.76, &mut c), vec![0, 1, 3]);
            assert_eq!(ids(0.875, &mut c), vec![0, 1, 3]);
            assert_eq!(ids(0.9, &mut c), vec![0, 1, 2, 3]);
        }
    }

    #[test]
    fn nucleus_by_selection_equals_nucleus_by_sorting() {
        let v: Vec<f32> = (0..3000).map(|i| 1.0 / (1.0 + (i % 977) as f32)).collect();
        for p in [0.01, 0.3, 0.9, 0.999, 1.0] {
            let mut c = cands(&v);
            nucleus(&mut c, p, false, &mut Vec::new());
            c.sort_unstable_by(rank);
            let mut s = cands(&v);
            s.sort_unstable_by(rank);
            nucleus(&mut s, p, true, &mut Vec::new());
            assert_eq!(c, s, "p = {p}");
        }
    }

    #[test]
    fn boundary_over_a_wide_range_equals_sorting() {
        // Scores spread over many binades, with repeats.
        let v: Vec<f32> = (0..5000)
            .map(|i| (-((i * 7919 % 3001) as f32) * 0.01).exp())
            .collect();
        for p in [0.001, 0.1, 0.5, 0.9, 0.99, 0.999_999] {
            let mut c = cands(&v);
            nucleus(&mut c, p, false, &mut Vec::new());
            c.sort_unstable_by(rank);
            let mut s = cands(&v);
            s.sort_unstable_by(rank);
            nucleus(&mut s, p, true, &mut Vec::new());
            assert_eq!(c, s, "p = {p}");
        }
    }

    #[test]
    fn nucleus_with_many_ties() {
        // 1000 equal scores: the nucleus is the lowest ids.
        let v = vec![0.5f32; 1000];
        let mut c = cands(&v);
        nucleus(&mut c, 0.25, false, &mut Vec::new());
        assert_eq!(c.len(), 250);
        assert!(c.iter().all(|c| c.id < 250));
    }

    #[test]
    fn fixed_point_sums_cannot_overflow() {
        assert_eq!(Fixed::of(1.0), 1 << 30);
        assert_eq!(Fixed::of(0.0), 0);
        assert!(u64::MAX / Fixed::of(1.0) >= 1 << 32);
    }
}
