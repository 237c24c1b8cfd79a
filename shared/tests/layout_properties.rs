//! The MLA latent layout as properties (docs/src/kv-layouts.md): every
//! in-range coordinate has its own offset inside the tensor, and
//! `index_of` inverts `offset`. Closes the hole `cargo mutants` found in
//! `shared/src/layout/mla.rs` (a one-off test whose row happened to equal
//! its channel modulo the block size).

use attnlab_shared::dtype::DType;
use attnlab_shared::layout::mla::MlaLayout;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn the_latent_offset_is_inverted_by_index_of(
        (nb, bs, lkv, rope) in (1usize..9, 1usize..33, 1usize..40, 0usize..9),
        (b, r, c) in (0usize..9, 0usize..33, 0usize..49),
    ) {
        let l = MlaLayout::new(nb, bs, lkv, rope, DType::Bf16).unwrap();
        let (w, numel) = (lkv + rope, nb * bs * (lkv + rope));
        prop_assert_eq!((l.width(), l.block_numel(), l.numel()), (w, bs * w, numel));
        prop_assert!(l.index_of(numel).is_err());
        if b < nb && r < bs && c < w {
            let o = l.checked_offset(b, r, c).unwrap();
            prop_assert!(o < numel);
            prop_assert_eq!(o, (b * bs + r) * w + c);
            prop_assert_eq!(l.index_of(o).unwrap(), (b, r, c));
        } else {
            prop_assert!(l.checked_offset(b, r, c).is_err());
        }
    }
}
