//! `cargo xtask bench [--quick]`: every steering method on one topology, the
//! same offered loads, measured side by side in one run.
//!
//! - `setup`: the namespaces, the XDP responders, the load generator's route.
//! - `methods`: the methods as data, and how each is put on the node.
//! - `load`: kxdpgun and the paced round-trip load.
//! - `cpu`: kernel CPU time from /proc/stat, conntrack's counters.
//! - `prog_cost`: BPF_PROG_TEST_RUN of the XDP program next to a trivial one.
//! - `bind`: the methods interleaved against real BIND 9.
//! - `report`: the JSON, docs/BENCHMARKS.md and the plots.

mod bind;
mod cpu;
mod load;
mod methods;
mod prog_cost;
mod repeat;
mod report;
mod setup;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use self::{
    cpu::{ConntrackStats, CpuUse},
    load::{Burst, Latency, Window},
    methods::{Applied, Kind, Method, Target, Unavailable},
    setup::Bed,
};

/// A step passes when fewer than this share of its queries went unanswered...
pub const LOSS_LIMIT: f64 = 0.001;
/// ... and the load generator sent at least this share of the offered rate:
/// it shares the CPUs with the node, so a method that costs more CPU also
/// holds the sending back (AF_XDP sends on a veth run the receiver's
/// processing in the sender's context) instead of losing queries.
pub const SENT_SHARE: f64 = 0.95;
/// Before each method the machine is watched this long with nothing running,
/// and a warning is printed when more than `BUSY_WARNING` of it was busy.
const BACKGROUND: Duration = Duration::from_secs(1);
const BUSY_WARNING: f64 = 0.10;
/// BIND's `udp-receive-buffer` in the BIND run's `+buffer` cases: the kernel
/// doubles it to a 276000-byte buffer, which holds as many queries charged
/// 1077 bytes (an XDP-built skb) as the default 212992 bytes holds at 832.
const BIND_RECEIVE_BUFFER: u32 = 138_000;
/// The lowest rate the ladder goes down to for a method slower than its start.
const MIN_RATE: u32 = 1000;
/// The bench's own processes spend almost no user time (kxdpgun sends from the
/// kernel's side, the responders are XDP): user time above this share of a
/// step's window is other work on the machine, and the step is measured again.
const FOREIGN_USER: f64 = 0.05;

/// How much to measure: the full run, or `--quick`'s smoke test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub quick: bool,
    /// Offered rates, queries/s, in the order tried.
    pub rates: Vec<u32>,
    pub step_s: f64,
    /// A method's ladder ends after this many failed steps.
    pub failures_to_stop: usize,
    pub latency_rate: u32,
    pub latency_s: f64,
    /// Offered rates against BIND, each run once per round.
    pub bind_rates: Vec<u32>,
    pub bind_step_s: f64,
    /// Rounds of the BIND run: every case at every rate once per round.
    #[serde(default)]
    pub bind_rounds: usize,
    /// BIND's `udp-receive-buffer` in the run's `+buffer` cases, bytes.
    #[serde(default)]
    pub bind_receive_buffer: u32,
    /// Rounds of the repeats at each method's loss-free rate and the rate above.
    #[serde(default)]
    pub repeat_rounds: usize,
    /// Seconds per repeated step.
    #[serde(default)]
    pub repeat_step_s: f64,
    pub prog_repeat: u32,
    pub prog_single_packets: u32,
    /// How long to wait, before each method, for the machine to be quiet.
    pub quiet_wait_s: f64,
    /// How often a step with other programs' CPU time in it is run again.
    /// (Results written before this was recorded retried twice.)
    #[serde(default = "two")]
    pub foreign_retries: usize,
}

fn two() -> usize {
    2
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                rates: vec![10_000, 40_000],
                step_s: 1.5,
                failures_to_stop: 2,
                latency_rate: 2000,
                latency_s: 0.5,
                bind_rates: vec![5_000],
                bind_step_s: 0.5,
                bind_rounds: 1,
                bind_receive_buffer: BIND_RECEIVE_BUFFER,
                repeat_rounds: 1,
                repeat_step_s: 1.0,
                prog_repeat: 1_000_000,
                prog_single_packets: 20_000,
                quiet_wait_s: 0.0,
                foreign_retries: 0,
            }
        } else {
            Self {
                quick,
                // 20k to 320k in steps of 2^(1/3) (about 26%).
                rates: (0..=12)
                    .map(|k| (20_000.0 * 2f64.powf(f64::from(k) / 3.0)).round() as u32)
                    .collect(),
                step_s: 3.0,
                failures_to_stop: 2,
                latency_rate: 2000,
                latency_s: 3.0,
                // Around the knee of 4 x `named -n 1` on 2 CPUs: 35k answered
                // and 50k not on a quiet machine (issue 12), lower when it is
                // shared.
                bind_rates: vec![24_000, 32_000, 40_000, 48_000],
                bind_step_s: 1.2,
                bind_rounds: 5,
                bind_receive_buffer: BIND_RECEIVE_BUFFER,
                repeat_rounds: 5,
                repeat_step_s: 2.0,
                prog_repeat: 1_000_000,
                prog_single_packets: 1_000_000,
                // The machine is shared: waiting for quiet could take the whole
                // run; how busy it was is recorded instead.
                quiet_wait_s: 5.0,
                // On a shared machine other work is in nearly every window: the
                // step's figure is taken less user time instead of run again.
                foreign_retries: 0,
            }
        }
    }

    fn step(&self) -> Duration {
        Duration::from_secs_f64(self.step_s)
    }

    /// The ratio between two rates of the ladder.
    fn factor(&self) -> f64 {
        match self.rates[..] {
            [a, b, ..] if a > 0 && b > a => f64::from(b) / f64::from(a),
            _ => 2f64.powf(1.0 / 3.0),
        }
    }
}

/// One offered rate of one method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub offered: u32,
    pub sent: u64,
    pub answered: u64,
    pub duration_s: f64,
    /// Unanswered share, 0..1.
    pub loss: f64,
    /// The generator sent at least `SENT_SHARE` of the offered queries.
    pub offered_in_full: bool,
    pub pass: bool,
    /// The steady middle of the step: queries and CPU time between two of
    /// kxdpgun's running totals.
    pub window: Option<Window>,
    /// Busy CPU microseconds (all CPUs) per query answered in the window.
    pub cpu_us_per_query: Option<f64>,
    /// The tick-sampled system + irq + softirq share of it, for information.
    pub kernel_us_per_query: Option<f64>,
    /// Other programs' user time was in the window: `cpu_us_per_query` is
    /// the busy time less all user time.
    #[serde(default)]
    pub cpu_less_user: bool,
    /// Per-CPU-summed conntrack counters that moved (`entries`: at the end).
    pub conntrack: ConntrackStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Measured,
    /// The method needs something this build of dnsteer does not have.
    NotAvailable,
    /// It could not run on this machine (or failed); `reason` says why.
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    pub id: String,
    pub label: String,
    pub group: String,
    pub status: Status,
    pub reason: Option<String>,
    /// What was put on the node (rules, config), abridged for big rule sets.
    pub setup: Option<String>,
    pub setup_s: Option<f64>,
    pub steps: Vec<Step>,
    /// The highest offered rate that passed, below the first that failed.
    pub loss_free_rate: Option<u32>,
    /// Every step tried passed: the capacity is at least `loss_free_rate`.
    pub loss_free_is_lower_bound: bool,
    /// The most answered queries per second in any step, lost or not.
    pub peak_answered_rate: Option<f64>,
    /// The share of the machine busy in the second before the method, with
    /// nothing of the bench running (other work on the machine).
    pub background_busy: Option<f64>,
    pub latency: Option<Latency>,
    /// The loss-free rate and the rate above it again, once per round.
    #[serde(default)]
    pub repeats: Vec<repeat::Repeat>,
}

impl Step {
    /// User time in the CPU window as a share of all the CPU time in it.
    pub fn foreign_user_share(&self) -> f64 {
        self.window.as_ref().map_or(0.0, |w| {
            w.cpu.user_s / (w.cpu.wall_s * w.cpu.cpus.max(1) as f64).max(1e-9)
        })
    }
}

impl MethodResult {
    fn new(m: &Method) -> Self {
        Self {
            id: m.id.clone(),
            label: m.label.clone(),
            group: m.group.to_owned(),
            status: Status::Measured,
            reason: None,
            setup: None,
            setup_s: None,
            steps: Vec::new(),
            loss_free_rate: None,
            loss_free_is_lower_bound: false,
            peak_answered_rate: None,
            background_busy: None,
            latency: None,
            repeats: Vec::new(),
        }
    }

    pub fn step_at(&self, rate: u32) -> Option<&Step> {
        self.steps.iter().find(|s| s.offered == rate)
    }

    fn finish(&mut self) {
        let first_fail = self.steps.iter().position(|s| !s.pass);
        let passed = self.steps[..first_fail.unwrap_or(self.steps.len())]
            .iter()
            .map(|s| s.offered)
            .max();
        self.loss_free_rate = passed;
        self.loss_free_is_lower_bound = first_fail.is_none() && passed.is_some();
        self.peak_answered_rate = self
            .steps
            .iter()
            .map(|s| s.answered as f64 / s.duration_s.max(1e-9))
            .max_by(f64::total_cmp);
    }
}

/// The run against real BIND with dnsperf (results written before the
/// interleaved run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindMethod {
    pub id: String,
    pub label: String,
    pub status: Status,
    pub reason: Option<String>,
    pub steps: Vec<BindStep>,
    /// The highest rate with every query answered, below the first that lost any.
    pub all_answered_rate: Option<u32>,
    pub all_answered_is_lower_bound: bool,
    /// Flows per backend address: conntrack's entries after the last step
    /// (iptables), or dnsteer's new flows over all steps.
    #[serde(default)]
    pub flows_per_backend: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindStep {
    pub offered: u32,
    pub burst: Burst,
    /// dnsperf's answered queries per second.
    pub answered_rate: f64,
    pub cpu: CpuUse,
}

/// Everything one run measured, as written to bench/results/<date>-<host>.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub date: String,
    pub started_utc: String,
    pub host: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub versions: Vec<(String, String)>,
    pub plan: Plan,
    pub loss_limit: f64,
    pub notes: Vec<String>,
    pub methods: Vec<MethodResult>,
    /// dnsperf against BIND, one step per rate (results written before the
    /// interleaved run; empty since).
    #[serde(default)]
    pub bind: Vec<BindMethod>,
    /// The interleaved run against BIND.
    #[serde(default)]
    pub bind_runs: Option<bind::BindRuns>,
    pub prog_cost: Option<prog_cost::ProgCost>,
    pub elapsed_s: f64,
    /// `--only`: the parts this run was limited to (none: all).
    pub only: Vec<String>,
}

impl Results {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == part)
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Stops between steps after Ctrl-C or SIGTERM, so every namespace, rule and
/// process goes away with the drops on the way out.
fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; the namespaces were torn down");
    }
    Ok(())
}

fn say(line: &str) {
    println!("bench: {line}");
}

pub struct Options {
    pub quick: bool,
    /// Only these methods (ids) and parts (`prog-cost`, `bind`); all when empty.
    pub only: Vec<String>,
    /// The repository root: where bench/ and docs/ are.
    pub root: PathBuf,
}

pub fn run(dnsteer_bin: &Path, opts: &Options) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let plan = Plan::new(opts.quick);
    let object = setup::ebpf_object()?;
    let mut results = report::new_results(plan.clone())?;
    results.only = opts.only.clone();
    let known: Vec<String> = methods::all()
        .into_iter()
        .map(|m| m.id)
        .chain(["prog-cost".to_owned(), "bind".to_owned()])
        .collect();
    if let Some(unknown) = opts.only.iter().find(|o| !known.contains(o)) {
        bail!(
            "--only {unknown}: not a part of the bench; use one of {}",
            known.join(", ")
        );
    }
    say(&format!(
        "{} run on {} ({} CPUs, kernel {}); object {}",
        if plan.quick {
            "quick (smoke test)"
        } else {
            "full"
        },
        results.host,
        results.cpus,
        results.kernel,
        object.display()
    ));
    let scratch = std::env::temp_dir().join(format!("dnsteer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let outcome = measure(dnsteer_bin, &object, &plan, &scratch, &mut results);
    let _ = std::fs::remove_dir_all(&scratch);
    outcome?;
    results.elapsed_s = started.elapsed().as_secs_f64();
    let written = report::write(&results, &opts.root)?;
    for path in written {
        say(&format!("wrote {}", path.display()));
    }
    say(&format!("done in {:.0} s", results.elapsed_s));
    Ok(())
}

/// Writes the report and plots again from a results file, measuring nothing.
pub fn render(json: &Path, root: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let results: Results = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a bench results file", json.display()))?;
    for path in report::write(&results, root)? {
        say(&format!("wrote {}", path.display()));
    }
    Ok(())
}

fn measure(
    dnsteer_bin: &Path,
    object: &Path,
    plan: &Plan,
    scratch: &Path,
    results: &mut Results,
) -> Result<()> {
    say("building namespaces: client, node (eth3), 4 backends with BIND and XDP responders");
    let mut bed = Bed::build(object)?;
    check_interrupt()?;
    let queries = load::write_query_file(scratch)?;
    let methods: Vec<Method> = methods::all()
        .into_iter()
        .filter(|m| !plan.quick || m.quick)
        .filter(|m| results.wants(&m.id))
        .collect();
    let total = methods.len();
    for (i, method) in methods.iter().enumerate() {
        check_interrupt()?;
        say(&format!(
            "[{}/{total}] {}: {}",
            i + 1,
            method.id,
            method.label
        ));
        let result = run_method(&bed, dnsteer_bin, &queries, plan, method)?;
        if let Some(reason) = &result.reason {
            say(&format!(
                "[{}/{total}] {}: {:?}: {reason}",
                i + 1,
                method.id,
                result.status
            ));
        }
        results.methods.push(result);
    }

    check_interrupt()?;
    if plan.repeat_rounds > 0 && !methods.is_empty() {
        say(&format!(
            "the loss-free rates again: {} rounds, the methods interleaved",
            plan.repeat_rounds
        ));
        repeat::run(
            &bed,
            dnsteer_bin,
            &queries,
            plan,
            &methods,
            &mut results.methods,
        )?;
    }

    check_interrupt()?;
    if results.wants("prog-cost") {
        say("program cost: BPF_PROG_TEST_RUN");
        // Other work competes for the CPU and the caches the test runs use.
        let quiet = wait_for_quiet(plan)?;
        if quiet.busy_share() > BUSY_WARNING {
            say(&format!(
                "  warning: {:.0}% of the machine was busy with other work just before the program cost runs",
                quiet.busy_share() * 100.0
            ));
        }
        match prog_cost::measure(
            dnsteer_bin,
            bed.pass_program()?,
            plan.prog_repeat,
            plan.prog_single_packets,
            &|line| say(&format!("program cost: {line}")),
        ) {
            Ok(cost) => {
                results.prog_cost = Some(prog_cost::ProgCost {
                    busy_before: Some(quiet.busy_share()),
                    ..cost
                })
            }
            Err(e) if !INTERRUPTED.load(Ordering::SeqCst) => {
                let why = format!("the program cost could not be measured: {e:#}");
                say(&why);
                results.notes.push(why);
            }
            Err(e) => return Err(e),
        }
    }

    check_interrupt()?;
    if !results.wants("bind") {
        return Ok(());
    }
    say("real BIND 9 backends (responders off), the methods interleaved");
    bed.detach_responders()?;
    let runs = bind::run(&mut bed, dnsteer_bin, &queries, plan)?;
    say(&format!("real BIND 9: done in {:.0} s", runs.elapsed_s));
    results.bind_runs = Some(runs);
    Ok(())
}

fn target<'a>(
    bed: &'a Bed,
    aliases: &'a [std::net::SocketAddr],
    backends: &'a [std::net::Ipv4Addr],
) -> Target<'a> {
    Target {
        iface: &bed.topo.config.node_iface,
        service: bed.service(),
        aliases,
        backends,
    }
}

/// Puts a method on the node, or says why it cannot run.
fn put_on(
    bed: &Bed,
    dnsteer_bin: &Path,
    method: &Method,
    result: &mut MethodResult,
) -> Option<Applied> {
    let aliases = bed.topo.service_targets()[1..].to_vec();
    let backends = bed.backend_addrs();
    let t = target(bed, &aliases, &backends);
    result.setup = Some(report::abridged_setup(&method.kind, &t));
    let start = Instant::now();
    match methods::apply(&method.kind, &bed.topo.node, dnsteer_bin, &t) {
        Ok(applied) => {
            result.setup_s = Some(start.elapsed().as_secs_f64());
            Some(applied)
        }
        Err(Unavailable::NotInBuild(why)) => {
            result.status = Status::NotAvailable;
            result.reason = Some(why);
            None
        }
        Err(Unavailable::Failed(e)) => {
            result.status = Status::Skipped;
            result.reason = Some(format!("could not be set up: {e:#}"));
            None
        }
    }
}

/// The machine's use over the first second in which at most `BUSY_WARNING` of
/// it was busy, or over the last one tried once `plan.quiet_wait_s` has passed.
fn wait_for_quiet(plan: &Plan) -> Result<cpu::CpuUse> {
    let waiting = Instant::now();
    loop {
        let quiet = cpu::background(BACKGROUND)?;
        if quiet.busy_share() <= BUSY_WARNING
            || waiting.elapsed().as_secs_f64() >= plan.quiet_wait_s
        {
            return Ok(quiet);
        }
        check_interrupt()?;
    }
}

fn run_method(
    bed: &Bed,
    dnsteer_bin: &Path,
    queries: &Path,
    plan: &Plan,
    method: &Method,
) -> Result<MethodResult> {
    let mut result = MethodResult::new(method);
    // Other work on the machine would count as this method's CPU time.
    let quiet = wait_for_quiet(plan)?;
    result.background_busy = Some(quiet.busy_share());
    if quiet.busy_share() > BUSY_WARNING {
        say(&format!(
            "  warning: {:.0}% of the machine was busy with other work just before {}; its CPU figures include that",
            quiet.busy_share() * 100.0,
            method.id
        ));
    }
    let Some(applied) = put_on(bed, dnsteer_bin, method, &mut result) else {
        return Ok(result);
    };
    let outcome = ladder(bed, queries, plan, method, &mut result);
    methods::remove(applied, &bed.topo.node)?;
    bed.clear_client_xdp()?;
    if let Err(e) = outcome {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(e);
        }
        result.status = Status::Skipped;
        result.reason = Some(format!("the load could not run: {e:#}"));
    }
    result.finish();
    Ok(result)
}

/// Where a method's load goes: the service, or the first backend for the baseline.
fn load_target(bed: &Bed, method: &Method) -> std::net::SocketAddr {
    if method.kind == Kind::Baseline {
        std::net::SocketAddr::from((bed.backend_addrs()[0], testbed::DNS_PORT))
    } else {
        bed.service()
    }
}

/// One kxdpgun step of `length` at `rate` to `to`, the node's conntrack table
/// flushed first.
fn measure_step(
    bed: &Bed,
    queries: &Path,
    length: Duration,
    to: std::net::SocketAddr,
    rate: u32,
) -> Result<Step> {
    check_interrupt()?;
    let node = &bed.topo.node;
    methods::flush_conntrack(node);
    let ct0 = cpu::conntrack_stats(node);
    let (burst, window) =
        load::kxdpgun(&bed.topo.client, queries, to, &bed.node_mac, rate, length)?;
    let ct = cpu::conntrack_delta(&ct0, &cpu::conntrack_stats(node));
    let offered_in_full = burst.sent as f64 >= SENT_SHARE * f64::from(rate) * burst.duration_s;
    Ok(Step {
        offered: rate,
        sent: burst.sent,
        answered: burst.answered,
        duration_s: burst.duration_s,
        loss: burst.loss(),
        offered_in_full,
        pass: burst.loss() < LOSS_LIMIT && offered_in_full,
        cpu_us_per_query: window.as_ref().and_then(|w| w.cpu.us_per(w.answered)),
        kernel_us_per_query: window
            .as_ref()
            .filter(|w| w.answered > 0)
            .map(|w| w.cpu.kernel_s() * 1e6 / w.answered as f64),
        window,
        conntrack: ct,
        cpu_less_user: false,
    })
}

fn ladder(
    bed: &Bed,
    queries: &Path,
    plan: &Plan,
    method: &Method,
    result: &mut MethodResult,
) -> Result<()> {
    let node = &bed.topo.node;
    let to = load_target(bed, method);
    let step = |rate: u32| -> Result<Step> {
        let step = measure_step(bed, queries, plan.step(), to, rate)?;
        say(&report::step_line(&method.id, &step));
        Ok(step)
    };
    // A step whose window had other work's user time in it measured that
    // work too: it is run again, and the cleanest of the tries kept.
    let step = |rate: u32| -> Result<Step> {
        let mut best = step(rate)?;
        for _ in 0..plan.foreign_retries {
            if best.foreign_user_share() <= FOREIGN_USER {
                break;
            }
            say(&format!(
                "  {}: {:.0}% of the CPU time in that window was other programs' user time; again",
                method.id,
                best.foreign_user_share() * 100.0
            ));
            let again = step(rate)?;
            if again.foreign_user_share() < best.foreign_user_share() {
                best = again;
            }
        }
        if best.foreign_user_share() > FOREIGN_USER {
            // Other programs' user time in the window: the busy time less all
            // user time (the bench's own is next to none) is the figure kept,
            // marked as such.
            best.cpu_us_per_query = best.window.as_ref().and_then(|w| {
                (w.answered > 0)
                    .then(|| (w.cpu.busy_s - w.cpu.user_s).max(0.0) * 1e6 / w.answered as f64)
            });
            best.cpu_less_user = true;
        }
        Ok(best)
    };
    let mut failures = 0;
    for &rate in &plan.rates {
        let step = step(rate)?;
        let pass = step.pass;
        result.steps.push(step);
        if !pass {
            failures += 1;
            if failures >= plan.failures_to_stop {
                break;
            }
        }
    }
    // A method slower than the ladder's first rate: down by the same factor
    // until a step passes, so it has a loss-free rate too.
    if !result.steps.iter().any(|s| s.pass) {
        let mut rate = plan.rates.first().copied().unwrap_or(MIN_RATE);
        while rate > MIN_RATE {
            rate = ((f64::from(rate) / plan.factor()).round() as u32).max(MIN_RATE);
            let step = step(rate)?;
            let pass = step.pass;
            result.steps.insert(0, step);
            if pass {
                break;
            }
        }
    }
    bed.clear_client_xdp()?;
    check_interrupt()?;
    methods::flush_conntrack(node);
    let latency = load::latency(
        &bed.topo.client,
        to,
        plan.latency_rate,
        Duration::from_secs_f64(plan.latency_s),
    )?;
    say(&report::latency_line(&method.id, &latency));
    result.latency = Some(latency);
    Ok(())
}
