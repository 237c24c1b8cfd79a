//! Kernel parameter blocks: the by-value structs a kernel takes (`PagedArgs a`
//! in `kernels/paged_decode.hip`), declared once in Rust as `#[repr(C)]`
//! structs with the same fields in the same order ([`param_block!`]), so that
//! a launch passes exactly the bytes the kernel reads.
//!
//! The layout contract is checked, not assumed: [`static_asserts`] writes a
//! C++ `static_assert` per field (offset and size) and for the whole struct
//! from the Rust layout, and `gpu/tests/param_layout.rs` compiles each
//! family's `.hip` source with them appended (host C++ compiler).

use super::Arg;

/// One field of a parameter block: its name, byte offset and size, as Rust
/// laid it out (`offset_of!`, `size_of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
}

/// A `#[repr(C)]` kernel parameter block, field for field the `.hip`
/// struct named [`ParamBlock::HIP_NAME`]. Implemented by [`param_block!`] only.
pub trait ParamBlock: Copy {
    /// The struct's name in the kernel source.
    const HIP_NAME: &'static str;
    /// Every field in declaration order, with its Rust offset and size.
    fn fields() -> Vec<Field>;
    /// The struct's bytes as the kernel reads them: each field at its offset
    /// (little-endian, as every supported device is), padding zero.
    fn to_bytes(&self) -> Vec<u8>;
    /// The block as a launch argument.
    fn arg(&self) -> Arg {
        Arg::Struct(self.to_bytes())
    }
}

/// Declares a `#[repr(C)]` parameter block and its [`ParamBlock`] impl:
///
/// ```
/// use attnlab_gpu::runtime::params::{param_block, ParamBlock};
/// param_block! {
///     /// A kernel's `struct Scalars { i64 n; i32 flag; float scale; };`.
///     pub struct Scalars as "Scalars" {
///         n: i64,
///         flag: i32,
///         scale: f32,
///     }
/// }
/// let bytes = Scalars { n: 3, flag: 1, scale: 0.5 }.to_bytes();
/// assert_eq!(bytes.len(), 16);
/// assert_eq!(bytes[12..16], 0.5f32.to_le_bytes());
/// ```
///
/// Field types are the kernel's scalars: `i64`, `i32`, `f32`, `u64`
/// (a device pointer).
#[macro_export]
macro_rules! param_block {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident as $hip:literal {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Default)]
        $vis struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }

        impl $crate::runtime::params::ParamBlock for $name {
            const HIP_NAME: &'static str = $hip;
            fn fields() -> Vec<$crate::runtime::params::Field> {
                vec![$(
                    $crate::runtime::params::Field {
                        name: stringify!($field),
                        offset: std::mem::offset_of!($name, $field),
                        size: std::mem::size_of::<$ty>(),
                    }
                ),*]
            }
            fn to_bytes(&self) -> Vec<u8> {
                let mut b = vec![0u8; std::mem::size_of::<$name>()];
                $(
                    let at = std::mem::offset_of!($name, $field);
                    let v = self.$field.to_le_bytes();
                    b[at..at + v.len()].copy_from_slice(&v);
                )*
                b
            }
        }
    };
}
pub use crate::param_block;

/// C++ `static_assert`s that the kernel source's struct `P::HIP_NAME` has
/// the Rust block's size, and each field its offset and size. Appended to a
/// translation unit that defines the struct, it compiles only when the two
/// layouts agree field for field.
pub fn static_asserts<P: ParamBlock>() -> String {
    let name = P::HIP_NAME;
    let size = std::mem::size_of::<P>();
    let mut s = format!(
        "static_assert(sizeof({name}) == {size}, \"{name}: sizeof differs from the Rust block's {size}\");\n"
    );
    for f in P::fields() {
        let (field, offset, bytes) = (f.name, f.offset, f.size);
        s.push_str(&format!(
            "static_assert(__builtin_offsetof({name}, {field}) == {offset}, \"{name}.{field}: offset differs from the Rust block's {offset}\");\n\
             static_assert(sizeof({name}::{field}) == {bytes}, \"{name}.{field}: size differs from the Rust block's {bytes}\");\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{static_asserts, ParamBlock};

    param_block! {
        /// A block with trailing padding (4 bytes after `c`).
        struct Probe as "Probe" {
            a: i64,
            b: f32,
            c: i32,
            d: u64,
            e: f32,
        }
    }

    #[test]
    fn block_bytes_put_each_field_at_its_c_offset_with_zero_padding() {
        let p = Probe {
            a: -2,
            b: 1.5,
            c: 7,
            d: 0x1122_3344_5566_7788,
            e: -0.0,
        };
        let b = p.to_bytes();
        assert_eq!(b.len(), 32);
        assert_eq!(b[0..8], (-2i64).to_le_bytes());
        assert_eq!(b[8..12], 1.5f32.to_le_bytes());
        assert_eq!(b[12..16], 7i32.to_le_bytes());
        assert_eq!(b[16..24], 0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(b[24..28], (-0.0f32).to_le_bytes());
        assert_eq!(b[28..32], [0, 0, 0, 0]);
        let offsets: Vec<(&str, usize, usize)> = Probe::fields()
            .iter()
            .map(|f| (f.name, f.offset, f.size))
            .collect();
        assert_eq!(
            offsets,
            [
                ("a", 0, 8),
                ("b", 8, 4),
                ("c", 12, 4),
                ("d", 16, 8),
                ("e", 24, 4)
            ]
        );
    }

    #[test]
    fn static_asserts_name_the_struct_every_field_and_the_size() {
        let s = static_asserts::<Probe>();
        assert!(s.contains("sizeof(Probe) == 32"), "{s}");
        for (f, off) in [("a", 0), ("b", 8), ("c", 12), ("d", 16), ("e", 24)] {
            assert!(
                s.contains(&format!("__builtin_offsetof(Probe, {f}) == {off}")),
                "{s}"
            );
        }
        assert_eq!(s.lines().count(), 1 + 2 * 5);
    }
}
