//! Backend selection: the arithmetic behind `select = "nth"` and `select = "random"`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
