//! The conventions every subcommand shares (docs/src/cli.md): exit codes,
//! errors as one line or `{"error": {"type", "message"}}`, backend names,
//! size flags checked against the named limits, progress on stderr.

use attnlab_shared::limits::Limit;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Exit statuses (docs/src/cli.md).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A result that failed (a mismatch, a failed fixture) or bad input (a
    /// value outside what its flag accepts, a limit, an unreadable file).
    pub const FAILED: u8 = 1;
    /// Usage: the command line's shape is wrong (unknown subcommand or flag,
    /// a missing or conflicting flag).
    pub const USAGE: u8 = 2;
    /// The command needs a GPU device (or a kernel compiler) that this
    /// machine lacks; `--allow-no-device` makes it 0.
    pub const NO_DEVICE: u8 = 3;
}

/// A usage error found after clap (e.g. `bench` with neither `--cpu` nor `--gpu`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// No device or compiler for a command that needs one.
#[derive(Debug, thiserror::Error)]
#[error("{0} (--allow-no-device exits 0 instead)")]
pub struct NoDevice(pub String);

/// The JSON `type` and the exit status of an error.
fn classify(e: &anyhow::Error) -> (&'static str, u8) {
    use attnlab_gpu::runtime::GpuError;
    use attnlab_shared::Error as E;
    if e.downcast_ref::<Usage>().is_some() {
        return ("usage", exit::USAGE);
    }
    if e.downcast_ref::<NoDevice>().is_some()
        || matches!(e.downcast_ref::<GpuError>(), Some(GpuError::NoDevice(_)))
    {
        return ("no_device", exit::NO_DEVICE);
    }
    let kind = match e.downcast_ref::<E>() {
        Some(E::Limit { .. }) => "limit",
        Some(E::Unsupported { .. }) => "unsupported",
        Some(E::Invalid { .. }) => "invalid",
        None if e
            .downcast_ref::<attnlab_sim::fixture::FixtureError>()
            .is_some() =>
        {
            "invalid"
        }
        None => "error",
    };
    (kind, exit::FAILED)
}

/// Prints `e` (one line on stderr, or the JSON object on stdout) and
/// returns its exit status.
pub fn report(e: &anyhow::Error, json: bool) -> ExitCode {
    let (kind, code) = classify(e);
    print_error(kind, &format!("{e:#}"), json);
    ExitCode::from(code)
}

fn print_error(kind: &str, message: &str, json: bool) {
    if json {
        emit(&format!(
            "{}\n",
            json!({"error": {"type": kind, "message": message}})
        ));
    } else {
        eprintln!("error: {message}");
    }
}

/// A command line clap rejected: help and version exit 0; a value outside
/// what its flag accepts is bad input (1); anything else is usage (2).
pub fn clap_error(e: clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind as K;
    let (kind, code) = match e.kind() {
        K::DisplayHelp | K::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        K::InvalidValue | K::ValueValidation => ("invalid", exit::FAILED),
        _ => ("usage", exit::USAGE),
    };
    if json {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or("").trim();
        let message = first.strip_prefix("error: ").unwrap_or(first);
        print_error(kind, message, true);
    } else {
        let _ = e.print();
    }
    ExitCode::from(code)
}

/// Without a device (or compiler; `why` says which): with
/// `--allow-no-device`, `say` it (text or JSON) and exit 0; otherwise the
/// error exits 3.
pub fn no_device(
    why: String,
    allow: bool,
    json: bool,
    say: impl FnOnce(&str) -> String,
) -> anyhow::Result<ExitCode> {
    if !allow {
        return Err(NoDevice(why).into());
    }
    if json {
        emit(&format!(
            "{}\n",
            json!({"device": null, "skipped": why, "kernels": []})
        ));
    } else {
        emit(&format!("{}\n", say(&why)));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--backend`: `all` (any case) -> `None`; otherwise the name upper-cased,
/// as vLLM's `AttentionBackendEnum[name.upper()]` reads it.
pub fn backend_choice(name: &str) -> Option<String> {
    let name = name.trim();
    (!name.eq_ignore_ascii_case("all")).then(|| name.to_ascii_uppercase())
}

/// Parses a size flag, naming the flag, the value and the allowed range.
pub fn parse_size(flag: &str, s: &str, min: usize) -> anyhow::Result<usize> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => anyhow::bail!("invalid {flag} '{s}': allowed: an integer >= {min}"),
    }
}

/// [`parse_size`], then `limit`.
pub fn parse_bounded(flag: &str, s: &str, min: usize, limit: &Limit) -> anyhow::Result<usize> {
    let n = parse_size(flag, s, min)?;
    Ok(limit.check_usize(flag, n)?)
}

/// A flag's value checked against `min` and `limit`.
pub fn bounded(flag: &str, n: usize, min: usize, limit: &Limit) -> anyhow::Result<usize> {
    if n < min {
        anyhow::bail!("invalid {flag} {n}: allowed: an integer >= {min}");
    }
    Ok(limit.check_usize(flag, n)?)
}

/// A progress bar on stderr of `len` steps; hidden with `--json` or when
/// stderr is not a terminal.
pub fn progress(json: bool, len: usize, what: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {prefix} {pos}/{len} {wide_bar} {elapsed} (eta {eta}) {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// A spinner with the elapsed time, for work of unknown length.
pub fn spinner(json: bool, what: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Writes to stdout, ignoring a closed pipe (`attnlab ... | head`).
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}
