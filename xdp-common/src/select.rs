//! Backend selection: the arithmetic behind `select = "nth"` and `select = "random"`,
//! and the weighted ring both walk.

use crate::maps::MAX_BACKENDS_PER_SERVICE;

/// `nth`: the backend for this packet and the cursor to store for the next one.
///
/// The cursor walks 0, 1, .., n-1, 0, .. — the same order as iptables' cascade of
/// `--every n --packet 0`, `--every n-1 --packet 0`, .. `--every 1`. Keeping the
/// cursor below `n` (instead of a free-running counter taken mod n) keeps the
/// order exact forever and stays in range when `n` shrinks.
#[inline(always)]
pub const fn nth(cursor: u32, n: u32) -> Option<(u32, u32)> {
    if n == 0 {
        return None;
    }
    let index = if cursor >= n { 0 } else { cursor };
    let next = if index + 1 >= n { 0 } else { index + 1 };
    Some((index, next))
}

/// `random`: maps a uniform 32-bit draw onto `0..n` by multiply-and-shift (Lemire),
/// with no division on the hot path; the bias is below n / 2^32.
#[inline(always)]
pub const fn random(draw: u32, n: u32) -> Option<u32> {
    if n == 0 {
        return None;
    }
    Some(((draw as u64 * n as u64) >> 32) as u32)
}

/// Fills `ring` with a smooth weighted round robin schedule (nginx's: each
/// round every backend gains its weight, the richest is picked and pays the
/// total) over `weights`, indexed by backend, and returns the schedule's length.
///
/// Weights are first divided by their greatest common divisor, so the ring is
/// as short as the ratios allow; weight 0 never appears. All weights 1 give
/// 0, 1, .., n-1: the plain `nth` order. `None` when there are more than
/// `MAX_BACKENDS_PER_SERVICE` weights or the schedule does not fit in `ring`.
pub fn smooth_ring(weights: &[u32], ring: &mut [u8]) -> Option<usize> {
    if weights.len() > MAX_BACKENDS_PER_SERVICE as usize {
        return None;
    }
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w));
    if divisor == 0 {
        return Some(0);
    }
    let mut reduced = [0i64; MAX_BACKENDS_PER_SERVICE as usize];
    for (r, &w) in reduced.iter_mut().zip(weights) {
        *r = (w / divisor) as i64;
    }
    let total: i64 = reduced.iter().sum();
    let len = total as usize;
    if len > ring.len() {
        return None;
    }
    let mut current = [0i64; MAX_BACKENDS_PER_SERVICE as usize];
    for entry in ring.iter_mut().take(len) {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        *entry = best as u8;
    }
    Some(len)
}

const fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(weights: &[u32]) -> ([u8; 256], usize) {
        let mut ring = [0u8; 256];
        let len = smooth_ring(weights, &mut ring).unwrap();
        (ring, len)
    }

    #[test]
    fn smooth_ring_equal_weights_is_nth_order() {
        let (ring, len) = ring_of(&[1, 1, 1, 1]);
        assert_eq!(&ring[..len], &[0, 1, 2, 3]);
        let (ring, len) = ring_of(&[7, 7, 7]);
        assert_eq!(&ring[..len], &[0, 1, 2], "divided by the common divisor");
    }

    #[test]
    fn smooth_ring_is_smooth_and_proportional() {
        // nginx's example: weights 5, 1, 1 give a a b a c a a, not a a a a a b c.
        let (ring, len) = ring_of(&[5, 1, 1]);
        assert_eq!(&ring[..len], &[0, 0, 1, 0, 2, 0, 0]);
        let (ring, len) = ring_of(&[3, 0, 1, 2]);
        assert_eq!(len, 6);
        let count = |k| ring[..len].iter().filter(|&&x| x == k).count();
        assert_eq!([count(0), count(1), count(2), count(3)], [3, 0, 1, 2]);
        // Smooth: in every window of the (cyclic) ring, a backend's share is
        // within one pick of its weight's share.
        for start in 0..len {
            for width in 1..=len {
                let picks = |k: u8| (0..width).filter(|i| ring[(start + i) % len] == k).count();
                for (k, w) in [(0u8, 3.0), (2, 1.0), (3, 2.0)] {
                    let ideal = width as f64 * w / 6.0;
                    assert!(
                        (picks(k) as f64 - ideal).abs() < 1.0 + 1e-9,
                        "k={k} start={start} width={width}"
                    );
                }
            }
        }
    }

    #[test]
    fn smooth_ring_limits() {
        let mut small = [0u8; 4];
        assert_eq!(
            smooth_ring(&[3, 2], &mut small),
            None,
            "5 entries do not fit in 4"
        );
        assert_eq!(smooth_ring(&[0, 0], &mut small), Some(0), "all draining");
        assert_eq!(smooth_ring(&[], &mut small), Some(0));
        let mut big = [0u8; crate::maps::RING_SIZE as usize];
        let heaviest = [crate::maps::MAX_WEIGHT; MAX_BACKENDS_PER_SERVICE as usize];
        assert_eq!(
            smooth_ring(&heaviest, &mut big),
            Some(64),
            "equal weights reduce to one each"
        );
        let mut uneven = heaviest;
        uneven[0] = crate::maps::MAX_WEIGHT - 1;
        assert_eq!(
            smooth_ring(&uneven, &mut big),
            Some(6399),
            "the largest ring fits"
        );
        assert_eq!(smooth_ring(&[1; 65], &mut big), None);
    }

    /// iptables' `statistic --mode nth --every k --packet 0` matches the first of
    /// every k packets that reach it; cascading k = n, n-1, .., 1 gives the order below.
    fn iptables_cascade(packets: usize, n: u32) -> [u32; 8] {
        let mut rule_counters = [0u32; 8];
        let mut hits = [0u32; 8];
        for _ in 0..packets {
            for rule in 0..n as usize {
                let every = n - rule as u32;
                let matched = rule_counters[rule] % every == 0;
                rule_counters[rule] += 1;
                if matched {
                    hits[rule] += 1;
                    break;
                }
            }
        }
        hits
    }

    #[test]
    fn nth_walks_in_order() {
        let mut cursor = 0;
        let picked: [u32; 9] = core::array::from_fn(|_| {
            let (index, next) = nth(cursor, 4).unwrap();
            cursor = next;
            index
        });
        assert_eq!(picked, [0, 1, 2, 3, 0, 1, 2, 3, 0]);
    }

    #[test]
    fn nth_matches_iptables_cascade() {
        for n in 1..=8u32 {
            for packets in [1usize, 5, 97, 1000] {
                let mut hits = [0u32; 8];
                let mut cursor = 0;
                for _ in 0..packets {
                    let (index, next) = nth(cursor, n).unwrap();
                    hits[index as usize] += 1;
                    cursor = next;
                }
                assert_eq!(
                    hits,
                    iptables_cascade(packets, n),
                    "n={n} packets={packets}"
                );
            }
        }
    }

    #[test]
    fn nth_survives_a_shrinking_set() {
        assert_eq!(nth(7, 4), Some((0, 1)));
        assert_eq!(nth(3, 4), Some((3, 0)));
        assert_eq!(nth(0, 0), None);
    }

    #[test]
    fn random_is_in_range_and_even() {
        assert_eq!(random(0, 4), Some(0));
        assert_eq!(random(u32::MAX, 4), Some(3));
        assert_eq!(random(5, 0), None);
        // Backend k gets the draws from ceil(k * 2^32 / n): check every boundary,
        // so each backend's share of the 2^32 draws differs from another's by at most one.
        for n in 1..=64u64 {
            let start = |k: u64| (k << 32).div_ceil(n);
            for k in 0..n {
                assert_eq!(
                    random(start(k) as u32, n as u32),
                    Some(k as u32),
                    "n={n} k={k}"
                );
                assert_eq!(random((start(k + 1) - 1) as u32, n as u32), Some(k as u32));
                let share = start(k + 1) - start(k);
                assert!(
                    share.abs_diff((1u64 << 32) / n) <= 1,
                    "n={n} k={k} share={share}"
                );
            }
        }
    }
}
