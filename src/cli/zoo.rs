//! `attnlab zoo [--fault NAME|all] [--budget-seconds S] [--baseline] [--list] [--json]`: the
//! real-bug zoo (issue 14, `attnlab_sim::zoo`). Each fault, a bug that
//! reached vLLM/AITER users re-injected into the emulator, is run against
//! the property that should catch it; one row per fault says whether it was
//! caught, after how many seconds and cases, the shrunk counterexample and
//! the property. Exit 0 when every fault run was caught, 1 when one survived.

use super::util::{emit, exit, progress};
use attnlab_shared::fault::{Fault, FaultSet};
use attnlab_sim::zoo::{
    run_fault, run_probe, Outcome, Probe, DEFAULT_BUDGET_SECONDS, MAX_BUDGET_SECONDS,
};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// One fault by name (`attnlab zoo --list` names them) or `all`.
    #[arg(long, default_value = "all")]
    pub fault: String,
    /// Seconds each fault may run before it counts as survived (0 < S <= 3600).
    #[arg(long, default_value_t = DEFAULT_BUDGET_SECONDS)]
    pub budget_seconds: f64,
    /// List the faults (name, tracker, root cause) and exit.
    #[arg(long)]
    pub list: bool,
    /// Run every property with no fault for the budget instead: a failure
    /// here is a false alarm (or a bug in the emulator), exit 1.
    #[arg(long, conflicts_with = "fault")]
    pub baseline: bool,
    /// Print a JSON array of rows {fault, tracker, root_cause, property, probe, caught,
    /// seconds_to_failure, cases, counterexample {size, input, failure}, budget_seconds};
    /// with --list, an array of {fault, tracker, root_cause}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.list {
        return list(args.json);
    }
    let faults: Vec<Fault> = if args.fault.eq_ignore_ascii_case("all") {
        Fault::ALL.to_vec()
    } else {
        vec![Fault::parse(&args.fault.to_ascii_lowercase())?]
    };
    let s = args.budget_seconds;
    if !(s > 0.0 && s <= MAX_BUDGET_SECONDS) {
        return Err(attnlab_shared::Error::invalid(
            "--budget-seconds",
            s,
            format!("allowed range is (0, {MAX_BUDGET_SECONDS}]"),
        )
        .into());
    }
    if args.baseline {
        return baseline(s, args.json);
    }
    let bar = progress(args.json, faults.len(), "zoo");
    let mut rows = Vec::with_capacity(faults.len());
    for f in faults {
        bar.set_message(f.name());
        rows.push(run_fault(f, s)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
    } else {
        emit(&table(&rows));
    }
    let survived = rows.iter().any(|r| !r.caught);
    Ok(ExitCode::from(if survived {
        exit::FAILED
    } else {
        exit::OK
    }))
}

/// Every probe with no fault for `seconds`: cases run and what failed.
fn baseline(seconds: f64, json: bool) -> anyhow::Result<ExitCode> {
    let probes = Probe::all();
    let bar = progress(json, probes.len(), "zoo --baseline");
    let mut rows = vec![];
    for (i, p) in probes.iter().enumerate() {
        bar.set_message(p.label());
        let (found, cases) = run_probe(
            *p,
            FaultSet::NONE,
            Duration::from_secs_f64(seconds),
            0x5eed + i as u64,
        );
        rows.push(serde_json::json!({
            "probe": p.label(),
            "property": p.property(),
            "cases": cases,
            "seconds": seconds,
            "failure": found.map(|(_, cx)| cx),
        }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let failed = rows.iter().any(|r| !r["failure"].is_null());
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
    } else {
        for r in &rows {
            emit(&format!(
                "{:<60} {:>8} cases  {}\n",
                r["probe"].as_str().unwrap_or(""),
                r["cases"],
                if r["failure"].is_null() {
                    "held".to_string()
                } else {
                    format!("FAILED: {}", r["failure"])
                }
            ));
        }
    }
    Ok(ExitCode::from(if failed { exit::FAILED } else { exit::OK }))
}

fn list(json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let rows: Vec<_> = Fault::ALL
            .iter()
            .map(|f| {
                serde_json::json!({"fault": f.name(), "tracker": f.tracker(), "root_cause": f.root_cause()})
            })
            .collect();
        emit(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
    } else {
        for f in Fault::ALL {
            emit(&format!(
                "{:<30} {}\n{:<30} {}\n",
                f.name(),
                f.tracker(),
                "",
                f.root_cause()
            ));
        }
    }
    Ok(ExitCode::from(exit::OK))
}

/// One line per fault, then its counterexample and failure indented.
fn table(rows: &[Outcome]) -> String {
    let mut s = format!(
        "{:<30} {:<8} {:>9} {:>8} {:>9}  {}\n",
        "fault", "caught", "seconds", "cases", "cx size", "property"
    );
    for r in rows {
        s += &format!(
            "{:<30} {:<8} {:>9} {:>8} {:>9}  {}\n",
            r.fault.name(),
            if r.caught { "caught" } else { "SURVIVED" },
            r.seconds_to_failure
                .map_or("-".to_string(), |x| format!("{x:.2}")),
            r.cases,
            r.counterexample
                .as_ref()
                .map_or("-".to_string(), |c| c.size.to_string()),
            r.probe
        );
        if let Some(c) = &r.counterexample {
            s += &format!("    input:   {}\n", c.input);
            for (i, line) in c.failure.lines().enumerate() {
                s += &format!(
                    "    {} {}\n",
                    if i == 0 { "failure:" } else { "        " },
                    line.trim()
                );
            }
        }
    }
    let caught = rows.iter().filter(|r| r.caught).count();
    s += &format!("{caught} of {} caught\n", rows.len());
    s
}
