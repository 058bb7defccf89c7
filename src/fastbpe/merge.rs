//! The BPE merge loop of `tokenizers` (`Word::merge_all` without dropout), on bytes: repeatedly
//! apply the adjacent pair with the lowest merge rank, the leftmost on ties. `tokenizers` does
//! this with a heap of (rank, position); a linear scan gives the same sequence of merges and is
//! faster on the short words of ordinary text, so the heap is only used for long words.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

/// A byte-level BPE model: byte -> initial token, (left, right) -> (rank, merged token).
pub(crate) struct Merges {
    pub(crate) byte_ids: [u32; 256],
    pairs: FxHashMap<u64, (u32, u32)>,
}

const NONE: (u32, u32) = (u32::MAX, u32::MAX);
/// Words with more bytes than this merge with the heap (the scan is quadratic).
const SCAN_MAX: usize = 128;

fn key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

impl Merges {
    pub(crate) fn new(byte_ids: [u32; 256], pairs: impl IntoIterator<Item = ((u32, u32), (u32, u32))>) -> Self {
        let mut map = FxHashMap::default();
        for ((a, b), v) in pairs {
            // A pair listed twice: the later entry wins, as in `tokenizers`' map.
            map.insert(key(a, b), v);
        }
        Merges { byte_ids, pairs: map }
    }

    fn get(&self, a: u32, b: u32) -> (u32, u32) {
        self.pairs.get(&key(a, b)).copied().unwrap_or(NONE)
    }

    /// Appends the tokens of `word` (one pre-tokenizer piece, as bytes) to `out`.
    pub(crate) fn encode(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.len() > SCAN_MAX {
            self.encode_heap(word, out);
        } else {
            self.encode_scan(word, out);
        }
    }

    fn encode_scan(&self, word: &[u8], out: &mut Vec<u32>) {
        let mut syms: Vec<u32> = word.iter().map(|&b| self.byte_ids[usize::from(b)]).collect();
        let mut ranks: Vec<(u32, u32)> = syms.windows(2).map(|w| self.get(w[0], w[1])).collect();
        // The leftmost lowest rank: `min_by_key` keeps the first of equal keys.
        while let Some((i, &(rank, new_id))) = ranks.iter().enumerate().min_by_key(|(_, r)| r.0) {
            if rank == u32::MAX {
                break;
            }
            syms[i] = new_id;
            syms.remove(i + 1);
            ranks.remove(i);
            if i > 0 {
                ranks[i - 1] = self.get(syms[i - 1], new_id);
            }
            if i < ranks.len() {
                ranks[i] = self.get(new_id, syms[i + 1]);
            }
        }
        out.extend_from_slice(&syms);
    }

    /// The same merges as [`Merges::encode`] with `tokenizers`' heap and linked list.
    fn encode_heap(&self, word: &[u8], out: &mut Vec<u32>) {
        let n = word.len();
        let mut id: Vec<u32> = word.iter().map(|&b| self.byte_ids[usize::from(b)]).collect();
        let mut alive = vec![true; n];
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut heap = BinaryHeap::with_capacity(n);
        for i in 0..n.saturating_sub(1) {
            let (rank, new_id) = self.get(id[i], id[i + 1]);
            if rank != u32::MAX {
                heap.push(Reverse((rank, i, new_id)));
            }
        }
        while let Some(Reverse((_, pos, new_id))) = heap.pop() {
            let right = next[pos];
            // A stale entry: its left symbol is gone, it has no right neighbour, or the pair
            // there changed (the same test as `tokenizers`: does the pair still give `new_id`).
            if !alive[pos] || right >= n || self.get(id[pos], id[right]).1 != new_id {
                continue;
            }
            id[pos] = new_id;
            alive[right] = false;
            next[pos] = next[right];
            if next[pos] < n {
                prev[next[pos]] = pos;
            }
            let p = prev[pos];
            if p < n {
                let (rank, nid) = self.get(id[p], new_id);
                if rank != u32::MAX {
                    heap.push(Reverse((rank, p, nid)));
                }
            }
            if next[pos] < n {
                let (rank, nid) = self.get(new_id, id[next[pos]]);
                if rank != u32::MAX {
                    heap.push(Reverse((rank, pos, nid)));
                }
            }
        }
        out.extend((0..n).filter(|&i| alive[i]).map(|i| id[i]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy model over the bytes a, b, c with overlapping merges.
    fn toy() -> Merges {
        let mut byte_ids = [u32::MAX; 256];
        for (i, b) in b"abc".iter().enumerate() {
            byte_ids[usize::from(*b)] = i as u32;
        }
        // 3 = ab, 4 = bc, 5 = ab+c, 6 = a+bc, 7 = aa
        Merges::new(
            byte_ids,
            [
                ((1, 2), (0, 4)),
                ((0, 1), (1, 3)),
                ((3, 2), (2, 5)),
                ((0, 4), (3, 6)),
                ((0, 0), (4, 7)),
            ],
        )
    }

    #[test]
    fn scan_and_heap_agree() {
        let m = toy();
        let mut state = 12345u64;
        for len in 0..300 {
            let word: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    b"abc"[(state >> 33) as usize % 3]
                })
                .collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            m.encode_scan(&word, &mut a);
            m.encode_heap(&word, &mut b);
            assert_eq!(a, b, "{}", String::from_utf8_lossy(&word));
        }
    }

    #[test]
    fn lowest_rank_first_then_leftmost() {
        let m = toy();
        let mut out = Vec::new();
        // b+c (rank 0) before a+b (rank 1): a bc -> a+bc (6).
        m.encode(b"abc", &mut out);
        assert_eq!(out, [6]);
        out.clear();
        // aaa: the leftmost aa merges, the last a stays.
        m.encode(b"aaa", &mut out);
        assert_eq!(out, [7, 0]);
    }
}
