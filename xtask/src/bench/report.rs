//! The results as JSON, docs/BENCHMARKS.md and two PNG plots, and the
//! progress lines printed while the bench runs.
//!
//! A full run writes bench/results/<date>-<host>.json, bench/plots/<date>-<host>-*.png
//! and docs/BENCHMARKS.md. `--quick` is a smoke test whose numbers are not the
//! report: it writes the same three kinds of file under target/bench-quick/.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

use super::{
    BUSY_WARNING, BindMethod, FOREIGN_USER, LOSS_LIMIT, MethodResult, Plan, Results, SENT_SHARE,
    Status, Step,
    bind::{self, BindRuns, Versus},
    load::Latency,
    methods::{self, BASELINE, Kind, REFERENCE, Rules, Target},
    prog_cost::ProgCost,
    repeat,
};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text
        })
        .unwrap_or_default()
}

fn first_line_with(text: &str, needle: &str) -> String {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// Year-month-day and hh:mm:ss of a Unix time, UTC (Howard Hinnant's civil_from_days).
fn utc(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

pub fn new_results(plan: Plan) -> Result<Results> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let (date, time) = utc(now);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = first_line_with(&cpuinfo, "model name")
        .split(':')
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let versions = vec![
        (
            "dnsteer".to_owned(),
            format!("{}{dirty}", git(&["rev-parse", "--short", "HEAD"])),
        ),
        (
            "iptables".to_owned(),
            first_line_with(&command_line("iptables", &["--version"]), "iptables"),
        ),
        (
            "nft".to_owned(),
            first_line_with(&command_line("nft", &["--version"]), "nftables"),
        ),
        (
            "kxdpgun".to_owned(),
            first_line_with(&command_line("kxdpgun", &["--version"]), "version"),
        ),
        (
            "named".to_owned(),
            first_line_with(&command_line("named", &["-v"]), "BIND"),
        ),
        (
            "conntrack".to_owned(),
            first_line_with(&command_line("conntrack", &["--version"]), "conntrack"),
        ),
        (
            "nf_conntrack_max".to_owned(),
            std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
                .unwrap_or_else(|_| "(conntrack not loaded)".to_owned())
                .trim()
                .to_owned(),
        ),
    ];
    Ok(Results {
        date,
        started_utc: time,
        host,
        kernel,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        versions,
        plan,
        loss_limit: LOSS_LIMIT,
        notes: Vec::new(),
        methods: Vec::new(),
        bind: Vec::new(),
        bind_runs: None,
        prog_cost: None,
        elapsed_s: 0.0,
        only: Vec::new(),
    })
}

/// What a method puts on the node, for the report; a rule set of thousands of
/// services is shown as its size and the chains of the service under load.
pub fn abridged_setup(kind: &Kind, t: &Target) -> String {
    match kind {
        Kind::Baseline => "nothing: the load goes to 10.100.13.2 directly".to_owned(),
        Kind::Iptables(Rules::KubeProxy(n)) => {
            let rules = methods::kube_proxy_rules(*n, t);
            let total = rules.lines().filter(|l| l.starts_with("-A ")).count();
            let ours = t.service.ip().to_string();
            let mut chains: Vec<String> = rules
                .lines()
                .filter(|l| l.contains(&format!("-d {ours}/32")))
                .filter_map(|l| l.rsplit(' ').next().map(str::to_owned))
                .filter(|c| c.starts_with("KUBE-SVC-"))
                .collect();
            chains.dedup();
            let shown: String = rules
                .lines()
                .filter(|l| {
                    !l.starts_with("-A KUBE-SERVICES") || l.contains(&format!("-d {ours}/32"))
                })
                .filter(|l| {
                    !(l.starts_with("-A KUBE-SVC-") || l.starts_with("-A KUBE-SEP-"))
                        || chains.iter().any(|c| l.contains(c.as_str()))
                        || l.contains("10.100.13.")
                })
                .filter(|l| !l.starts_with(':'))
                .map(|l| format!("{l}\n"))
                .collect();
            format!("{total} rules in all; those of the service under load:\n{shown}")
        }
        Kind::Iptables(rules) => methods::operator_rules(*rules, t),
        Kind::Nft => methods::nft_rules(t),
        Kind::Dnsteer {
            xdp_mode, services, ..
        } => {
            let config = methods::dnsteer_config(kind, t).unwrap_or_default();
            let head: String = config
                .split("\n[[service]]\nname = \"svc1\"")
                .next()
                .unwrap_or("")
                .to_owned();
            let more = if *services > 1 {
                format!(
                    "\n... and {} more [[service]] entries, [limits]\n",
                    services - 1
                )
            } else {
                String::new()
            };
            format!("dnsteer run --xdp-mode={xdp_mode} with\n{head}{more}")
        }
    }
}

pub fn step_line(id: &str, s: &Step) -> String {
    let cpu = s
        .cpu_us_per_query
        .map_or("-".to_owned(), |c| format!("{c:.2} us"));
    let ct = ["insert_failed", "drop", "early_drop"]
        .iter()
        .filter_map(|k| {
            s.conntrack
                .get(*k)
                .filter(|v| **v > 0)
                .map(|v| format!(" {k}={v}"))
        })
        .collect::<String>();
    format!(
        "  {id}: offered {:>6}/s: sent {:>7} ({:.0}/s), answered {:>7} ({:.3}% unanswered) {}; CPU/query {cpu}{ct}",
        s.offered,
        s.sent,
        s.sent as f64 / s.duration_s.max(1e-9),
        s.answered,
        s.loss * 100.0,
        match (s.pass, s.offered_in_full) {
            (true, _) => "pass",
            (false, true) => "FAIL (lost)",
            (false, false) => "FAIL (not sent in full)",
        },
    )
}

pub fn latency_line(id: &str, l: &Latency) -> String {
    let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} us"));
    format!(
        "  {id}: round trips at {}/s: {} of {} answered, p50 {}, p99 {}",
        l.rate,
        l.answered,
        l.sent,
        us(l.p50_us),
        us(l.p99_us)
    )
}

/// Writes the JSON, the plots and the markdown; returns the paths written.
pub fn write(results: &Results, root: &Path) -> Result<Vec<PathBuf>> {
    let stem = format!("{}-{}", results.date, results.host);
    let partial = if results.plan.quick {
        Some("target/bench-quick")
    } else if !results.only.is_empty() {
        Some("target/bench-partial")
    } else {
        None
    };
    let (json, plots, md) = if let Some(dir) = partial {
        let dir = root.join(dir);
        (dir.clone(), dir.clone(), dir.join("BENCHMARKS.md"))
    } else {
        (
            root.join("bench/results"),
            root.join("bench/plots"),
            root.join("docs/BENCHMARKS.md"),
        )
    };
    for dir in [&json, &plots] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(parent) = md.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let json_path = json.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(results)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    register_font("sans-serif", FontStyle::Normal, load_font()?)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a font plotters can read"))?;
    let rate_png = plots.join(format!("{stem}-rate.png"));
    let cpu_png = plots.join(format!("{stem}-cpu.png"));
    plot_rates(results, &rate_png)?;
    plot_cpu(results, &cpu_png)?;
    let rel = |p: &Path| -> String {
        let base = md.parent().unwrap_or(root);
        relative(base, p)
    };
    let text = markdown(results, &rel(&json_path), &rel(&rate_png), &rel(&cpu_png));
    std::fs::write(&md, text).with_context(|| format!("writing {}", md.display()))?;
    Ok(vec![json_path, rate_png, cpu_png, md])
}

fn load_font() -> Result<&'static [u8]> {
    let bytes = std::fs::read(FONT).with_context(|| {
        format!("reading {FONT} for the plots' text (Debian: apt-get install fonts-dejavu-core)")
    })?;
    Ok(Box::leak(bytes.into_boxed_slice()))
}

/// `to` relative to the directory `from` (both under the repository root).
fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to_c: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to_c).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to_c[common..] {
        out.push(c);
    }
    out.display().to_string()
}

fn measured(results: &Results) -> impl Iterator<Item = &MethodResult> {
    results
        .methods
        .iter()
        .filter(|m| matches!(m.status, Status::Measured) && !m.steps.is_empty())
}

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 14] = [
        RGBColor(0, 0, 0),
        RGBColor(214, 39, 40),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
        RGBColor(188, 189, 34),
        RGBColor(227, 119, 194),
        RGBColor(148, 103, 189),
        RGBColor(31, 119, 180),
        RGBColor(23, 190, 207),
        RGBColor(44, 160, 44),
        RGBColor(127, 127, 127),
        RGBColor(0, 90, 50),
        RGBColor(0, 40, 120),
        RGBColor(90, 0, 90),
    ];
    COLORS[i % COLORS.len()]
}

/// The plots' rate axis: every offered and answered rate of every step.
fn rate_bounds(results: &Results) -> (f64, f64) {
    let rates = measured(results).flat_map(|m| {
        m.steps.iter().flat_map(|s| {
            [
                f64::from(s.offered),
                s.answered as f64 / s.duration_s.max(1e-9),
            ]
        })
    });
    let (lo, hi) = rates
        .filter(|r| *r > 0.0)
        .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
    if hi <= 0.0 {
        return (1000.0, 1_000_000.0);
    }
    (lo / 1.2, hi * 1.2)
}

fn plot_rates(results: &Results, path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = rate_bounds(results);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Answered vs offered DNS queries/s ({}, {})",
                results.host, results.date
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((lo..hi).log_scale(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered queries/s (kxdpgun, a new flow each)")
        .y_desc("answered queries/s")
        .label_style(("sans-serif", 14))
        .x_labels(15)
        .y_labels(15)
        .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()?;
    chart
        .draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.mix(0.2)))?
        .label("answered = offered")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.2)));
    for (i, m) in measured(results).enumerate() {
        let c = color(i);
        let points: Vec<(f64, f64)> = m
            .steps
            .iter()
            .map(|s| {
                (
                    f64::from(s.offered),
                    (s.answered as f64 / s.duration_s.max(1e-9)).max(lo),
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(m.id.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_cpu(results: &Results, path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = rate_bounds(results);
    let (bottom, top) = measured(results)
        .flat_map(|m| m.steps.iter())
        .filter(|s| s.pass)
        .filter_map(|s| s.cpu_us_per_query)
        .fold((f64::MAX, 0.0f64), |(lo, hi), c| (lo.min(c), hi.max(c)));
    let (bottom, top) = if top > 0.0 {
        (bottom / 1.3, top * 1.3)
    } else {
        (0.1, 100.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "CPU per answered query, passing steps ({}, {})",
                results.host, results.date
            ),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((lo..hi).log_scale(), (bottom..top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered queries/s")
        .y_desc("busy CPU microseconds per query (all CPUs, incl. load generator)")
        .label_style(("sans-serif", 14))
        .x_labels(15)
        .y_labels(15)
        .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()?;
    for (i, m) in measured(results).enumerate() {
        let c = color(i);
        let points: Vec<(f64, f64)> = m
            .steps
            .iter()
            .filter(|s| s.pass)
            .filter_map(|s| Some((f64::from(s.offered), s.cpu_us_per_query?)))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(m.id.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The figures the tables compare.
pub struct Summary<'a> {
    pub reference: Option<&'a MethodResult>,
    pub baseline: Option<&'a MethodResult>,
    /// The rate CPU per query is compared at: the reference's loss-free rate.
    pub cpu_rate: Option<u32>,
}

impl<'a> Summary<'a> {
    pub fn of(results: &'a Results) -> Self {
        let find = |id: &str| results.methods.iter().find(|m| m.id == id);
        let reference = find(REFERENCE);
        Self {
            reference,
            baseline: find(BASELINE),
            cpu_rate: reference.and_then(|r| r.loss_free_rate),
        }
    }

    pub fn cpu_at(&self, m: &MethodResult) -> Option<f64> {
        m.step_at(self.cpu_rate?)?.cpu_us_per_query
    }

    /// CPU per query less the baseline's at the same rate.
    pub fn net_cpu_at(&self, m: &MethodResult) -> Option<f64> {
        Some(self.cpu_at(m)? - self.cpu_at(self.baseline?)?)
    }

    /// CPU per query, gross and net of the baseline, as table cells: at the
    /// comparison rate, or else (a method that never carried it) at the
    /// method's own loss-free rate, saying so.
    pub fn cpu_cells(&self, m: &MethodResult) -> (String, String) {
        let at = |rate: u32| -> Option<(f64, Option<f64>)> {
            let gross = m.step_at(rate)?.cpu_us_per_query?;
            // † figures (less user time) are compared as they are.
            let base = self
                .baseline
                .and_then(|b| b.step_at(rate)?.cpu_us_per_query);
            Some((gross, base.map(|b| gross - b)))
        };
        let (rate, note) = match self.cpu_rate {
            Some(r) if at(r).is_some() => (Some(r), String::new()),
            _ => (
                m.loss_free_rate,
                m.loss_free_rate
                    .map_or(String::new(), |r| format!(" (at {r}/s)")),
            ),
        };
        let dagger = rate
            .and_then(|r| m.step_at(r))
            .is_some_and(|st| st.cpu_less_user);
        let note = if dagger { format!("†{note}") } else { note };
        match rate.and_then(at) {
            Some((gross, net)) => (
                format!("{gross:.2}{note}"),
                opt(net, |n| format!("{n:.2}{note}")),
            ),
            None => ("–".to_owned(), "–".to_owned()),
        }
    }

    pub fn peak_ratio(&self, m: &MethodResult) -> Option<f64> {
        Some(m.peak_answered_rate? / self.reference?.peak_answered_rate?)
    }

    pub fn rate_ratio(&self, m: &MethodResult) -> Option<f64> {
        Some(f64::from(m.loss_free_rate?) / f64::from(self.reference?.loss_free_rate?))
    }

    pub fn cpu_ratio(&self, m: &MethodResult) -> Option<f64> {
        Some(self.cpu_at(m)? / self.cpu_at(self.reference?)?)
    }

    pub fn net_cpu_ratio(&self, m: &MethodResult) -> Option<f64> {
        Some(self.net_cpu_at(m)? / self.net_cpu_at(self.reference?)?)
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or("–".to_owned(), f)
}

fn rate_text(m: &MethodResult) -> String {
    match m.loss_free_rate {
        Some(r) if m.loss_free_is_lower_bound => format!("≥ {r}"),
        Some(r) => r.to_string(),
        None => "< lowest step".to_owned(),
    }
}

fn status_text(m: &MethodResult) -> String {
    match m.status {
        Status::Measured => String::new(),
        Status::NotAvailable => "not available in this build".to_owned(),
        Status::Skipped => "skipped".to_owned(),
    }
}

fn markdown(results: &Results, json: &str, rate_png: &str, cpu_png: &str) -> String {
    let s = Summary::of(results);
    let plan = &results.plan;
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    if plan.quick {
        let _ = writeln!(
            md,
            "**A `--quick` smoke run: few, short steps. Its numbers are not the report; see docs/BENCHMARKS.md in the repository for a full run.**\n"
        );
    }
    let _ = writeln!(
        md,
        "Every steering method measured side by side in one run of `cargo xtask bench{}` on {} ({} UTC), \
         host `{}`: {} CPUs ({}), kernel {}, {:.0} minutes. Raw numbers: [{json}]({json}).\n",
        if plan.quick { " --quick" } else { "" },
        results.date,
        results.started_utc,
        results.host,
        results.cpus,
        results.cpu_model,
        results.kernel,
        results.elapsed_s / 60.0
    );
    let busy: Vec<f64> = results
        .methods
        .iter()
        .filter_map(|m| m.background_busy)
        .collect();
    if let Some(b) = bind::median(&busy).filter(|b| *b > BUSY_WARNING) {
        let _ = writeln!(
            md,
            "**This run shared the machine with other work**: a median {:.0}% of it was busy just \
             before each method, with nothing of the bench running. The rates are lower than on a \
             quiet machine and move from step to step; CPU figures marked † are the busy time less \
             the window's user time and still hold other programs' system time. Compare methods \
             through the interleaved repeats (the loss-free rate, repeated; the BIND run's rounds) \
             and their ranges, not through single steps.\n",
            b * 100.0
        );
    }
    let _ = writeln!(
        md,
        "Versions: {}.\n",
        results
            .versions
            .iter()
            .map(|(k, v)| format!("{k} `{v}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let _ = writeln!(md, "## How it was measured\n");
    let _ = writeln!(
        md,
        "- **Topology**: the test bed's network namespaces on this one machine: a load generator \
         (`client`), the node (`eth3` with 192.0.2.10 and the alias 192.0.2.11), four backends \
         10.100.13.2-5, each behind a veth of its own. Every method runs on the same namespaces, \
         one after the other; rules go into the node's namespace only and are removed (`nft flush \
         ruleset`) before the next method.\n\
         - **Backends**: for the capacity runs each backend answers with a small XDP program \
         (`bench_responder` in `xdp-ebpf/src/bench.rs`): it turns the query into its answer \
         (`A` = the backend's address) in place and sends it back with XDP_TX, so the runs measure \
         the steering, not a DNS server. The node's backend veths run a trivial XDP program so \
         they accept those XDP_TX frames; that is the same for every method. BIND 9 runs only in \
         the [run against real BIND](#real-bind-9-backends).\n\
         - **Load**: kxdpgun (Knot DNS, AF_XDP) sends `whoami.example. A` to 192.0.2.10:53 at each \
         offered rate for {:.0} s, from 198.18.0.0/16, walking source ports before addresses, so \
         every query is a new flow (a new conntrack entry, a new dnsteer flow record). Offered rates \
         go up by a factor of 2^(1/3) from {} to {} queries/s; a method stops after {} failed steps, \
         and one that fails the first step goes down by the same factor until a step passes. \
         A step **passes** when fewer than {}% of its queries are unanswered. The **loss-free rate** is \
         the highest offered rate that passed below the first that failed (\"≥\" when every step tried \
         passed). A step also fails when kxdpgun could not send {}% of the offered queries: the \
         generator shares the two CPUs with the node, and an AF_XDP send into a veth runs the \
         receiving side's processing in the sender's context, so a method that costs more CPU \
         slows the sending instead of losing queries. The **peak** column is the most answered \
         queries/s of any step: where the loss-free rate is limited by the ladder's steps it is the \
         finer measure of capacity.\n\
         - **CPU per query**: busy CPU time (wall time × CPUs − idle, from /proc/stat, over the \
         steady middle of each step between two of kxdpgun's running totals) divided by the queries \
         answered in it. Idle time is measured at every idle entry and exit (NO_HZ); the kernel's \
         user/system/softirq split is only sampled at each tick, and kxdpgun's timer-paced load \
         aliases with the tick, so the split is kept in the JSON for information only. The \
         namespaces share the machine's CPUs, so the figure includes the load generator and the \
         responders, not only the node: the **net** column subtracts the same figure for \
         `baseline` (the load sent straight to one backend through the node's plain forwarding, no \
         steering) at the same rate. Tables compare CPU at the rate iptables nth carries loss-free \
         ({}). Before each method the bench waits (up to {:.0} s) for a second in which the machine \
         is at most {:.0}% busy; the **busy before** column says how busy it was. The bench's own \
         processes spend almost no user time (kxdpgun sends from the kernel's side, the responders \
         are XDP), so a step whose window holds more than {:.0}% user time measured other work too: \
         it is run again, up to {} times, the cleanest kept; if it stays above, its CPU figure is \
         the busy time less all the window's (tick-sampled) user time, marked † (other programs' \
         system time stays in it).\n\
         - **conntrack**: the node's table is flushed (`conntrack -F`) before every step, so each \
         step starts empty and holds at most one step's flows. At a steady rate it would hold \
         `nf_conntrack_udp_timeout` (30 s) worth: with nf_conntrack_max = {}, more than about {} new \
         flows/s overflow it. Short steps therefore flatter the iptables methods.\n\
         - **Latency**: the test bed's paced generator (a fresh kernel UDP socket per query) at {} \
         queries/s for {:.0} s; p50 and p99 of the round trips of the answered queries.\n",
        plan.step_s,
        plan.rates.first().copied().unwrap_or(0),
        plan.rates.last().copied().unwrap_or(0),
        plan.failures_to_stop,
        LOSS_LIMIT * 100.0,
        SENT_SHARE * 100.0,
        opt(s.cpu_rate, |r| format!("{r} queries/s")),
        plan.quiet_wait_s,
        BUSY_WARNING * 100.0,
        FOREIGN_USER * 100.0,
        plan.foreign_retries,
        conntrack_max(results),
        conntrack_max(results)
            .parse::<u64>()
            .map_or("?".to_owned(), |m| (m / 30).to_string()),
        plan.latency_rate,
        plan.latency_s,
    );

    let _ = writeln!(md, "## Every method against iptables nth\n");
    let _ = writeln!(
        md,
        "| method | loss-free rate (q/s) | × iptables nth | peak answered q/s | × iptables nth | CPU µs/query at {} | net of baseline | × iptables nth (net) | softirq per CPU | p50 µs | p99 µs | busy before | |",
        opt(s.cpu_rate, |r| format!("{r}/s"))
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"
    );
    for m in &results.methods {
        let lat = m.latency.as_ref();
        let _ = writeln!(
            md,
            "| {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.id,
            m.group,
            if matches!(m.status, Status::Measured) {
                rate_text(m)
            } else {
                "–".to_owned()
            },
            opt(s.rate_ratio(m), |r| format!("{r:.2}")),
            opt(m.peak_answered_rate, |r| format!("{r:.0}")),
            opt(s.peak_ratio(m), |r| format!("{r:.2}")),
            s.cpu_cells(m).0,
            s.cpu_cells(m).1,
            opt(s.net_cpu_ratio(m), |r| format!("{r:.2}")),
            opt(
                s.cpu_rate
                    .and_then(|r| m.step_at(r))
                    .and_then(|st| st.window.as_ref())
                    .and_then(|w| w.cpu.softirq_split()),
                |x| x
            ),
            opt(lat.and_then(|l| l.p50_us), |v| format!("{v:.0}")),
            opt(lat.and_then(|l| l.p99_us), |v| format!("{v:.0}")),
            opt(m.background_busy, |b| format!("{:.0}%", b * 100.0)),
            status_text(m),
        );
    }
    let _ = writeln!(md);
    for m in results.methods.iter().filter(|m| m.reason.is_some()) {
        let _ = writeln!(
            md,
            "- `{}`: {}: {}",
            m.id,
            status_text(m),
            m.reason
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    for note in &results.notes {
        let _ = writeln!(md, "- {note}");
    }
    let _ = writeln!(
        md,
        "\n![answered vs offered]({rate_png})\n\n![CPU per query]({cpu_png})\n"
    );

    repeats_table(&mut md, results);
    targets(&mut md, results, &s);
    limits(&mut md, results);
    conntrack_table(&mut md, results);
    if let Some(runs) = &results.bind_runs {
        bind_runs_section(&mut md, runs);
    } else if !results.bind.is_empty() {
        bind_table(&mut md, results);
    }
    if let Some(cost) = &results.prog_cost {
        prog_cost_table(&mut md, cost);
    }
    curves(&mut md, results);
    setups(&mut md, results);
    md
}

/// The loss-free rates measured again, interleaved, with their spread.
fn repeats_table(md: &mut String, results: &Results) {
    let with: Vec<&MethodResult> = results
        .methods
        .iter()
        .filter(|m| !m.repeats.is_empty())
        .collect();
    if with.is_empty() {
        return;
    }
    let rounds = results.plan.repeat_rounds;
    let _ = writeln!(md, "## The loss-free rate, repeated\n");
    let _ = writeln!(
        md,
        "After every ladder, each method ran its loss-free rate and the ladder's next rate up once \
         per round, {rounds} rounds, the methods in a rotated order each round (the same step \
         length, pass rule and conntrack flush as the ladder). Per round, the loss-free rate is \
         the higher of the two that passed, the lower passing too; \"<\" when the lower failed. \
         **vs iptables nth**: beyond noise when the two methods' ranges over the rounds do not \
         overlap.\n"
    );
    let _ = writeln!(
        md,
        "| method | rates repeated | loss-free rate per round | median | min–max | passes at each rate | vs iptables nth |\n|---|---|---|---:|---:|---|---|"
    );
    let nums = |m: &MethodResult| -> Vec<f64> {
        repeat::loss_free_per_round(m)
            .iter()
            .map(|r| r.map_or(0.0, f64::from))
            .collect()
    };
    let base = results
        .methods
        .iter()
        .find(|m| m.id == REFERENCE)
        .filter(|m| !m.repeats.is_empty())
        .map(nums);
    for m in with {
        let rates = repeat::candidates(m);
        let lowest = rates.first().copied().unwrap_or(0);
        let per = repeat::loss_free_per_round(m);
        let v = nums(m);
        let (lo, hi) = bind::range(&v);
        // Only the loss-free rate repeated: the ladder never failed above it.
        let at_least = if rates.len() == 1 { "≥ " } else { "" };
        let show = |x: f64| {
            if x > 0.0 {
                format!("{at_least}{x:.0}")
            } else {
                format!("< {lowest}")
            }
        };
        let passes = rates
            .iter()
            .map(|r| {
                let at: Vec<&Step> = m
                    .repeats
                    .iter()
                    .filter(|x| x.step.offered == *r)
                    .map(|x| &x.step)
                    .collect();
                format!("{r}: {}/{}", at.iter().filter(|s| s.pass).count(), at.len())
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {}–{} | {passes} | {} |",
            m.id,
            rates
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            per.iter()
                .map(|r| r.map_or(format!("< {lowest}"), |r| format!("{at_least}{r}")))
                .collect::<Vec<_>>()
                .join(", "),
            opt(bind::median(&v), show),
            show(lo),
            show(hi),
            if m.id == REFERENCE {
                "–"
            } else {
                versus_text(base.as_ref().and_then(|b| bind::versus(&v, b)), "rate")
            }
        );
    }
    let _ = writeln!(md);
}

fn conntrack_max(results: &Results) -> String {
    results
        .versions
        .iter()
        .find(|(k, _)| k == "nf_conntrack_max")
        .map_or("?".to_owned(), |(_, v)| v.clone())
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn targets(md: &mut String, results: &Results, s: &Summary) {
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | measured | |\n|---|---|---|");
    let find = |id: &str| results.methods.iter().find(|m| m.id == id);
    if let Some(cost) = &results.prog_cost {
        // A query that needs new state may cost more than one that finds it;
        // the repeat mode's same-ID hit is a retransmission.
        for (case, floor, target) in [
            ("query, flow hit, same ID", "repeat", 4.0),
            ("new query", "single", 5.0),
            ("new query, least_outstanding", "single", 6.0),
            ("query, flow hit", "single", 3.0),
            ("reply to a new query", "single", 3.0),
            ("reply", "single", 3.0),
        ] {
            let c = cost
                .cases
                .iter()
                .find(|c| c.name == case && c.mode == floor);
            let f = cost
                .cases
                .iter()
                .find(|c| c.name == "floor" && c.mode == floor);
            let ratio = c
                .zip(f)
                .map(|(c, f)| c.ns_per_packet / f.ns_per_packet.max(1e-9));
            let _ = writeln!(
                md,
                "| program ≤ {target}× XDP_PASS ({case}, {floor} mode) | {} | {} |",
                opt(c.zip(f).zip(ratio), |((c, f), r)| format!(
                    "{:.1} ns vs {:.1} ns: {r:.1}×",
                    c.ns_per_packet, f.ns_per_packet
                )),
                verdict(ratio.map(|r| r <= target))
            );
        }
    }
    let fast = find("dnsteer-redirect");
    let fast_measured = fast.filter(|m| matches!(m.status, Status::Measured));
    let why_not = fast
        .filter(|m| !matches!(m.status, Status::Measured))
        .and_then(|m| m.reason.clone())
        .map_or(String::new(), |r| {
            format!(" ({})", r.lines().next().unwrap_or(""))
        });
    let rate = fast_measured.and_then(|m| s.rate_ratio(m));
    let bound = fast_measured.is_some_and(|m| m.loss_free_is_lower_bound);
    let peak = fast_measured.and_then(|m| s.peak_ratio(m));
    let _ = writeln!(
        md,
        "| fast path ≥ 3× iptables nth's loss-free rate | {} | {}{why_not} |",
        opt(rate, |r| format!(
            "{r:.2}×{} (peak answered rate: {})",
            if bound { " (at least)" } else { "" },
            opt(peak, |p| format!("{p:.2}×"))
        )),
        verdict(rate.map(|r| r >= 3.0).filter(|ok| *ok || !bound))
    );
    let cpu = fast_measured.and_then(|m| s.net_cpu_ratio(m));
    let _ = writeln!(
        md,
        "| fast path ≤ 1/3 of iptables nth's CPU per query (net of baseline) | {} | {}{why_not} |",
        opt(cpu, |r| format!(
            "{r:.2}× (gross, generator and responders included: {})",
            opt(fast_measured.and_then(|m| s.cpu_ratio(m)), |g| format!(
                "{g:.2}×"
            ))
        )),
        verdict(cpu.map(|r| r <= 1.0 / 3.0))
    );
    let one = find("dnsteer-services-1");
    let many = find("dnsteer-services-10000");
    let ratio = one
        .zip(many)
        .and_then(|(a, b)| Some(f64::from(b.loss_free_rate?) / f64::from(a.loss_free_rate?)));
    let peak = one
        .zip(many)
        .and_then(|(a, b)| Some(b.peak_answered_rate? / a.peak_answered_rate?));
    let bounds = one.is_some_and(|m| m.loss_free_is_lower_bound)
        || many.is_some_and(|m| m.loss_free_is_lower_bound);
    // The issue's "rate" is the loss-free rate; the ladder's steps are 26%
    // apart, so the peak answered rate is shown beside it, with how much two
    // runs of the same one-service config differ by (dnsteer-nth is that config).
    let same = find("dnsteer-nth")
        .zip(one)
        .and_then(|(a, b)| Some(b.peak_answered_rate? / a.peak_answered_rate?));
    let _ = writeln!(
        md,
        "| dnsteer with 10000 services within 5% of 1 service | loss-free rate {}{}, at the ladder's 26% resolution; peak answered rate {} (the same 1-service config measured twice, `dnsteer-nth` and `dnsteer-services-1`, differs by {}) | {} |",
        opt(ratio, |r| format!("{:+.1}%", (r - 1.0) * 100.0)),
        if bounds { " (a lower bound)" } else { "" },
        opt(peak, |r| format!("{:+.1}%", (r - 1.0) * 100.0)),
        opt(same, |r| format!("{:+.1}%", (r - 1.0) * 100.0)),
        verdict(ratio.map(|r| (r - 1.0).abs() <= 0.05)),
    );
    if let Some(runs) = &results.bind_runs {
        bind_targets(md, runs);
    }
    let _ = writeln!(md);
}

/// Issue 12's targets for the run against BIND: at every rate no more
/// unanswered than iptables nth beyond the noise, and every query answered up
/// to at least iptables nth's rate.
fn bind_targets(md: &mut String, runs: &BindRuns) {
    let Some(reference) = runs.cases.iter().find(|c| c.case.id == REFERENCE) else {
        return;
    };
    let base_all: Vec<f64> = reference
        .all_answered_per_round(&runs.rates)
        .iter()
        .map(|r| r.map_or(0.0, f64::from))
        .collect();
    for c in runs
        .cases
        .iter()
        .filter(|c| c.case.id != REFERENCE && !c.steps.is_empty())
    {
        let verdicts: Vec<(u32, Option<Versus>)> = runs
            .rates
            .iter()
            .map(|&r| (r, bind::versus(&c.losses_at(r), &reference.losses_at(r))))
            .collect();
        let higher: Vec<String> = verdicts
            .iter()
            .filter(|(_, v)| *v == Some(Versus::Higher))
            .map(|(r, _)| r.to_string())
            .collect();
        let unknown = verdicts.iter().any(|(_, v)| v.is_none());
        // How wide the reference's own repeats spread: what "within noise" means here.
        let noise = runs
            .rates
            .iter()
            .map(|&r| {
                let (lo, hi) = bind::range(&reference.losses_at(r));
                (hi - lo).max(0.0)
            })
            .fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "| BIND: `{}` unanswered no higher than iptables nth's beyond noise, at every rate | {} | {} |",
            c.case.id,
            if higher.is_empty() {
                format!(
                    "at {} rates (iptables nth's own repeats spread over up to {:.2} points): {}",
                    verdicts.len(),
                    noise * 100.0,
                    verdicts
                        .iter()
                        .map(|(r, v)| format!("{r} {}", versus_text(*v, "loss").trim_matches('*')))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!("higher beyond noise at {}", higher.join(", "))
            },
            verdict((!unknown || !higher.is_empty()).then_some(higher.is_empty()))
        );
        let mine: Vec<f64> = c
            .all_answered_per_round(&runs.rates)
            .iter()
            .map(|r| r.map_or(0.0, f64::from))
            .collect();
        let (m, b) = (bind::median(&mine), bind::median(&base_all));
        let lowest = runs.rates.first().copied().unwrap_or(0);
        let show = |x: f64| {
            if x > 0.0 {
                format!("{x:.0}")
            } else {
                format!("< {lowest}")
            }
        };
        let _ = writeln!(
            md,
            "| BIND: `{}` answers every query up to at least iptables nth's rate | median {} vs {} ({}) | {} |",
            c.case.id,
            opt(m, show),
            opt(b, show),
            versus_text(bind::versus(&mine, &base_all), "rate"),
            verdict(m.zip(b).map(|(m, b)| m >= b))
        );
    }
}

/// What the numbers above do not show, with the counts that say so.
fn limits(md: &mut String, results: &Results) {
    let steps = || {
        results
            .methods
            .iter()
            .flat_map(|m| m.steps.iter().map(move |s| (m, s)))
    };
    let lost: Vec<&str> = {
        let mut ids: Vec<&str> = steps()
            .filter(|(_, s)| s.loss >= LOSS_LIMIT)
            .map(|(m, _)| m.id.as_str())
            .collect();
        ids.dedup();
        ids
    };
    let held_back = steps().filter(|(_, s)| !s.offered_in_full).count();
    let _ = writeln!(
        md,
        "## What these numbers do not show
"
    );
    let _ = writeln!(
        md,
        "- **Loss is rare here, unlike on a NIC.** {held_back} step(s) failed because the load \
         generator could not send the offered rate, and queries were lost (≥ {}%) in steps of {}. \
         An AF_XDP send into a veth runs the receiving side's processing in the sender's context, so \
         when the two CPUs are used up the sending slows down rather than queues overflowing. On a \
         physical NIC the excess would be dropped: the capacity that shows here as the flattening \
         of the answered rate is where a real node starts losing queries.",
        LOSS_LIMIT * 100.0,
        if lost.is_empty() {
            "no method".to_owned()
        } else {
            lost.iter()
                .map(|id| format!("`{id}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        md,
        "- **One small machine.** Load generator, node and backends share {} CPUs, so absolute \
         rates are far below a server's, and every method's CPU figure carries the generator's and \
         the responders' share (the baseline's figure): gross ratios understate the differences \
         between methods; the net column is the steering's own cost.",
        results.cpus
    );
    let _ = writeln!(
        md,
        "- **conntrack at steady state.** Each step starts with an empty table and lasts {:.0} s; a \
         node that runs for longer than `nf_conntrack_udp_timeout` holds 30 s of flows, so the table \
         fills at a lower rate than here (`early_drop` below counts the entries conntrack evicted \
         to make room).",
        results.plan.step_s
    );
    let _ = writeln!(
        md,
        "- **Backends that cost nothing.** The XDP responders answer in a few hundred nanoseconds; \
         the run against BIND shows the other end of the scale, where the servers, not the \
         steering, set the rate.\n"
    );
}

fn conntrack_table(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## conntrack (iptables and nftables methods)\n");
    let _ = writeln!(
        md,
        "Summed over the steps of each ladder (the table flushed before each): \
         `insert_failed`, `drop`, `early_drop` from /proc/net/stat/nf_conntrack, and the most \
         entries held at the end of a step.\n"
    );
    let _ = writeln!(
        md,
        "| method | insert_failed | drop | early_drop | most entries |\n|---|---:|---:|---:|---:|"
    );
    for m in results.methods.iter().filter(|m| !m.steps.is_empty()) {
        let sum = |k: &str| {
            m.steps
                .iter()
                .map(|s| s.conntrack.get(k).copied().unwrap_or(0))
                .sum::<u64>()
        };
        let most = m
            .steps
            .iter()
            .map(|s| s.conntrack.get("entries").copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            m.id,
            sum("insert_failed"),
            sum("drop"),
            sum("early_drop"),
            most
        );
    }
    let _ = writeln!(md);
}

/// `median (min–max)` of shares, in percent.
fn spread_pct(v: &[f64]) -> String {
    let Some(m) = bind::median(v) else {
        return "–".to_owned();
    };
    let (lo, hi) = bind::range(v);
    format!("{:.3}% ({:.3}–{:.3})", m * 100.0, lo * 100.0, hi * 100.0)
}

fn versus_text(v: Option<Versus>, what: &str) -> &'static str {
    match (v, what) {
        (Some(Versus::Higher), "loss") => "**higher, beyond noise**",
        (Some(Versus::Lower), "loss") => "lower, beyond noise",
        (Some(Versus::Higher), _) => "higher, beyond noise",
        (Some(Versus::Lower), _) => "**lower, beyond noise**",
        (Some(Versus::Within), _) => "within noise",
        (None, _) => "too few repeats to say",
    }
}

fn bind_runs_section(md: &mut String, runs: &BindRuns) {
    let _ = writeln!(md, "## Real BIND 9 backends\n");
    let reference = runs.cases.iter().find(|c| c.case.id == REFERENCE);
    let loads: Vec<f64> = runs
        .cases
        .iter()
        .flat_map(|c| c.steps.iter().map(|s| s.loadavg))
        .collect();
    let (load_lo, load_hi) = bind::range(&loads);
    let _ = writeln!(
        md,
        "The XDP responders off, BIND 9 (`named -n 1`, one worker each) answering on the four \
         backends, kxdpgun from the client sending a fresh flow per query (as in the capacity runs), \
         {:.1} s per step at {:?} queries/s. {} rounds; in each round every case runs every rate \
         once, the cases in a rotated order, so that other work on the machine falls on all of \
         them alike (the 1-minute load average ranged {load_lo:.1}–{load_hi:.1} over the steps). \
         BIND's receive buffer is the kernel's default (`net.core.rmem_default`) unless the case \
         says `+buffer`: `udp-receive-buffer {}` in named.conf (the kernel doubles it to {} bytes). \
         A difference is **beyond noise** when the two cases' ranges over the rounds do not overlap \
         (5 rounds against 5: Mann–Whitney U = 0, p ≈ 0.008 two-sided); \"higher in k/n\" counts the \
         rounds in which the case lost more than iptables nth in the same round. The run took {:.0} s.\n",
        runs.step_s,
        runs.rates,
        runs.rounds,
        runs.raised_buffer,
        u64::from(runs.raised_buffer) * 2,
        runs.elapsed_s
    );

    let _ = writeln!(md, "### How many queries a backend's socket holds\n");
    let _ = writeln!(
        md,
        "Every named stopped (SIGSTOP), {} queries sent through the node under each method: \
         what the kernel charged named's socket per queued query (the skb's truesize: `ss -m`'s \
         `r` over the queries queued), its buffer (`rb`), and so how many queries it holds before \
         it drops (`Udp: RcvbufErrors`).\n",
        runs.probes.first().map_or(0, |p| p.sent)
    );
    let _ = writeln!(
        md,
        "| method | bytes per queued query | socket buffer (bytes) | queries it holds | dropped at the sockets |\n|---|---:|---:|---:|---:|"
    );
    for p in &runs.probes {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} of {} |",
            p.case,
            opt(p.bytes_per_query(), |b| format!("{b:.0}")),
            p.buffer_bytes.first().copied().unwrap_or(0),
            opt(p.holds(), |h| format!("{h:.0}")),
            p.dropped.iter().sum::<u64>(),
            p.sent
        );
    }
    let _ = writeln!(md);

    let _ = writeln!(
        md,
        "### Unanswered queries, median (min–max) over {} rounds\n",
        runs.rounds
    );
    let measured: Vec<&bind::CaseResult> =
        runs.cases.iter().filter(|c| !c.steps.is_empty()).collect();
    let mut head = String::from("| offered q/s |");
    let mut rule = String::from("|---:|");
    for c in &measured {
        let _ = write!(head, " {} |", c.case.id);
        rule.push_str("---:|");
    }
    for c in measured.iter().filter(|c| c.case.id != REFERENCE) {
        let _ = write!(head, " {} vs {REFERENCE} |", c.case.id);
        rule.push_str("---|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    for &rate in &runs.rates {
        let mut row = format!("| {rate} |");
        for c in &measured {
            let _ = write!(row, " {} |", spread_pct(&c.losses_at(rate)));
        }
        let base = reference.map(|r| r.losses_at(rate)).unwrap_or_default();
        for c in measured.iter().filter(|c| c.case.id != REFERENCE) {
            let mine = c.losses_at(rate);
            let higher = reference.map_or(0, |r| {
                c.steps
                    .iter()
                    .filter(|s| s.offered == rate)
                    .filter(|s| {
                        r.steps
                            .iter()
                            .find(|t| t.round == s.round && t.offered == rate)
                            .is_some_and(|t| s.loss() > t.loss())
                    })
                    .count()
            });
            let _ = write!(
                row,
                " {}; higher in {higher}/{} |",
                versus_text(bind::versus(&mine, &base), "loss"),
                mine.len().min(base.len())
            );
        }
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "### Every query answered up to\n");
    let _ = writeln!(
        md,
        "Per round, the highest rate with no query unanswered (and every lower rate of that round \
         too); \"<\" when the lowest rate already lost some.\n"
    );
    let _ = writeln!(
        md,
        "| case | per round (q/s) | median | min–max | vs {REFERENCE} |\n|---|---|---:|---:|---|"
    );
    let lowest = runs.rates.first().copied().unwrap_or(0);
    let as_num =
        |v: &[Option<u32>]| -> Vec<f64> { v.iter().map(|r| r.map_or(0.0, f64::from)).collect() };
    let text = |r: Option<u32>| r.map_or(format!("< {lowest}"), |r| r.to_string());
    let base = reference.map(|r| as_num(&r.all_answered_per_round(&runs.rates)));
    for c in &measured {
        let per = c.all_answered_per_round(&runs.rates);
        let nums = as_num(&per);
        let (lo, hi) = bind::range(&nums);
        let show = |x: f64| {
            if x > 0.0 {
                format!("{x:.0}")
            } else {
                format!("< {lowest}")
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}–{} | {} |",
            c.case.id,
            per.iter().map(|r| text(*r)).collect::<Vec<_>>().join(", "),
            opt(bind::median(&nums), show),
            show(lo),
            show(hi),
            if c.case.id == REFERENCE {
                "–"
            } else {
                versus_text(base.as_ref().and_then(|b| bind::versus(&nums, b)), "rate")
            }
        );
    }
    let _ = writeln!(md);

    let _ = writeln!(
        md,
        "### Where the queries were lost, and where the CPU went\n"
    );
    let _ = writeln!(
        md,
        "Medians over the rounds at each rate. **at the sockets**: `Udp: RcvbufErrors` summed over \
         the four backends as a share of the unanswered queries (the rest was lost elsewhere or \
         answered late). **named CPU**: the four named processes' CPU time over the step's wall \
         time (100% = one CPU). **softirq per CPU**: each CPU's tick-sampled softirq share over \
         the whole step, kxdpgun's start-up and wait included (kxdpgun runs on cpu0, and an AF_XDP \
         send into a veth runs the receiving side's processing on the sender's CPU); **softirq \
         µs/query**: all CPUs' softirq time in the step over the queries sent. **busy**: the machine's busy share in that window, everything included.\n"
    );
    let _ = writeln!(
        md,
        "| case | offered q/s | at the sockets | named CPU | softirq per CPU | softirq µs/query | busy |\n|---|---:|---:|---:|---|---:|---:|"
    );
    for c in &measured {
        for &rate in &runs.rates {
            let steps: Vec<&bind::Step> = c.steps.iter().filter(|s| s.offered == rate).collect();
            let lost: u64 = steps.iter().map(|s| s.burst.unanswered()).sum();
            let at_socket: u64 = steps.iter().flat_map(|s| s.rcvbuf_errors.iter()).sum();
            let named: Vec<f64> = steps
                .iter()
                .map(|s| s.named_cpu_s / s.wall_s.max(1e-9))
                .collect();
            let cpus = steps
                .iter()
                .map(|s| s.cpu.softirq_per_cpu_s.len())
                .max()
                .unwrap_or(0);
            let split = (0..cpus)
                .map(|i| {
                    let v: Vec<f64> = steps
                        .iter()
                        .filter_map(|s| {
                            Some(s.cpu.softirq_per_cpu_s.get(i)? / s.cpu.wall_s.max(1e-9))
                        })
                        .collect();
                    format!(
                        "cpu{i} {}",
                        opt(bind::median(&v), |m| format!("{:.0}%", m * 100.0))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let busy: Vec<f64> = steps
                .iter()
                .filter_map(|s| s.window.as_ref())
                .map(|w| w.cpu.busy_share())
                .collect();
            let softirq_us: Vec<f64> = steps
                .iter()
                .filter(|s| s.burst.sent > 0 && !s.cpu.softirq_per_cpu_s.is_empty())
                .map(|s| s.cpu.softirq_s * 1e6 / s.burst.sent as f64)
                .collect();
            let _ = writeln!(
                md,
                "| {} | {rate} | {} | {} | {} | {} | {} |",
                c.case.id,
                if lost == 0 {
                    "–".to_owned()
                } else {
                    format!("{:.0}% of {lost}", at_socket as f64 / lost as f64 * 100.0)
                },
                opt(bind::median(&named), |m| format!("{:.0}%", m * 100.0)),
                if split.is_empty() {
                    "–".to_owned()
                } else {
                    split
                },
                opt(bind::median(&softirq_us), |m| format!("{m:.1}")),
                opt(bind::median(&busy), |m| format!("{:.0}%", m * 100.0)),
            );
        }
    }
    let _ = writeln!(md);
    for c in runs.cases.iter().filter(|c| c.reason.is_some()) {
        let _ = writeln!(
            md,
            "- `{}`: {}",
            c.case.id,
            c.reason
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    bind_mechanism(md, runs);
    let _ = writeln!(
        md,
        "<details><summary>Every step of the BIND run</summary>\n"
    );
    for c in &measured {
        let steps: Vec<String> = c
            .steps
            .iter()
            .map(|s| {
                format!(
                    "r{} {} → {:.3}% ({} at sockets, load {:.1})",
                    s.round,
                    s.offered,
                    s.loss() * 100.0,
                    s.rcvbuf_errors.iter().sum::<u64>(),
                    s.loadavg
                )
            })
            .collect();
        let _ = writeln!(md, "- `{}`: {}", c.case.id, steps.join("; "));
    }
    let _ = writeln!(md, "\n</details>\n");
}

/// What the BIND run says about why queries are lost, from its numbers.
fn bind_mechanism(md: &mut String, runs: &BindRuns) {
    let probe = |id: &str| runs.probes.iter().find(|p| p.case == id);
    let (Some(ipt), Some(xdp)) = (probe(REFERENCE), probe("dnsteer-nth")) else {
        return;
    };
    let steps: Vec<&bind::Step> = runs.cases.iter().flat_map(|c| &c.steps).collect();
    let lost: u64 = steps.iter().map(|s| s.burst.unanswered()).sum();
    let at_sockets: u64 = steps.iter().flat_map(|s| &s.rcvbuf_errors).sum();
    let named: Vec<f64> = steps
        .iter()
        .map(|s| s.named_cpu_s / s.wall_s.max(1e-9))
        .collect();
    let busy: Vec<f64> = steps
        .iter()
        .filter_map(|s| s.window.as_ref())
        .map(|w| w.cpu.busy_share())
        .collect();
    let top = runs.rates.last().copied().unwrap_or(0);
    let per_backend = f64::from(top) / 4.0;
    let ms = |p: &bind::Probe| p.holds().map_or(0.0, |h| h / per_backend.max(1.0) * 1000.0);
    let bytes = |p: &bind::Probe| opt(p.bytes_per_query(), |b| format!("{b:.0}"));
    let holds =
        |p: Option<&bind::Probe>| opt(p.and_then(bind::Probe::holds), |h| format!("{h:.0}"));
    let _ = writeln!(md, "### What loses the queries\n");
    let _ = writeln!(
        md,
        "- **Where**: {at_sockets} of the {lost} unanswered queries of this run ({}) were dropped \
         at named's full socket (`Udp: RcvbufErrors` on the backends).\n\
         - **Why the socket is full**: named is not short of CPU time in total (the four used a \
         median {} of one CPU per step) but waits for one: the machine was a median {} busy during \
         the steps, with other work on it. While named waits, its socket buffers the queries that \
         arrive; what does not fit is dropped.\n\
         - **Why dnsteer's socket fills sooner**: a query that native XDP passed on a veth is charged \
         {} bytes at the socket (its skb's truesize), one forwarded without XDP {}: the default \
         buffer holds {} queries instead of {}, {:.1} ms instead of {:.1} ms of a backend's share of \
         {top} queries/s. Before a native XDP program runs, veth copies nearly every skb (a \
         kmalloc'd head, a clone, fragments or under 256 bytes of headroom: \
         `veth_convert_skb_to_xdp_buff`) into a page-pool buffer, and the skb built from it keeps \
         that buffer's size; dnsteer's program cannot change that. The same stall of named (the probe above) \
         drops {} of {} queries under dnsteer and {} of {} under iptables.\n\
         - **The operator's fix**: `udp-receive-buffer {}` in named.conf gives named's socket {} \
         bytes, {} queries at dnsteer's {} bytes: the `+buffer` case. See README, \"Receive \
         buffers on the backends\", and `dnsteer doctor`.\n",
        if lost > 0 {
            format!("{:.0}%", at_sockets as f64 / lost as f64 * 100.0)
        } else {
            "none lost".to_owned()
        },
        opt(bind::median(&named), |m| format!("{:.0}%", m * 100.0)),
        opt(bind::median(&busy), |m| format!("{:.0}%", m * 100.0)),
        bytes(xdp),
        bytes(ipt),
        holds(Some(xdp)),
        holds(Some(ipt)),
        ms(xdp),
        ms(ipt),
        xdp.dropped.iter().sum::<u64>(),
        xdp.sent,
        ipt.dropped.iter().sum::<u64>(),
        ipt.sent,
        runs.raised_buffer,
        u64::from(runs.raised_buffer) * 2,
        holds(probe("dnsteer-nth+buffer")),
        bytes(xdp),
    );
    let _ = writeln!(
        md,
        "Checked by hand on the same topology (issue 12, 2026-12-01), not by this run: the \
         queries reach each backend one at a time in both paths, never in NAPI-sized bursts \
         (tcpdump at the backends at 20000 and 40000 queries/s: no two queries less than 5 µs \
         apart, median gap 28–31 µs within kxdpgun's batches of 10, under both iptables nth and \
         dnsteer in driver mode): native XDP puts eth3 into NAPI mode, but its poll runs on the \
         sending CPU as kxdpgun's batches arrive, and the captures show no bursts of a NAPI budget \
         (64). The softirq work of both paths runs on cpu0, where kxdpgun pins its thread (its \
         default `-F 0s1`): 10–26% softirq on cpu0 against 0–5% on cpu1 in 18 steps of 3 s at \
         40000 and 50000 queries/s (iptables nth, dnsteer driver and skb modes interleaved); \
         `/proc/net/softnet_stat` counted no drops and one time squeeze \
         in those steps.\n"
    );
    let _ = writeln!(
        md,
        "A controlled stall, by hand on the same topology (2026-12-01), where the machine's own \
         noise cannot hide the buffer: every named stopped (SIGSTOP) for 60 ms every 250 ms while \
         kxdpgun sends 20000 queries/s for 3 s (11 stalls), 3 rounds, the cases interleaved. \
         Queries dropped at the sockets: iptables nth 2361–3072, dnsteer nth (driver) 5082–7381, \
         dnsteer nth with `udp-receive-buffer 138000` 2601–3409; per stall and backend 54–70, \
         116–168 and 59–78. dnsteer's range lies above iptables' (beyond noise); with the buffer \
         that holds as many of its queries, it overlaps iptables'.\n"
    );
}

fn bind_table(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## Real BIND 9 backends\n");
    let _ = writeln!(
        md,
        "The XDP responders off, BIND 9 (`named -n 1`, one worker each) answering on the four \
         backends, dnsperf from the client (64 sockets, so 64 source ports: each keeps its first \
         backend under both iptables' conntrack and dnsteer's flow table), {:.0} s per step, rates {:?}. \
         The rate is the highest with every query answered. Flows per backend: conntrack's \
         entries after the last step for iptables, dnsteer's new flows over all steps.\n",
        results.plan.bind_step_s, results.plan.bind_rates
    );
    let _ = writeln!(
        md,
        "| method | 100% answered up to (q/s) | answered q/s at that step | flows per backend | |\n|---|---:|---:|---|---|"
    );
    let reference = results
        .bind
        .iter()
        .find(|b| b.id == REFERENCE)
        .and_then(|b| b.all_answered_rate);
    for b in &results.bind {
        let at = b
            .all_answered_rate
            .and_then(|r| b.steps.iter().find(|s| s.offered == r))
            .map(|s| s.answered_rate);
        let ratio = b
            .all_answered_rate
            .zip(reference)
            .map(|(a, r)| f64::from(a) / f64::from(r));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {}{}{} |",
            b.id,
            bind_rate_text(b),
            opt(at, |r| format!("{r:.0}")),
            if b.flows_per_backend.is_empty() {
                "–".to_owned()
            } else {
                b.flows_per_backend
                    .iter()
                    .map(|(a, n)| format!("{} {n}", a.trim_end_matches(":53")))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            opt(ratio, |r| format!("{r:.2}× iptables nth")),
            b.steps
                .iter()
                .find(|s| s.burst.unanswered() > 0)
                .map_or(String::new(), |s| format!(
                    "; at {}/s {} of {} unanswered",
                    s.offered,
                    s.burst.unanswered(),
                    s.burst.sent
                )),
            b.reason.as_ref().map_or(String::new(), |r| format!(" {r}"))
        );
    }
    let _ = writeln!(md);
}

fn bind_rate_text(b: &BindMethod) -> String {
    match b.all_answered_rate {
        Some(r) if b.all_answered_is_lower_bound => format!("≥ {r}"),
        Some(r) => r.to_string(),
        None => "< lowest step".to_owned(),
    }
}

fn prog_cost_table(md: &mut String, cost: &ProgCost) {
    let _ = writeln!(md, "## Program cost (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        md,
        "`dnsteer_steer` (XDP) and `dnsteer_reply` (TC) as `dnsteer run` loaded and filled \
         them, next to `bench_pass` (returns XDP_PASS, touches nothing) in the same run. \
         `repeat` mode: one call with repeat = {}, the kernel's mean (whole ns) and the call's \
         wall time / repeat. The buffer is not restored between repeats, so the flow hit uses a \
         service whose one backend is its own address (the rewrite writes the same bytes back) \
         and repeats one DNS ID (a retransmission: its query record's send time is updated in \
         place). `single` \
         mode: {} calls of one packet each, the mean and median of the kernel's per-call figure \
         (which includes the kernel timer's own overhead, as the floor's does): each new query \
         has its own source address and port (past 65,536 flows every affinity insert evicts \
         from the LRU), each flow hit a new DNS ID on one port, and each query's answer then \
         runs through the reply program (the `reply` rows), which consumes the query's record. \
         Each case checked dnsteer's counters.\n",
        cost.repeat, cost.single_packets
    );
    if let Some(busy) = cost.busy_before {
        let _ = writeln!(
            md,
            "Other work kept {:.0}% of the machine busy in the second before these runs{}.\n",
            busy * 100.0,
            if busy > super::BUSY_WARNING {
                " (the bench waited for a quieter one and found none): the figures are from a busy machine"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        md,
        "| case | program | mode | ns/packet | median | wall ns/packet | × floor | checked |\n|---|---|---|---:|---:|---:|---:|---|"
    );
    for c in &cost.cases {
        let floor = cost
            .cases
            .iter()
            .find(|f| f.name == "floor" && f.mode == c.mode);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            c.name,
            c.program,
            c.mode,
            c.ns_per_packet,
            opt(c.median_ns, |v| format!("{v:.0}")),
            opt(c.wall_ns_per_packet, |v| format!("{v:.2}")),
            opt(
                floor.map(|f| c.ns_per_packet / f.ns_per_packet.max(1e-9)),
                |r| format!("{r:.1}")
            ),
            c.checked
        );
    }
    for (case, why) in &cost.skipped {
        let _ = writeln!(md, "\n- `{case}` skipped: {why}");
    }
    let _ = writeln!(md);
}

fn curves(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## Every step\n");
    let _ = writeln!(
        md,
        "Offered → sent/s, answered/s (unanswered %), busy CPU µs per query, each CPU's tick-sampled softirq share of the window; ✗ a failed step.\n"
    );
    for m in results.methods.iter().filter(|m| !m.steps.is_empty()) {
        let steps: Vec<String> = m
            .steps
            .iter()
            .map(|s| {
                format!(
                    "{} → {:.0}, {:.0} ({:.2}%{}, {}{})",
                    s.offered,
                    s.sent as f64 / s.duration_s.max(1e-9),
                    s.answered as f64 / s.duration_s.max(1e-9),
                    s.loss * 100.0,
                    if s.pass { "" } else { " ✗" },
                    opt(s.cpu_us_per_query, |c| format!(
                        "{c:.2} µs{}",
                        if s.cpu_less_user { "†" } else { "" }
                    )),
                    s.window
                        .as_ref()
                        .and_then(|w| w.cpu.softirq_split())
                        .map_or(String::new(), |x| format!("; softirq {x}"))
                )
            })
            .collect();
        let _ = writeln!(md, "- `{}`: {}", m.id, steps.join("; "));
    }
    let _ = writeln!(md);
}

fn setups(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## What each method put on the node\n");
    for m in &results.methods {
        let _ = writeln!(
            md,
            "<details><summary><code>{}</code>: {}</summary>\n",
            m.id, m.label
        );
        let _ = writeln!(
            md,
            "```\n{}```\n",
            m.setup.as_deref().unwrap_or("(nothing)\n")
        );
        if let Some(t) = m.setup_s {
            let _ = writeln!(md, "Set up in {t:.1} s.\n");
        }
        let _ = writeln!(md, "</details>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_unix_time() {
        assert_eq!(utc(0), ("1970-01-01".to_owned(), "00:00:00".to_owned()));
        assert_eq!(utc(951_782_400).0, "2000-02-29");
        assert_eq!(
            utc(1_798_761_599),
            ("2026-12-31".to_owned(), "23:59:59".to_owned())
        );
    }

    #[test]
    fn paths_relative_to_the_report() {
        assert_eq!(
            relative(Path::new("/r/docs"), Path::new("/r/bench/plots/x.png")),
            "../bench/plots/x.png"
        );
        assert_eq!(
            relative(Path::new("/r/t"), Path::new("/r/t/x.json")),
            "x.json"
        );
    }
}
