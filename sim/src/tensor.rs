//! Shaped data: the f64 references ([`crate::reference`]) and the fixture
//! tensors ([`crate::fixture`]) hold `ndarray` arrays whose axes are named in
//! their docs, always row-major and in this vocabulary:
//!
//! | axis      | what it counts                                              |
//! |-----------|-------------------------------------------------------------|
//! | `token`   | a query row of the batch (all requests' rows, in order)     |
//! | `seq`     | a request (MLA decode: one token each, so `seq` = `token`)  |
//! | `head`    | a query head                                                |
//! | `kv_head` | a K/V head (`head / (num_heads / num_kv_heads)`)            |
//! | `pos`     | a key position in one request's sequence                    |
//! | `block`   | a physical cache block                                      |
//! | `slot`    | a row inside a block (`block_size` of them)                 |
//! | `d`       | a channel of a head (`head_size`; MLA: `kv_lora_rank + rope`)|
//! | `c`       | an MLA latent channel (`kv_lora_rank`)                      |
//!
//! So a query is `[token, head, d]`, an NHD cache `[block, slot, kv_head, d]`,
//! vLLM's LSE `[head, token]`. The kernels stay flat loop nests over `&[f32]`
//! (their loop order is the bit-exactness contract); [`Flat`] is the
//! boundary where a shaped tensor is handed to one.

use ndarray::{ArrayBase, Data, Dimension};
use std::borrow::Cow;

/// A shaped tensor's elements in row-major order, as a flat slice (borrowed:
/// every array this crate builds is row-major; a transposed or sliced view
/// is copied into row-major order first).
pub trait Flat<A: Clone> {
    fn flat(&self) -> Cow<'_, [A]>;
}

impl<A: Clone, S: Data<Elem = A>, D: Dimension> Flat<A> for ArrayBase<S, D> {
    fn flat(&self) -> Cow<'_, [A]> {
        match self.as_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(self.iter().cloned().collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, s};

    #[test]
    fn flat_is_row_major_for_standard_and_transposed_arrays() {
        let a = array![[1, 2, 3], [4, 5, 6]];
        assert!(matches!(a.flat(), Cow::Borrowed(&[1, 2, 3, 4, 5, 6])));
        assert_eq!(*a.t().flat(), [1, 4, 2, 5, 3, 6]);
        assert_eq!(*a.slice(s![.., 1..]).flat(), [2, 3, 5, 6]);
    }
}
