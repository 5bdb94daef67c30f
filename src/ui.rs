//! Everything the user sees: human lines and progress bars on stderr, JSON lines
//! on stdout. Commands report through this so `--json`, `-q`, `--color` and a
//! terminal differ only here.

pub mod errors;
pub mod events;
mod json;

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console::Style;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use self::events::{Event, PathToPeer};
use crate::escape::printable;
use crate::protocol::path::{PathReport, PeerPath};
use crate::protocol::transfer::{Progress, Traffic};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone)]
pub struct Ui {
    json: bool,
    quiet: bool,
    /// `-v` given this many times.
    verbose: u8,
    bars: Option<MultiProgress>,
}

impl Ui {
    pub fn new(json: bool, quiet: bool, color: ColorChoice) -> Ui {
        let colors = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::io::stderr().is_terminal()
            }
        };
        console::set_colors_enabled(colors);
        console::set_colors_enabled_stderr(colors);
        let bars = (!json && !quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Ui {
            json,
            quiet,
            verbose: 0,
            bars,
        }
    }

    /// This `Ui` with `-v` given `verbose` times.
    pub fn with_verbose(mut self, verbose: u8) -> Ui {
        self.verbose = verbose;
        self
    }

    pub fn json_mode(&self) -> bool {
        self.json
    }

    /// Whether `-v` was given.
    pub fn verbose(&self) -> bool {
        self.verbose > 0
    }

    /// A human line on stderr, unless quiet.
    pub fn say(&self, line: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(bars) => bars.suspend(|| to_stderr(line.as_ref())),
            None => to_stderr(line.as_ref()),
        }
    }

    /// A warning on stderr, shown even when quiet; it often quotes a peer, so
    /// it is escaped.
    pub fn warn(&self, line: impl AsRef<str>) {
        let text = format!(
            "{} {}",
            Style::new().yellow().bold().apply_to("warning:"),
            printable_line(line.as_ref())
        );
        match &self.bars {
            Some(bars) => bars.suspend(|| to_stderr(&text)),
            None => to_stderr(&text),
        }
    }

    /// One JSON event on its own stdout line.
    pub fn event(&self, event: impl Into<Event>) {
        self.out(json::line(&event.into()));
    }

    /// A line on stdout (tickets, ids, listings); machine-readable output.
    pub fn out(&self, line: impl AsRef<str>) {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", line.as_ref()).ok();
        stdout.flush().ok();
    }

    pub fn bold(&self, text: impl std::fmt::Display) -> String {
        Style::new().bold().apply_to(text).to_string()
    }

    pub fn green(&self, text: impl std::fmt::Display) -> String {
        Style::new().green().apply_to(text).to_string()
    }

    /// A progress bar fed from `counter`, or nothing where bars are not shown.
    /// `total` of `None` shows a plain byte counter (a listener's lifetime
    /// total, where a rate would mostly average idle time).
    pub fn progress(&self, label: &str, total: Option<u64>, counter: &Progress) -> Option<Bar> {
        let bars = self.bars.as_ref()?;
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::no_length().with_style(
                ProgressStyle::with_template("{prefix:.bold} {bytes} so far")
                    .expect("valid template"),
            ),
        };
        // Labels are file names, a peer's on a listener or a puller.
        let bar = bars.add(bar.with_prefix(printable(label).into_owned()));
        let ticker = {
            let bar = bar.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                loop {
                    bar.set_position(counter.get());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Some(Bar {
            bar,
            ticker: Arc::new(ticker),
            counter: counter.clone(),
        })
    }
}

/// A progress bar that follows a byte counter until dropped.
pub struct Bar {
    bar: ProgressBar,
    ticker: Arc<tokio::task::JoinHandle<()>>,
    counter: Progress,
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.set_position(self.counter.get());
        self.bar.finish_and_clear();
    }
}

/// What a send or a pull moved, for its closing line.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub files: u64,
    /// File bytes.
    pub bytes: u64,
    /// The bytes of data that crossed the network, on the wire: fewer after a
    /// resume, and fewer where chunks were coded.
    pub sent_bytes: u64,
    /// The file bytes those carried.
    pub data_bytes: u64,
    pub failed: usize,
}

impl Totals {
    /// File bytes per wire byte, as in the `compression` of JSON events.
    pub fn compression(&self) -> f64 {
        Traffic {
            data_bytes: self.data_bytes,
            wire_bytes: self.sent_bytes,
        }
        .compression()
    }
}

/// Files counted as each finishes, for the closing line of a send or pull,
/// also of one that a signal stops midway.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<Counted>>);

#[derive(Default)]
struct Counted {
    totals: Totals,
    /// Files the command set out to move (once per receiver).
    planned: usize,
    /// Where the bytes that crossed the network are counted.
    progress: Option<Progress>,
}

impl Tally {
    pub fn plan(&self, files: usize, progress: &Progress) {
        if let Ok(mut counted) = self.0.lock() {
            counted.planned = files;
            counted.progress = Some(progress.clone());
        }
    }

    /// A file of `bytes` is stored, after `traffic` crossed the network.
    pub fn stored(&self, bytes: u64, traffic: Traffic) {
        if let Ok(mut counted) = self.0.lock() {
            counted.totals.files += 1;
            counted.totals.bytes += bytes;
            counted.totals.sent_bytes += traffic.wire_bytes;
            counted.totals.data_bytes += traffic.data_bytes;
        }
    }

    /// The totals of a command that ran its course, `failed` files failing.
    pub fn finished(&self, failed: usize) -> Totals {
        let mut totals = self
            .0
            .lock()
            .map(|counted| counted.totals.clone())
            .unwrap_or_default();
        totals.failed = failed;
        totals
    }

    /// The totals of a command stopped now: every file not stored counts as
    /// failed (at least one does, since it stopped), and `sent_bytes` holds
    /// what crossed the network so far, files under way included.
    pub fn stopped(&self) -> Totals {
        let Ok(counted) = self.0.lock() else {
            return Totals::default();
        };
        let mut totals = counted.totals.clone();
        totals.failed = counted.planned.saturating_sub(totals.files as usize).max(1);
        if let Some(progress) = &counted.progress {
            totals.sent_bytes = progress.wire();
            totals.data_bytes = progress.get();
        }
        totals
    }
}

impl Ui {
    /// The closing line of a send or pull: a JSON summary, or a human line when
    /// everything went through (failures are reported as the error instead).
    /// `error` is why the command fails, if it does: JSON scripts get it in the
    /// summary, people get it from the error line on stderr. `paths` has one
    /// entry per peer, the first one's being the summary's `path`; with `-v`
    /// people get a line for each.
    pub fn summary(
        &self,
        verb: &str,
        totals: &Totals,
        elapsed: Duration,
        error: Option<&anyhow::Error>,
        paths: &[PeerPath],
    ) {
        if self.json {
            self.event(events::Summary {
                files: totals.files,
                failed: totals.failed,
                bytes: totals.bytes,
                sent_bytes: totals.sent_bytes,
                compression: totals.compression(),
                seconds: elapsed.as_secs_f64(),
                mb_per_s: mb_per_s(totals.bytes, elapsed),
                error: error.map(error_text),
                path: paths.first().and_then(|p| p.path.clone()),
                paths: paths
                    .iter()
                    .map(|p| PathToPeer {
                        peer: p.peer.to_string(),
                        path: p.path.clone(),
                    })
                    .collect(),
            });
            return;
        }
        if totals.failed == 0 {
            self.say(format!(
                "{verb} {}, {} in {:.2} s ({:.1} MB/s)",
                count(totals.files, "file"),
                human_bytes(totals.bytes),
                elapsed.as_secs_f64(),
                mb_per_s(totals.bytes, elapsed)
            ));
        }
        self.paths(paths);
    }

    /// With `-v` and without `--json`, one line per peer on the network path
    /// to it: what a user asking "why is this slow?" needs first.
    pub fn paths(&self, paths: &[PeerPath]) {
        if self.json || !self.verbose() {
            return;
        }
        for peer in paths {
            self.say(path_line(peer));
        }
    }
}

/// `path to 3f9a2c81d0: direct 10.0.0.2:4433, rtt 50.3 ms, lost 1.03 % of packets
/// sent (812 of 79,210), 14 congestion events, cwnd 1.14 MiB, estimate 96.4 Mbit/s`.
pub fn path_line(peer: &PeerPath) -> String {
    let to = format!("path to {}", peer.peer.fmt_short());
    let Some(path) = &peer.path else {
        return format!("{to}: unknown (no open connection)");
    };
    let PathReport {
        kind,
        addr,
        rtt_ms,
        sent_packets,
        lost_packets,
        loss_percent,
        congestion_events,
        cwnd_bytes,
        bandwidth_estimate_mbit,
        mtu: _,
    } = path;
    // Loopback and LAN round trips are fractions of a millisecond.
    let rtt = if *rtt_ms < 10.0 {
        format!("{rtt_ms:.2}")
    } else {
        format!("{rtt_ms:.1}")
    };
    let mut line = format!(
        "{to}: {} {addr}, rtt {rtt} ms, lost {loss_percent:.2} % of packets sent ({} of {}), {}, cwnd {}",
        kind.as_str(),
        grouped(*lost_packets),
        grouped(*sent_packets),
        count(*congestion_events, "congestion event"),
        human_bytes(*cwnd_bytes),
    );
    if let Some(mbit) = bandwidth_estimate_mbit {
        line.push_str(&format!(", estimate {mbit:.1} Mbit/s"));
    }
    line
}

/// `79210` as `79,210`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// An error and its context chain on one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error and its context chain as one line in a user's words
/// ([`errors::describe`]), a peer's text in it escaped: what the `error:`
/// line, warnings and JSON `error` keys show.
pub fn error_text(err: &anyhow::Error) -> String {
    printable_line(&errors::describe(err))
}

/// `text` on one line, escaped: errors often carry a peer's words (a refusal
/// reason, a name), and every such line is printed through here.
fn printable_line(text: &str) -> String {
    one_line(&printable(text))
}

/// The line a failed command ends with, `error:` coloured like `warning:`.
pub fn error_line(message: &str) -> String {
    format!(
        "{} {}",
        Style::new().for_stderr().red().bold().apply_to("error:"),
        printable_line(message)
    )
}

/// A line on stderr; a closed stderr must not take the process down with it.
pub fn to_stderr(line: &str) {
    writeln!(std::io::stderr().lock(), "{line}").ok();
}

/// How much of a file crossed the network: all of it, the rest after a
/// resume, or none where the other side already held it: the `moved` key of
/// JSON file events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Moved {
    All,
    Rest,
    None,
}

impl Moved {
    pub fn of(moved: u64, size: u64) -> Moved {
        if moved == 0 && size > 0 {
            Moved::None
        } else if moved < size {
            Moved::Rest
        } else {
            Moved::All
        }
    }
}

/// What a file's transfer moved, when not all of it (after a resume, or
/// nothing for a file the other side already held), and how much smaller
/// compression made it on the wire.
pub fn moved_note(traffic: Traffic, size: u64, verb: &str) -> String {
    let moved = traffic.data_bytes;
    let part = match Moved::of(moved, size) {
        Moved::None => format!(", already there: nothing {verb}"),
        Moved::Rest => format!(", resumed: {} {verb}", human_bytes(moved)),
        Moved::All => String::new(),
    };
    let compression = traffic.compression();
    if compression >= 1.01 {
        format!("{part}, compressed {compression:.2}x")
    } else {
        part
    }
}

/// Megabytes (10^6 bytes) per second, the unit of every rate we print.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        0.0
    } else {
        bytes as f64 / 1e6 / seconds
    }
}

/// "1 tensor", "3 tensors".
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    match n.into() {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

pub fn human_bytes(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iroh::TransportAddr;

    use super::*;

    #[test]
    fn an_error_carrying_a_peers_text_is_one_escaped_line() {
        console::set_colors_enabled_stderr(false);
        let reason = "refused \u{1b}]0;pwned\u{7}x.npy: name \"x\nforged\u{202e}.npy\" is taken";
        let err = anyhow::anyhow!("{reason}").context("sending x.npy to 3f9a2c81d0");
        assert_eq!(
            error_line(&format!("{err:#}")),
            r#"error: sending x.npy to 3f9a2c81d0: refused \u{1b}]0;pwned\u{7}x.npy: name "x\nforged\u{202e}.npy" is taken"#
        );
        assert_eq!(
            error_text(&anyhow::anyhow!("cannot   read w.npy:\n  gone")),
            r"cannot read w.npy:\n gone"
        );
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(812), "812");
        assert_eq!(grouped(79_210), "79,210");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn a_path_line_says_where_and_how_the_data_went() {
        let peer = iroh::SecretKey::generate().public();
        let mut stats = crate::protocol::path::tests::stats();
        let addr = TransportAddr::Ip("10.0.0.2:4433".parse().unwrap());
        let mut path = PeerPath {
            peer,
            path: Some(PathReport::from_stats(&addr, &stats)),
        };
        assert_eq!(
            path_line(&path),
            format!(
                "path to {}: direct 10.0.0.2:4433, rtt 50.3 ms, lost 1.03 % of packets sent \
                 (812 of 79,210), 14 congestion events, cwnd 1.14 MiB",
                peer.fmt_short()
            )
        );
        stats.bandwidth_estimate = Some(96_400_000);
        stats.rtt = Duration::from_micros(300);
        path.path = Some(PathReport::from_stats(&addr, &stats));
        let line = path_line(&path);
        assert!(line.contains("rtt 0.30 ms"), "{line}");
        assert!(line.ends_with(", estimate 96.4 Mbit/s"), "{line}");
        path.path = None;
        assert!(path_line(&path).ends_with(": unknown (no open connection)"));
    }
}
