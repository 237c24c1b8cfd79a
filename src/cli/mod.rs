//! One module per subcommand; each owns its clap `Args` and its output.

pub mod bench;
pub mod cases;
pub mod diff;
pub mod gpu;
pub mod layout;
pub mod replay;
pub mod run;
pub mod select;
pub mod trace;
pub mod util;
