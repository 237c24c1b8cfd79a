//! Input parsing and error reporting shared by `layout` and `trace`.

use serde_json::json;
use std::process::ExitCode;

/// Parses a size flag, naming the flag, the value and the allowed range.
pub fn parse_size(flag: &str, s: &str, min: usize) -> anyhow::Result<usize> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => anyhow::bail!("invalid {flag} '{s}': allowed: an integer >= {min}"),
    }
}

/// Reports a bad-input error: as `{"error": {"type", "message"}}` on stdout
/// with `--json` (exit 2), else returned for `main` to print as one line.
pub fn fail(json: bool, e: anyhow::Error) -> anyhow::Result<ExitCode> {
    if !json {
        return Err(e);
    }
    let kind = match e.downcast_ref::<attnlab_shared::Error>() {
        Some(attnlab_shared::Error::Unsupported { .. }) => "unsupported",
        _ => "invalid",
    };
    emit(&format!(
        "{}\n",
        json!({"error": {"type": kind, "message": format!("{e:#}")}})
    ));
    Ok(ExitCode::from(2))
}

/// Writes to stdout, ignoring a closed pipe (`attnlab ... | head`).
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}
