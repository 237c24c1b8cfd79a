//! Helpers shared by the sim's integration tests.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Block-table rows for requests `(context_len, query_len)` of `block_size`
/// blocks: physical blocks are a shuffled subset of `1..num_blocks`, with
/// `num_blocks = needed + extra` (block 0 and the spares are never used).
/// Returns `(num_blocks, rows)`.
pub fn shuffled_block_rows(
    rng: &mut ChaCha8Rng,
    reqs: &[(usize, usize)],
    block_size: usize,
    extra: usize,
) -> (usize, Vec<Vec<i32>>) {
    let needed: usize = reqs
        .iter()
        .map(|&(c, q)| (c + q).div_ceil(block_size))
        .sum();
    let num_blocks = needed + extra;
    let mut ids: Vec<i32> = (1..num_blocks as i32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.gen_range(0..=i));
    }
    let mut free = ids.into_iter();
    let rows = reqs
        .iter()
        .map(|&(c, q)| {
            (0..(c + q).div_ceil(block_size))
                .map(|_| free.next().unwrap())
                .collect()
        })
        .collect();
    (num_blocks, rows)
}
