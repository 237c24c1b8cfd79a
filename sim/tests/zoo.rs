//! The real-bug zoo (issue 14): every property holds for the emulator as it
//! is, and every re-injected bug is caught by its property within its budget
//! on 2 cores, with a shrunk counterexample. `cargo test --test zoo --
//! --ignored` runs the long budgets.

use attnlab_shared::fault::{Fault, FaultSet};
use attnlab_sim::zoo::{run_fault, run_probe, Probe};
use std::time::Duration;

/// Seconds each fault may take to fail in the default test run.
const BUDGET: f64 = 60.0;

#[test]
fn every_property_holds_without_faults() {
    for probe in Probe::all() {
        let (found, cases) = run_probe(probe, FaultSet::NONE, Duration::from_secs(3), 1);
        assert!(found.is_none(), "{}: {:#?}", probe.label(), found);
        assert!(cases > 0, "{}: no case generated", probe.label());
    }
}

#[test]
fn every_fault_is_caught_within_its_budget_with_a_shrunk_counterexample() {
    let mut missed = vec![];
    for &fault in Fault::ALL {
        let o = run_fault(fault, BUDGET).unwrap();
        eprintln!(
            "{:<30} caught {:<5} {:>7.2}s {:>5} cases  size {:>8}  {}",
            fault.name(),
            o.caught,
            o.seconds_to_failure.unwrap_or(f64::NAN),
            o.cases,
            o.counterexample.as_ref().map_or(0, |c| c.size),
            o.probe
        );
        if let Some(cx) = &o.counterexample {
            eprintln!(
                "    {}\n    {}",
                cx.input,
                cx.failure.lines().next().unwrap_or("")
            );
        }
        if !o.caught {
            missed.push(fault.name());
        }
    }
    assert!(missed.is_empty(), "survived: {missed:?}");
}

/// The long baseline: a minute per property with no fault (no false alarm).
#[test]
#[ignore]
fn every_property_holds_without_faults_for_a_minute_each() {
    for probe in Probe::all() {
        let (found, cases) = run_probe(probe, FaultSet::NONE, Duration::from_secs(60), 2);
        assert!(found.is_none(), "{}: {:#?}", probe.label(), found);
        eprintln!("{:<60} {cases} cases, none failed", probe.label());
    }
}
