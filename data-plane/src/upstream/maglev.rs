//! Consistent hashing with a weighted Maglev table (Eisenbud et al., NSDI
//! 2016; weights as in Envoy): every instance fills table slots in the order
//! of its own permutation, in turns proportional to its weight, so a key's
//! slot keeps its instance unless that instance leaves, and adding or
//! removing one of N instances moves about 1/N of the keys (the seed's
//! modulo hash moved most of them).
//!
//! The hash is our own fixed function ([`hash64`]): every data plane builds
//! the same table from the same instances and sends a key to the same
//! instance, whatever the Rust version.

use std::sync::Arc;

/// Table sizes (primes); the smallest one at least 100 times the number of
/// instances is used, for an even spread.
const TABLE_SIZES: [u64; 7] = [
    65_537, 131_101, 262_147, 524_309, 1_048_583, 2_097_169, 4_194_319,
];

/// A 64-bit hash of `bytes` (FNV-1a, then the murmur3 finaliser for
/// avalanche), stable across builds and platforms.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The murmur3 64-bit finaliser.
pub fn mix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// A Maglev lookup table over a list of instances.
#[derive(Debug)]
pub struct Maglev {
    table: Box<[u32]>,
    /// The (id, weight) list it was built from, to reuse it when unchanged.
    members: Vec<(Arc<str>, u32)>,
}

impl Maglev {
    /// Builds the table for `members` (id and weight, in the order the
    /// lookup's indexes refer to). Must not be empty.
    pub fn build(members: Vec<(Arc<str>, u32)>) -> Self {
        let n = members.len().max(1) as u64;
        let size = TABLE_SIZES
            .iter()
            .copied()
            .find(|&m| m >= n.saturating_mul(100))
            .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1]);
        let mut table = vec![u32::MAX; size as usize].into_boxed_slice();
        if members.is_empty() {
            return Self { table, members };
        }
        let max_weight = members.iter().map(|(_, w)| (*w).max(1)).max().unwrap_or(1) as f64;
        struct Entry {
            offset: u64,
            skip: u64,
            next: u64,
            weight: f64,
            target: f64,
        }
        let mut entries: Vec<Entry> = members
            .iter()
            .map(|(id, w)| Entry {
                offset: hash64(id.as_bytes(), 0x6d61_676c) % size,
                skip: hash64(id.as_bytes(), 0x736b_6970) % (size - 1) + 1,
                next: 0,
                weight: f64::from((*w).max(1)) / max_weight,
                target: 0.0,
            })
            .collect();
        let mut filled = 0u64;
        let mut iteration = 0u64;
        'fill: loop {
            iteration += 1;
            for (i, e) in entries.iter_mut().enumerate() {
                // A member of weight w takes a turn every 1/w iterations.
                if (iteration as f64) * e.weight < e.target {
                    continue;
                }
                e.target += 1.0;
                loop {
                    let slot = ((e.offset + e.skip * e.next) % size) as usize;
                    e.next += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        break;
                    }
                }
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Self { table, members }
    }

    /// Whether it was built from exactly `members`.
    pub fn built_from(&self, members: &[(Arc<str>, u32)]) -> bool {
        self.members == members
    }

    /// Index (into the members) of the instance for `hash`.
    #[inline]
    pub fn lookup(&self, hash: u64) -> usize {
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }

    /// Number of slots.
    pub fn size(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[String], weight: u32) -> Vec<(Arc<str>, u32)> {
        ids.iter()
            .map(|id| (Arc::from(id.as_str()), weight))
            .collect()
    }

    fn owner(m: &Maglev, ids: &[String], key: u64) -> String {
        ids[m.lookup(hash64(&key.to_le_bytes(), 0))].clone()
    }

    const KEYS: u64 = 100_000;

    /// Share of keys whose instance changes from `before` to `after`.
    fn moved(before: &[String], after: &[String]) -> f64 {
        let (a, b) = (
            Maglev::build(members(before, 1)),
            Maglev::build(members(after, 1)),
        );
        let moved = (0..KEYS)
            .filter(|&k| owner(&a, before, k) != owner(&b, after, k))
            .count();
        moved as f64 / KEYS as f64
    }

    fn modulo_moved(n: usize) -> f64 {
        let moved = (0..KEYS)
            .filter(|&k| {
                let h = hash64(&k.to_le_bytes(), 0);
                h % n as u64 != h % (n as u64 + 1)
            })
            .count();
        moved as f64 / KEYS as f64
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("app-{i}")).collect()
    }

    #[test]
    fn the_hash_is_stable() {
        // Every data plane must agree: these values are part of the contract.
        assert_eq!(hash64(b"", 0), mix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash64(b"user-1", 0), 0x41a2_fca5_c684_01c5);
        assert_eq!(hash64(b"app-0", 0x6d61_676c), 0x7943_118e_2d6a_10b6);
        assert_eq!(hash64(b"user-1", 0), hash64(b"user-1", 0));
        assert_ne!(hash64(b"user-1", 0), hash64(b"user-2", 0));
        assert_ne!(hash64(b"user-1", 0), hash64(b"user-1", 1));
    }

    #[test]
    fn keys_spread_evenly_and_follow_weights() {
        let names = ids(4);
        let m = Maglev::build(members(&names, 1));
        let mut counts = [0usize; 4];
        for slot in m.table.iter() {
            counts[*slot as usize] += 1;
        }
        let expected = m.size() / 4;
        for c in counts {
            assert!(c.abs_diff(expected) * 100 < expected, "{counts:?}");
        }
        let weighted: Vec<(Arc<str>, u32)> = vec![(Arc::from("a"), 3), (Arc::from("b"), 1)];
        let m = Maglev::build(weighted);
        let a = m.table.iter().filter(|&&i| i == 0).count() as f64 / m.size() as f64;
        assert!((a - 0.75).abs() < 0.01, "a holds {a}");
    }

    #[test]
    fn adding_or_removing_one_of_n_moves_about_one_nth_of_keys() {
        let mut report = Vec::new();
        for n in [3usize, 5, 10, 20] {
            let before = ids(n);
            let after = ids(n + 1);
            let added = moved(&before, &after);
            let ideal_added = 1.0 / (n as f64 + 1.0);
            // Removing an instance from the middle of the list.
            let mut fewer = before.clone();
            fewer.remove(n / 2);
            let removed = moved(&before, &fewer);
            let ideal_removed = 1.0 / n as f64;
            let modulo = modulo_moved(n);
            report.push(format!(
                "N={n}: add one -> {:.1}% moved (ideal {:.1}%), remove one -> {:.1}% (ideal {:.1}%), modulo hash -> {:.1}%",
                added * 100.0,
                ideal_added * 100.0,
                removed * 100.0,
                ideal_removed * 100.0,
                modulo * 100.0
            ));
            assert!(
                added < ideal_added * 1.25,
                "N={n}: adding moved {added}, ideal {ideal_added}"
            );
            assert!(
                removed < ideal_removed * 1.25,
                "N={n}: removing moved {removed}, ideal {ideal_removed}"
            );
            assert!(added > ideal_added * 0.75 && removed > ideal_removed * 0.75);
            assert!(modulo > 0.5, "modulo moved only {modulo}");
        }
        println!("consistent-hash remapping (Maglev, {KEYS} keys):");
        for line in report {
            println!("  {line}");
        }
    }

    #[test]
    fn tables_are_reused_only_for_the_same_members() {
        let m = Maglev::build(members(&ids(3), 1));
        assert!(m.built_from(&members(&ids(3), 1)));
        assert!(!m.built_from(&members(&ids(3), 2)));
        assert!(!m.built_from(&members(&ids(4), 1)));
    }
}
