//! The loss-free rate measured again: after every method's ladder, each method
//! runs its loss-free rate and the ladder's next rate up once per round, the
//! methods in a rotated order each round, so the other work on a shared
//! machine falls on all of them alike and each method's loss-free rate gets a
//! spread (the ladder alone measures each rate once).

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{
    INTERRUPTED, MethodResult, Plan, Status, Step, check_interrupt, load_target, measure_step,
    methods::{self, Method},
    put_on, report, say,
    setup::Bed,
};

/// One repeated step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Repeat {
    pub round: usize,
    pub step: Step,
}

/// The rates a method repeats: its loss-free rate and the next rate its
/// ladder tried above it (none above when every step passed).
pub fn candidates(m: &MethodResult) -> Vec<u32> {
    let Some(free) = m.loss_free_rate else {
        return Vec::new();
    };
    let above = m
        .steps
        .iter()
        .map(|s| s.offered)
        .filter(|r| *r > free)
        .min();
    std::iter::once(free).chain(above).collect()
}

/// Per round: the highest repeated rate that passed with the lower one
/// passing too; None when the loss-free rate itself failed that round.
pub fn loss_free_per_round(m: &MethodResult) -> Vec<Option<u32>> {
    let rates = candidates(m);
    let rounds = m.repeats.iter().map(|r| r.round).max().map_or(0, |r| r + 1);
    (0..rounds)
        .map(|round| {
            let mut best = None;
            for &rate in &rates {
                match m
                    .repeats
                    .iter()
                    .find(|r| r.round == round && r.step.offered == rate)
                {
                    Some(r) if r.step.pass => best = Some(rate),
                    _ => break,
                }
            }
            best
        })
        .collect()
}

pub fn run(
    bed: &Bed,
    dnsteer_bin: &Path,
    queries: &Path,
    plan: &Plan,
    list: &[Method],
    results: &mut [MethodResult],
) -> Result<()> {
    let todo: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m.status, Status::Measured) && m.loss_free_rate.is_some())
        // The smoke test runs the code path on two methods only.
        .filter(|(_, m)| !plan.quick || m.id == methods::REFERENCE || m.id == "dnsteer-nth")
        .map(|(i, _)| i)
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    for round in 0..plan.repeat_rounds {
        let mut order = todo.clone();
        let n = order.len();
        order.rotate_left(round % n);
        for i in order {
            check_interrupt()?;
            let Some(method) = list.iter().find(|m| m.id == results[i].id) else {
                continue;
            };
            let rates = candidates(&results[i]);
            let mut scratch = MethodResult::new(method);
            let Some(applied) = put_on(bed, dnsteer_bin, method, &mut scratch) else {
                say(&format!(
                    "  {}: could not be put on again for round {round}",
                    method.id
                ));
                continue;
            };
            let to = load_target(bed, method);
            let mut outcome = Ok(());
            for rate in rates {
                let length = std::time::Duration::from_secs_f64(plan.repeat_step_s);
                match measure_step(bed, queries, length, to, rate) {
                    Ok(step) => {
                        say(&format!(
                            "[repeat {round}]{}",
                            report::step_line(&method.id, &step)
                        ));
                        results[i].repeats.push(Repeat { round, step });
                    }
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            methods::remove(applied, &bed.topo.node)?;
            bed.clear_client_xdp()?;
            if let Err(e) = outcome {
                if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(e);
                }
                say(&format!("  {}: repeat round {round}: {e:#}", method.id));
            }
        }
    }
    Ok(())
}
