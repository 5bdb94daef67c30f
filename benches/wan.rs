//! `send` (and `pull`) across emulated real links, a grid of rate cap ×
//! round-trip time × random loss, for several congestion controllers side by
//! side in one run.
//!
//!     cargo bench --bench wan                      # the default grid, below (22 min here)
//!     cargo bench --bench wan -- --rates 4,20,100,0 --rtts 0,20,50,100 --loss 0,0.1,1,3
//!                                                  # the full grid: 64 cells, 2-3 hours
//!     cargo bench --bench wan -- --rates 20 --rtts 20 --loss 0,1 --congestion none --mib 16
//!     cargo bench --bench wan -- --pull 50 200     # bare numbers are RTTs (uncapped, lossless)
//!     TENSOR_IROH_BIN=path/to/tensor-iroh cargo bench --bench wan   # another build
//!
//! Options (lists are comma-separated):
//!
//! - `--rates MBIT,…`: each direction capped at this many Mbit/s (tc tbf, with
//!   a 100 ms queue); 0 is uncapped (the relay's own ceiling, above 150 MB/s).
//! - `--rtts MS,…`: round-trip time the relay adds, half each way.
//! - `--loss PERCENT,…`: datagrams the relay drops at random, independently in
//!   each direction (seeded: runs drop the same datagrams).
//! - `--congestion X,…` (default `bbr,cubic`): each value is passed as
//!   `--congestion X` to every tensor-iroh command of its column; `none`
//!   passes nothing, for builds without the option.
//! - `--pull`: pull the file back as well as send it.
//! - `--mib N`: the file's size. By default it scales with the rate, so a
//!   transfer takes about 10 s at the link's rate: rate × 10 s, between 4 and
//!   128 MiB; 128 MiB uncapped.
//!
//! The default grid (20 cells, 40 transfers, send only): 4, 20 and 100
//! Mbit/s and uncapped at RTT 50 ms with 0, 0.1, 1 and 3 % loss; 100 Mbit/s at
//! RTT 0, 20 and 100 ms without loss; uncapped at RTT 0 without loss (the
//! relay's ceiling, the reference of the uncapped rows). Given any of
//! `--rates`, `--rtts` or `--loss`, the grid is their product instead, with
//! rate 0, RTT 50 and loss 0 for what is not given.
//!
//! Needs root and `ip netns` (and `tc` for capped rates). The sender and the
//! listener run in two network namespaces joined only by a relay in this
//! process, which holds every datagram for half the RTT each way and drops
//! the loss (tc netem is not available everywhere); tbf caps what leaves each
//! namespace. Each transfer prints a line as soon as it ends; a markdown
//! table of them all follows. Speed is goodput: file bytes over the whole
//! command's wall time (connecting included). Capped rows give it as a share
//! of the link's rate (the rate counts IP and UDP headers, so some 95 % is
//! full); uncapped rows as a share of the uncapped RTT-0 lossless cell of the
//! same controller, where the run has one. A transfer that has not ended after
//! ten times what it takes at the link's rate (two minutes at least) is killed
//! and shows as failed, with the most it could have moved at.
//!
//! After each transfer its line shows what the relay dropped toward the
//! listener / toward the sender (of how many datagrams), and on capped links
//! what the caps dropped on the sender's / the listener's way out: the queue
//! overflowing, the loss a loss-based controller causes itself. Under loss a
//! result depends on how long the transfer runs (BBR at 3 % loss held its rate
//! for some 10 s, then fell to a tenth of it), which is why the file scales
//! with the rate instead of being one size for every link.

#[path = "../tests/common/long_link.rs"]
mod long_link;
#[path = "../tests/common/netns.rs"]
mod netns;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use long_link::{How, Link, Transfer, transfer};

const USAGE: &str = "usage: cargo bench --bench wan -- [--rates MBIT,..] [--rtts MS,..] \
[--loss PERCENT,..] [--congestion X,..|none] [--pull] [--mib N] [RTT_MS ..]";

/// What the command line asks for.
#[derive(Debug, Default)]
struct Options {
    rates: Option<Vec<f64>>,
    rtts: Option<Vec<u64>>,
    losses: Option<Vec<f64>>,
    congestion: Vec<String>,
    pull: bool,
    mib: Option<u64>,
}

/// One link of the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cell {
    /// Mbit/s each way; None is uncapped.
    rate: Option<f64>,
    rtt_ms: u64,
    loss_percent: f64,
}

/// One transfer's result.
struct Measured {
    cell: Cell,
    how: How,
    controller: usize,
    /// MB/s, or why it failed.
    speed: Result<f64, String>,
}

fn main() {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let cells = grid(&options);
    let hows: &[How] = if options.pull {
        &[How::Send, How::Pull]
    } else {
        &[How::Send]
    };
    if cells.iter().any(|cell| cell.rate.is_some()) && !runs("tc", &["-V"]) {
        eprintln!("skipped: capped rates need `tc`");
        return;
    }
    let Some(namespaces) = netns::Namespaces::for_test() else {
        return;
    };
    let binary = binary();
    let transfers = cells.len() * hows.len() * options.congestion.len();
    let nominal: f64 = cells
        .iter()
        .map(|cell| match cell.rate {
            Some(rate) => mib(&options, cell) as f64 * 1.048_576 / (rate / 8.0) + 1.0,
            None => 3.0,
        })
        .sum::<f64>()
        * (hows.len() * options.congestion.len()) as f64;
    println!(
        "{} cells, {transfers} transfers with {}; at least {:.1} min (longer where loss slows them)",
        cells.len(),
        binary.display(),
        nominal / 60.0
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut files: HashMap<u64, PathBuf> = HashMap::new();
    let mut measured: Vec<Measured> = Vec::new();
    let started = Instant::now();
    for &cell in &cells {
        let size = mib(&options, &cell);
        let file = files
            .entry(size)
            .or_insert_with(|| {
                // One file in each served directory: a pull takes them all.
                let served = dir.path().join(format!("served-{size}"));
                std::fs::create_dir(&served).expect("a served directory");
                let file = served.join("w.safetensors");
                write_safetensors(&file, (size << 20) as usize);
                file
            })
            .clone();
        let bytes = std::fs::metadata(&file).expect("the file").len();
        for &how in hows {
            for (controller, name) in options.congestion.iter().enumerate() {
                let link = Link {
                    rate_mbit: cell.rate,
                    loss: cell.loss_percent / 100.0,
                    extra_args: if name == "none" {
                        Vec::new()
                    } else {
                        vec![String::from("--congestion"), name.clone()]
                    },
                    ..Link::delay(Duration::from_millis(cell.rtt_ms))
                };
                let out = dir.path().join("out");
                let moved = transfer(&binary, &namespaces, &file, &out, &link, how);
                // 128 MiB a cell would soon fill the disk.
                std::fs::remove_dir_all(&out).ok();
                let speed = moved
                    .outcome
                    .clone()
                    .map(|seconds| bytes as f64 / 1e6 / seconds);
                let mut entry = Measured {
                    cell,
                    how,
                    controller,
                    speed,
                };
                if let Err(reason) = &mut entry.speed
                    && moved.elapsed > 0.0
                    && reason.starts_with("no end after")
                {
                    reason.push_str(&format!(
                        " (< {:.2} MB/s)",
                        bytes as f64 / 1e6 / moved.elapsed
                    ));
                }
                println!(
                    "{:>10} {:>4} ms {:>5} %  {name:>6} {:>4}  {size:>3} MiB  {}  [{:.1} s; {}]",
                    rate_text(cell.rate),
                    cell.rtt_ms,
                    number(cell.loss_percent),
                    how_text(how),
                    shown(&entry, &measured, false),
                    moved.elapsed,
                    drops(&moved),
                );
                measured.push(entry);
            }
        }
    }
    println!(
        "\n{transfers} transfers in {:.1} min\n",
        started.elapsed().as_secs_f64() / 60.0
    );
    table(&options, hows, &cells, &measured);
}

/// The markdown table of every cell, a column per direction and controller.
fn table(options: &Options, hows: &[How], cells: &[Cell], measured: &[Measured]) {
    let mut header = String::from("| rate | RTT | loss |");
    let mut rule = String::from("|---|---|---|");
    for &how in hows {
        for name in &options.congestion {
            header.push_str(&format!(" {name} {} |", how_text(how)));
            rule.push_str("---|");
        }
    }
    println!("{header}\n{rule}");
    for cell in cells {
        let mut row = format!(
            "| {} | {} ms | {} % |",
            rate_text(cell.rate),
            cell.rtt_ms,
            number(cell.loss_percent)
        );
        for &how in hows {
            for controller in 0..options.congestion.len() {
                let text = measured
                    .iter()
                    .find(|m| m.cell == *cell && m.how == how && m.controller == controller)
                    .map_or(String::from("-"), |entry| shown(entry, measured, true));
                row.push_str(&format!(" {} |", text.replace('|', "/")));
            }
        }
        println!("{row}");
    }
    println!(
        "\nMB/s of the file over the whole command; capped rows: % of the link's rate; \
         uncapped rows: % of the uncapped RTT-0 lossless cell of the same column."
    );
}

/// `2.31 MB/s (92 % of link)`, or `failed: reason`.
fn shown(entry: &Measured, measured: &[Measured], short: bool) -> String {
    let speed = match &entry.speed {
        Ok(speed) => *speed,
        Err(reason) => {
            let reason = reason.strip_prefix("error: ").unwrap_or(reason);
            let limit = if short { 70 } else { 160 };
            let reason: String = if reason.chars().count() > limit {
                reason.chars().take(limit - 1).chain(['…']).collect()
            } else {
                reason.to_string()
            };
            return format!("failed: {reason}");
        }
    };
    let share = match entry.cell.rate {
        Some(rate) => format!("{:.0} % of link", speed * 100.0 / (rate / 8.0)),
        None => {
            let baseline = measured.iter().find(|m| {
                m.cell.rate.is_none()
                    && m.cell.rtt_ms == 0
                    && m.cell.loss_percent == 0.0
                    && m.how == entry.how
                    && m.controller == entry.controller
            });
            match baseline.map(|m| &m.speed) {
                Some(Ok(base)) => format!("{:.0} % of 0 ms", speed * 100.0 / base),
                _ => String::from("uncapped"),
            }
        }
    };
    if short {
        format!("{speed:.2} MB/s ({share})")
    } else {
        format!("{speed:>7.2} MB/s ({share})")
    }
}

/// Drops by the relay and by the rate caps, each way.
fn drops(moved: &Transfer) -> String {
    let [there, back] = moved.relay;
    let mut text = format!(
        "relay dropped {:.2} % / {:.2} % of {} / {}",
        there.dropped_percent(),
        back.dropped_percent(),
        there.passed + there.dropped,
        back.passed + back.dropped
    );
    if let Some([sender, listener]) = moved.bottleneck {
        text.push_str(&format!(
            ", cap dropped {:.2} % / {:.2} %",
            sender.dropped_percent(),
            listener.dropped_percent()
        ));
    }
    text
}

/// The cells to measure, in order.
fn grid(options: &Options) -> Vec<Cell> {
    let cell = |rate: f64, rtt_ms: u64, loss_percent: f64| Cell {
        rate: (rate > 0.0).then_some(rate),
        rtt_ms,
        loss_percent,
    };
    if options.rates.is_none() && options.rtts.is_none() && options.losses.is_none() {
        let mut cells = vec![cell(0.0, 0, 0.0)];
        for rate in [4.0, 20.0, 100.0, 0.0] {
            for loss in [0.0, 0.1, 1.0, 3.0] {
                cells.push(cell(rate, 50, loss));
            }
        }
        for rtt in [0, 20, 100] {
            cells.push(cell(100.0, rtt, 0.0));
        }
        return cells;
    }
    let mut cells = Vec::new();
    for &rate in options.rates.as_deref().unwrap_or(&[0.0]) {
        for &rtt in options.rtts.as_deref().unwrap_or(&[50]) {
            for &loss in options.losses.as_deref().unwrap_or(&[0.0]) {
                cells.push(cell(rate, rtt, loss));
            }
        }
    }
    cells
}

/// The file's size for a cell, MiB: `--mib`, or about 10 s at the rate.
fn mib(options: &Options, cell: &Cell) -> u64 {
    options.mib.unwrap_or(match cell.rate {
        Some(rate) => ((rate * 1e6 / 8.0 * 10.0 / 1_048_576.0).round() as u64).clamp(4, 128),
        None => 128,
    })
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options::default();
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
            "--rates" => options.rates = Some(list(&flag, &value()?)?),
            "--rtts" => options.rtts = Some(list(&flag, &value()?)?),
            "--loss" => {
                let losses: Vec<f64> = list(&flag, &value()?)?;
                if losses.iter().any(|loss| !(0.0..=100.0).contains(loss)) {
                    return Err(String::from("--loss is a percentage, 0 to 100"));
                }
                options.losses = Some(losses);
            }
            "--congestion" => {
                options.congestion = value()?
                    .split(',')
                    .filter(|name| !name.is_empty())
                    .map(String::from)
                    .collect()
            }
            "--pull" => options.pull = true,
            "--mib" => {
                options.mib = Some(
                    value()?
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or("--mib needs a whole number above 0")?,
                )
            }
            bare => match bare.parse::<u64>() {
                Ok(rtt) => options.rtts.get_or_insert_with(Vec::new).push(rtt),
                Err(_) => return Err(format!("unknown argument {bare:?}")),
            },
        }
    }
    if options.congestion.is_empty() {
        options.congestion = vec![String::from("bbr"), String::from("cubic")];
    }
    if options
        .rates
        .as_ref()
        .is_some_and(|rates| rates.iter().any(|r: &f64| *r < 0.0))
    {
        return Err(String::from("--rates are Mbit/s, 0 for uncapped"));
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

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or(String::from("uncapped"), |rate| {
        format!("{} Mbit/s", number(rate))
    })
}

fn how_text(how: How) -> &'static str {
    match how {
        How::Send => "send",
        How::Pull => "pull",
    }
}

/// 0.1, 3, 2.5: no trailing zeros.
fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
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

/// The build under test: this one, or the one `TENSOR_IROH_BIN` names, to
/// compare two builds on the same links.
fn binary() -> PathBuf {
    std::env::var_os("TENSOR_IROH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tensor-iroh")))
}

/// A safetensors file of one U8 tensor of `len` bytes that do not compress.
fn write_safetensors(path: &Path, len: usize) {
    let mut header =
        format!(r#"{{"w":{{"dtype":"U8","shape":[{len}],"data_offsets":[0,{len}]}}}}"#)
            .into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    bytes.extend((0..len).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    std::fs::write(path, bytes).expect("the test file is written");
}
