//! One module per subcommand; each owns its clap `Args` and its output;
//! `util` holds the conventions they share (docs/src/cli.md).

/// `println!` that ignores a closed pipe (`attnlab ... | head`).
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::cli::util::emit(&format!("{}\n", format_args!($($t)*)))
    };
}

pub mod bench;
pub mod cases;
pub mod common;
pub mod diff;
pub mod gpu;
pub mod layout;
pub mod replay;
pub mod run;
pub mod select;
pub mod svg;
pub mod trace;
pub mod trace_svg;
pub mod util;
pub mod zoo;
