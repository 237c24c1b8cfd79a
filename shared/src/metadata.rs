//! The attention metadata every backend consumes, named as vLLM's
//! `CommonAttentionMetadata` (vllm-backends.md §1.2). The scheduler builds it;
//! fixtures and tests build it directly. `AttentionMetadata::new` validates
//! every length, block id and slot so that no kernel ever reads out of bounds.
//!
//! Length vocabulary (§1.1), per request i:
//! `context_len = seq_len - query_len` tokens already cached; query token j has
//! absolute position `context_len + j` and (causally) sees keys `0..=context_len + j`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// `PAD_SLOT_ID`: a slot-mapping entry that every cache writer skips.
pub const PAD_SLOT_ID: i64 = -1;

/// How a request's rows are routed by backends that split the batch
/// (ROCM_AITER_FA, the MLA backends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// query_len <= decode threshold (1 new token) on top of cached context.
    Decode,
    /// More than one new token on top of cached context (chunked prefill continues).
    Extend,
    /// No cached context.
    Prefill,
}

impl RequestKind {
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Decode => "decode",
            RequestKind::Extend => "extend",
            RequestKind::Prefill => "prefill",
        }
    }
}

/// `block_table_tensor`: int32 `[num_reqs, max_blocks_per_req]`, kernel block ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockTableTensor {
    pub num_rows: usize,
    pub max_blocks: usize,
    pub data: Vec<i32>,
}

impl BlockTableTensor {
    pub fn from_rows(rows: &[Vec<i32>]) -> Self {
        let max_blocks = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut data = vec![0i32; rows.len() * max_blocks];
        for (i, r) in rows.iter().enumerate() {
            data[i * max_blocks..i * max_blocks + r.len()].copy_from_slice(r);
        }
        BlockTableTensor {
            num_rows: rows.len(),
            max_blocks,
            data,
        }
    }

    pub fn row(&self, i: usize) -> &[i32] {
        &self.data[i * self.max_blocks..(i + 1) * self.max_blocks]
    }

    /// The physical block holding logical block `j` of request `i`.
    /// Only valid after `AttentionMetadata::new` validated the table.
    #[inline]
    pub fn block(&self, i: usize, j: usize) -> usize {
        self.data[i * self.max_blocks + j] as usize
    }
}

/// The per-step attention metadata, validated once by
/// [`AttentionMetadata::new`] (and by deserialisation, which goes through it).
///
/// # Invariants
///
/// The fields are private, so every value of this type keeps what `new`
/// checked; kernels and GPU launchers index by it without checking again:
/// - `block_size >= 1`;
/// - `query_start_loc` has `num_reqs + 1` entries, starts at 0 and never
///   decreases; `num_actual_tokens` is its last entry;
/// - every `seq_lens[i]` is at least request `i`'s query length, and its
///   `ceil(seq_len / block_size)` blocks fit in the block table's columns;
/// - the block table has at least `num_reqs` rows and `rows * cols` entries,
///   and every block id a request uses is in `[0, num_blocks)`;
/// - `slot_mapping` covers every query token, and each slot is
///   [`PAD_SLOT_ID`] or in `[0, num_blocks * block_size)`;
/// - `max_query_len` and `max_seq_len` are the longest query and sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MetadataFields")]
pub struct AttentionMetadata {
    /// Kernel block size (tokens per block).
    block_size: usize,
    /// Number of physical blocks in the cache the table points into.
    num_blocks: usize,
    num_actual_tokens: usize,
    query_start_loc: Vec<i32>,
    seq_lens: Vec<i32>,
    block_table: BlockTableTensor,
    /// Flat slot per new token (`block * block_size + offset`), -1 = skip.
    slot_mapping: Vec<i64>,
    max_query_len: usize,
    max_seq_len: usize,
    /// False only for encoder (bidirectional) attention.
    causal: bool,
}

/// The serialised form of [`AttentionMetadata`]; deserialising one goes
/// through [`AttentionMetadata::new`], and the derived lengths it carries
/// must agree with what the validated fields give.
#[derive(Deserialize)]
struct MetadataFields {
    block_size: usize,
    num_blocks: usize,
    num_actual_tokens: usize,
    query_start_loc: Vec<i32>,
    seq_lens: Vec<i32>,
    block_table: BlockTableTensor,
    slot_mapping: Vec<i64>,
    max_query_len: usize,
    max_seq_len: usize,
    causal: bool,
}

impl TryFrom<MetadataFields> for AttentionMetadata {
    type Error = Error;

    fn try_from(f: MetadataFields) -> Result<Self> {
        let m = AttentionMetadata::new(
            f.block_size,
            f.num_blocks,
            f.query_start_loc,
            f.seq_lens,
            f.block_table,
            f.slot_mapping,
            f.causal,
        )?;
        for (what, have, want, from) in [
            (
                "num_actual_tokens",
                f.num_actual_tokens,
                m.num_actual_tokens,
                "query_start_loc's last entry",
            ),
            (
                "max_query_len",
                f.max_query_len,
                m.max_query_len,
                "the longest query",
            ),
            (
                "max_seq_len",
                f.max_seq_len,
                m.max_seq_len,
                "the longest sequence",
            ),
        ] {
            if have != want {
                return Err(Error::invalid(
                    what,
                    have,
                    format!("must be {from}, {want}"),
                ));
            }
        }
        Ok(m)
    }
}

impl AttentionMetadata {
    /// Builds and validates (the invariants are in the type's doc). Every
    /// request's KV must fit in its block-table row, every block id it uses
    /// must be `< num_blocks`, and every slot must be -1 or inside the cache.
    pub fn new(
        block_size: usize,
        num_blocks: usize,
        query_start_loc: Vec<i32>,
        seq_lens: Vec<i32>,
        block_table: BlockTableTensor,
        slot_mapping: Vec<i64>,
        causal: bool,
    ) -> Result<Self> {
        let (num_tokens, max_q, max_s) = Self::derive(
            block_size,
            num_blocks,
            &query_start_loc,
            &seq_lens,
            &block_table,
            &slot_mapping,
        )?;
        Ok(AttentionMetadata {
            block_size,
            num_blocks,
            num_actual_tokens: num_tokens,
            query_start_loc,
            seq_lens,
            block_table,
            slot_mapping,
            max_query_len: max_q,
            max_seq_len: max_s,
            causal,
        })
    }

    /// The same metadata with causal masking on or off (no other invariant
    /// depends on it).
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    /// Kernel block size (tokens per block).
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// Number of physical blocks in the cache the table points into.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    /// Query tokens in the batch (`query_start_loc`'s last entry).
    pub fn num_actual_tokens(&self) -> usize {
        self.num_actual_tokens
    }
    /// `[num_reqs + 1]` cumulative query lengths, from 0.
    pub fn query_start_loc(&self) -> &[i32] {
        &self.query_start_loc
    }
    /// `[num_reqs]` total (cached + new) tokens per request.
    pub fn seq_lens(&self) -> &[i32] {
        &self.seq_lens
    }
    /// Kernel block ids per request.
    pub fn block_table(&self) -> &BlockTableTensor {
        &self.block_table
    }
    /// Flat slot per new token (`block * block_size + offset`), -1 = skip.
    pub fn slot_mapping(&self) -> &[i64] {
        &self.slot_mapping
    }
    /// The longest query in the batch.
    pub fn max_query_len(&self) -> usize {
        self.max_query_len
    }
    /// The longest sequence in the batch.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }
    /// False only for encoder (bidirectional) attention.
    pub fn causal(&self) -> bool {
        self.causal
    }

    /// The validation of [`AttentionMetadata::new`]; returns the number of
    /// query tokens and the longest query and sequence.
    fn derive(
        block_size: usize,
        num_blocks: usize,
        query_start_loc: &[i32],
        seq_lens: &[i32],
        block_table: &BlockTableTensor,
        slot_mapping: &[i64],
    ) -> Result<(usize, usize, usize)> {
        if block_size == 0 {
            return Err(Error::invalid("block_size", 0, "must be >= 1"));
        }
        let num_reqs = seq_lens.len();
        if query_start_loc.len() != num_reqs + 1 {
            return Err(Error::invalid(
                "query_start_loc length",
                query_start_loc.len(),
                format!("must be num_reqs + 1 = {}", num_reqs + 1),
            ));
        }
        if query_start_loc[0] != 0 {
            return Err(Error::invalid(
                "query_start_loc[0]",
                query_start_loc[0],
                "must be 0",
            ));
        }
        if block_table.num_rows < num_reqs
            || block_table.data.len() != block_table.num_rows * block_table.max_blocks
        {
            return Err(Error::invalid(
                "block_table shape",
                format!(
                    "[{}, {}] with {} elements",
                    block_table.num_rows,
                    block_table.max_blocks,
                    block_table.data.len()
                ),
                format!("needs at least {num_reqs} rows and rows*cols elements"),
            ));
        }
        let (mut max_q, mut max_s) = (0usize, 0usize);
        for i in 0..num_reqs {
            let q = query_start_loc[i + 1] - query_start_loc[i];
            if q < 0 {
                return Err(Error::invalid(
                    format!("query_start_loc[{}]", i + 1),
                    query_start_loc[i + 1],
                    format!("must be >= query_start_loc[{i}] = {}", query_start_loc[i]),
                ));
            }
            let s = seq_lens[i];
            if s < q {
                return Err(Error::invalid(
                    format!("seq_lens[{i}]"),
                    s,
                    format!("must be >= the request's query length {q}"),
                ));
            }
            let blocks = (s as usize).div_ceil(block_size);
            if blocks > block_table.max_blocks {
                return Err(Error::invalid(
                    format!("seq_lens[{i}]"),
                    s,
                    format!(
                        "needs {blocks} blocks of {block_size} but the block table has {} columns (max {} tokens)",
                        block_table.max_blocks,
                        block_table.max_blocks * block_size
                    ),
                ));
            }
            for (j, &b) in block_table.row(i)[..blocks].iter().enumerate() {
                if b < 0 || b as usize >= num_blocks {
                    return Err(Error::invalid(
                        format!("block_table[{i}][{j}]"),
                        b,
                        format!("block ids must be in [0, {num_blocks})"),
                    ));
                }
            }
            max_q = max_q.max(q as usize);
            max_s = max_s.max(s as usize);
        }
        let num_tokens = query_start_loc[num_reqs] as usize;
        if slot_mapping.len() < num_tokens {
            return Err(Error::invalid(
                "slot_mapping length",
                slot_mapping.len(),
                format!("must cover all {num_tokens} query tokens"),
            ));
        }
        let num_slots = (num_blocks * block_size) as i64;
        for (t, &s) in slot_mapping.iter().enumerate() {
            if s != PAD_SLOT_ID && !(0..num_slots).contains(&s) {
                return Err(Error::invalid(
                    format!("slot_mapping[{t}]"),
                    s,
                    format!("slots must be -1 (padding) or in [0, {num_slots})"),
                ));
            }
        }
        Ok((num_tokens, max_q, max_s))
    }

    pub fn num_reqs(&self) -> usize {
        self.seq_lens.len()
    }
    pub fn query_len(&self, i: usize) -> usize {
        (self.query_start_loc[i + 1] - self.query_start_loc[i]) as usize
    }
    pub fn seq_len(&self, i: usize) -> usize {
        self.seq_lens[i] as usize
    }
    pub fn context_len(&self, i: usize) -> usize {
        self.seq_len(i) - self.query_len(i)
    }
    /// Query rows of request i.
    pub fn query_range(&self, i: usize) -> std::ops::Range<usize> {
        self.query_start_loc[i] as usize..self.query_start_loc[i + 1] as usize
    }
    /// Where KV token `t` of request `i` lives: (physical block, row in block).
    #[inline]
    pub fn kv_location(&self, i: usize, t: usize) -> (usize, usize) {
        (
            self.block_table.block(i, t / self.block_size),
            t % self.block_size,
        )
    }
    /// Classifies request i as ROCM_AITER_FA's split does (decode threshold 1).
    pub fn kind(&self, i: usize, decode_threshold: usize) -> RequestKind {
        let (q, ctx) = (self.query_len(i), self.context_len(i));
        if ctx == 0 && q > decode_threshold {
            RequestKind::Prefill
        } else if q <= decode_threshold {
            RequestKind::Decode
        } else {
            RequestKind::Extend
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BlockTableTensor {
        BlockTableTensor::from_rows(&[vec![3, 1], vec![2, 0]])
    }

    #[test]
    fn lengths_follow_vllm_vocabulary() {
        let m = AttentionMetadata::new(
            16,
            4,
            vec![0, 1, 5],
            vec![20, 4],
            table(),
            vec![3 * 16 + 3, 32, 33, 34, 35],
            true,
        )
        .unwrap();
        assert_eq!(m.context_len(0), 19);
        assert_eq!(m.kind(0, 1), RequestKind::Decode);
        assert_eq!(m.kind(1, 1), RequestKind::Prefill);
        assert_eq!(m.kv_location(0, 19), (1, 3));
    }

    #[test]
    fn rejects_block_id_out_of_range_naming_it() {
        let t = BlockTableTensor::from_rows(&[vec![9]]);
        let e = AttentionMetadata::new(16, 4, vec![0, 1], vec![1], t, vec![0], true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("block_table[0][0]") && e.contains("[0, 4)"),
            "{e}"
        );
    }

    #[test]
    fn deserialising_goes_through_new_and_refuses_edited_fields() {
        let m =
            AttentionMetadata::new(16, 4, vec![0, 1, 2], vec![17, 1], table(), vec![0, 1], true)
                .unwrap();
        let json = serde_json::to_value(&m).unwrap();
        let back: AttentionMetadata = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, m);
        let mut longer = json.clone();
        longer["seq_lens"][0] = 33.into();
        let e = serde_json::from_value::<AttentionMetadata>(longer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("seq_lens[0]") && e.contains("2 columns"), "{e}");
        let mut tokens = json.clone();
        tokens["num_actual_tokens"] = 3.into();
        let e = serde_json::from_value::<AttentionMetadata>(tokens)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_actual_tokens 3") && e.contains("2"), "{e}");
        let mut block = json;
        block["block_table"]["data"][0] = 4.into();
        let e = serde_json::from_value::<AttentionMetadata>(block)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("block_table[0][0]") && e.contains("[0, 4)"),
            "{e}"
        );
    }

    #[test]
    fn rejects_seq_len_beyond_table() {
        let e =
            AttentionMetadata::new(16, 4, vec![0, 1, 2], vec![33, 1], table(), vec![0, 1], true)
                .unwrap_err()
                .to_string();
        assert!(e.contains("seq_lens[0]") && e.contains("2 columns"), "{e}");
    }

    #[test]
    fn rejects_slot_outside_cache() {
        let e = AttentionMetadata::new(
            16,
            4,
            vec![0, 1, 2],
            vec![1, 1],
            table(),
            vec![64, -1],
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("slot_mapping[0]"), "{e}");
    }
}
