//! `AttentionMetadata::new` is the only way to make metadata (its fields are
//! private, and deserialising goes through it): it accepts every batch whose
//! lengths, block ids and slots are in range, keeping them as given, and
//! refuses each broken invariant naming the bad entry.

use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor, PAD_SLOT_ID};
use proptest::prelude::*;

/// The parts `AttentionMetadata::new` takes, valid by construction.
#[derive(Debug, Clone)]
struct Parts {
    block_size: usize,
    num_blocks: usize,
    query_start_loc: Vec<i32>,
    seq_lens: Vec<i32>,
    rows: Vec<Vec<i32>>,
    slot_mapping: Vec<i64>,
    causal: bool,
}

impl Parts {
    fn build(self) -> Result<AttentionMetadata, String> {
        AttentionMetadata::new(
            self.block_size,
            self.num_blocks,
            self.query_start_loc,
            self.seq_lens,
            BlockTableTensor::from_rows(&self.rows),
            self.slot_mapping,
            self.causal,
        )
        .map_err(|e| e.to_string())
    }
    fn num_tokens(&self) -> usize {
        *self.query_start_loc.last().unwrap() as usize
    }
}

/// 1 to 4 requests of 0 to 4 new tokens on 0 to 20 cached ones, blocks of 1
/// to 16 tokens, every block id and slot inside a cache of `num_blocks`.
fn valid_parts() -> impl Strategy<Value = Parts> {
    (
        1usize..=16,
        1usize..=6,
        prop::collection::vec((0i32..=4, 0i32..=20), 1..=4),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(block_size, num_blocks, reqs, causal, seed)| {
            let mut pick = seed;
            let mut next = |n: usize| {
                pick = pick
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((pick >> 33) as usize) % n
            };
            let mut query_start_loc = vec![0i32];
            let (mut seq_lens, mut rows) = (vec![], vec![]);
            for &(q, ctx) in &reqs {
                query_start_loc.push(query_start_loc.last().unwrap() + q);
                seq_lens.push(q + ctx);
                let blocks = ((q + ctx) as usize).div_ceil(block_size);
                rows.push((0..blocks).map(|_| next(num_blocks) as i32).collect());
            }
            let tokens = *query_start_loc.last().unwrap() as usize;
            let slots = (num_blocks * block_size) as i64;
            let slot_mapping = (0..tokens)
                .map(|_| match next(5) {
                    0 => PAD_SLOT_ID,
                    _ => next(slots as usize) as i64,
                })
                .collect();
            Parts {
                block_size,
                num_blocks,
                query_start_loc,
                seq_lens,
                rows,
                slot_mapping,
                causal,
            }
        })
}

/// The invariants of `AttentionMetadata`, one way to break each.
const BREAKS: usize = 10;

/// Breaks invariant `which` of `p`; returns the words the refusal must name.
fn broken(mut p: Parts, which: usize) -> (Parts, Vec<String>) {
    let n = p.seq_lens.len();
    let last = n - 1;
    let words = match which {
        0 => {
            p.block_size = 0;
            vec!["block_size 0".into()]
        }
        1 => {
            p.query_start_loc.push(*p.query_start_loc.last().unwrap());
            vec![
                "query_start_loc length".into(),
                format!("num_reqs + 1 = {}", n + 1),
            ]
        }
        2 => {
            p.query_start_loc[0] = 1;
            vec!["query_start_loc[0] 1".into()]
        }
        3 => {
            // The last request's query end before its start.
            p.query_start_loc[n] = p.query_start_loc[last] - 1;
            vec![format!("query_start_loc[{n}]")]
        }
        4 => {
            // A sequence shorter than its own query.
            let q = p.query_start_loc[n] - p.query_start_loc[last];
            p.query_start_loc[n] += 1;
            p.slot_mapping.push(PAD_SLOT_ID);
            p.seq_lens[last] = q;
            vec![format!("seq_lens[{last}]"), "query length".into()]
        }
        5 => {
            // One token more than the block table's columns hold.
            let cols = p.rows.iter().map(Vec::len).max().unwrap();
            p.seq_lens[last] = (cols * p.block_size) as i32 + 1;
            vec![format!("seq_lens[{last}]"), format!("{cols} columns")]
        }
        6 => {
            // A block id past the cache, in a request that uses a block.
            p.seq_lens[last] = p.seq_lens[last].max(1);
            let need = (p.seq_lens[last] as usize).div_ceil(p.block_size);
            let len = p.rows[last].len();
            p.rows[last].resize(need.max(len), 0);
            p.rows[last][0] = p.num_blocks as i32;
            vec![
                format!("block_table[{last}][0]"),
                format!("[0, {})", p.num_blocks),
            ]
        }
        7 => {
            p.seq_lens.push(0);
            p.query_start_loc.push(*p.query_start_loc.last().unwrap());
            vec!["block_table shape".into(), format!("{} rows", n + 1)]
        }
        8 => {
            p.query_start_loc[n] += 1;
            p.seq_lens[last] += 1;
            let need = (p.seq_lens[last] as usize).div_ceil(p.block_size);
            p.rows[last].resize(need, 0);
            vec![
                "slot_mapping length".into(),
                format!("all {} query tokens", p.num_tokens()),
            ]
        }
        _ => {
            let t = p.slot_mapping.len();
            let slots = p.num_blocks * p.block_size;
            p.slot_mapping.push(slots as i64);
            vec![
                format!("slot_mapping[{t}] {slots}"),
                format!("[0, {slots})"),
            ]
        }
    };
    (p, words)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn new_accepts_in_range_batches_and_keeps_what_it_was_given(p in valid_parts()) {
        let m = p.clone().build().unwrap();
        prop_assert_eq!(m.block_size(), p.block_size);
        prop_assert_eq!(m.num_blocks(), p.num_blocks);
        prop_assert_eq!(m.query_start_loc(), &p.query_start_loc[..]);
        prop_assert_eq!(m.seq_lens(), &p.seq_lens[..]);
        prop_assert_eq!(m.slot_mapping(), &p.slot_mapping[..]);
        prop_assert_eq!(m.causal(), p.causal);
        prop_assert_eq!(m.num_actual_tokens(), p.num_tokens());
        let longest_q = p.query_start_loc.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap();
        prop_assert_eq!(m.max_query_len(), longest_q);
        prop_assert_eq!(m.max_seq_len(), *p.seq_lens.iter().max().unwrap() as usize);
    }

    #[test]
    fn new_refuses_each_broken_invariant_naming_the_bad_entry(
        p in valid_parts(),
        which in 0..BREAKS,
    ) {
        let (bad, words) = broken(p, which);
        let e = bad.build().unwrap_err();
        for w in &words {
            prop_assert!(e.contains(w.as_str()), "break {}: {:?} not in {}", which, w, e);
        }
    }

    #[test]
    fn deserialising_goes_through_new(p in valid_parts(), which in 0..BREAKS) {
        let m = p.clone().build().unwrap();
        let json = serde_json::to_value(&m).unwrap();
        prop_assert_eq!(serde_json::from_value::<AttentionMetadata>(json.clone()).unwrap(), m);
        let (bad, words) = broken(p, which);
        let mut edited = json;
        edited["block_size"] = bad.block_size.into();
        edited["query_start_loc"] = serde_json::to_value(&bad.query_start_loc).unwrap();
        edited["seq_lens"] = serde_json::to_value(&bad.seq_lens).unwrap();
        edited["block_table"] = serde_json::to_value(BlockTableTensor::from_rows(&bad.rows)).unwrap();
        edited["slot_mapping"] = serde_json::to_value(&bad.slot_mapping).unwrap();
        let e = serde_json::from_value::<AttentionMetadata>(edited).unwrap_err().to_string();
        for w in &words {
            prop_assert!(e.contains(w.as_str()), "break {}: {:?} not in {}", which, w, e);
        }
    }
}
