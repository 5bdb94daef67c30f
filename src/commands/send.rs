//! `tensor-iroh send`: send files to one or more listeners.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use iroh::EndpointAddr;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::{
    CompressArgs, NetArgs, Reached, TimeoutArgs, first_failure, parse_tickets,
    until_done_or_stopped,
};
use crate::catalog::{whole_file, whole_file_offer};
use crate::escape::printable;
use crate::formats::{Format, TensorFile, files_in};
use crate::protocol::client;
use crate::protocol::coding::Coding;
use crate::protocol::fanout;
use crate::protocol::path::PathReport;
use crate::protocol::pool::Pool;
use crate::protocol::stripes::Striping;
use crate::protocol::transfer::{Progress, Sent};
use crate::protocol::wire::Offer;
use crate::ui::errors::describe;
use crate::ui::{
    Moved, Tally, Totals, Ui, count, error_text, events, human_bytes, mb_per_s, moved_note,
};

/// Files in flight at once to one listener, each on its own stream.
const FILES_IN_FLIGHT: usize = 4;

const EXAMPLES: &str = "Examples:
  tensor-iroh send <TICKET> weights.safetensors
  tensor-iroh send <TICKET> ./sharded-checkpoint/          # a directory: its tensor files and index
  tensor-iroh send <TICKET> a.npy --name b.npy
  tensor-iroh send <TICKET> model.safetensors --to <TICKET2> --json";

/// Send .npy/.safetensors files (or directories of them) to listeners
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct SendArgs {
    /// Ticket printed by `tensor-iroh listen`
    pub ticket: String,
    /// Files or directories to send
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Name the receiver stores the file under (one file only)
    #[arg(long)]
    pub name: Option<String>,
    /// Another listener to send the same files to, concurrently (repeatable)
    #[arg(long, value_name = "TICKET")]
    pub to: Vec<String>,
    /// JSON lines on stdout: one object per file, then a summary
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub compress: CompressArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub timeout: TimeoutArgs,
}

/// A validated file and the name it travels under.
struct Outgoing {
    file: TensorFile,
    name: String,
}

impl SendArgs {
    /// A rule clap's derive cannot state; broken, it is a usage error.
    pub fn check_usage(&self) -> Result<(), String> {
        if self.name.is_some() && self.files.len() > 1 {
            return Err(format!(
                "--name renames one file, but {} were given",
                self.files.len()
            ));
        }
        Ok(())
    }
}

pub async fn run(args: SendArgs, ui: Ui) -> Result<()> {
    let tally = Tally::default();
    // The listeners and the pool once the endpoint is up, for the paths in the
    // summary, also of a send that a signal stops midway.
    let reached: Reached = OnceLock::new();
    let work = async {
        match prepare(&args).await {
            Ok((targets, sources, pool)) => {
                let peers = targets.iter().map(|target| target.id).collect();
                reached.set((peers, pool.clone())).ok();
                let coding = args.compress.coding();
                send_everywhere(targets, sources, pool, coding, &ui, &tally).await
            }
            // Nothing was sent: every file named is one that failed.
            Err(err) => (
                Totals {
                    failed: args.files.len(),
                    ..Totals::default()
                },
                Err(err),
            ),
        }
    };
    until_done_or_stopped("sent", &ui, &tally, &reached, work).await
}

/// A validated file and the offer it goes out with. It is opened only when its
/// upload starts, so a send of thousands of files holds a few descriptors, not
/// thousands.
struct Planned {
    file: TensorFile,
    offer: Offer,
}

/// Everything that can fail before a byte is sent: tickets, files, the endpoint.
async fn prepare(args: &SendArgs) -> Result<(Vec<EndpointAddr>, Arc<Vec<Planned>>, Arc<Pool>)> {
    let mut targets = parse_tickets(std::iter::once(&args.ticket).chain(&args.to))?;
    // A listener named twice (its ticket again, or a second ticket of it)
    // gets the files once.
    let mut seen = std::collections::HashSet::new();
    targets.retain(|target| seen.insert(target.id));
    let outgoing = collect(&args.files, args.name.as_deref())?;
    let outgoing_len = outgoing.len();
    let files_in_send = outgoing_len as u64;
    let planned = outgoing
        .into_iter()
        .map(|o| Planned {
            offer: Offer {
                files_in_send,
                ..whole_file_offer(&o.file, o.name)
            },
            file: o.file,
        })
        .collect();
    let pool = Arc::new(args.net.pool(&args.timeout).await?.for_peers(targets.len()));
    Ok((targets, Arc::new(planned), pool))
}

async fn send_everywhere(
    targets: Vec<EndpointAddr>,
    sources: Arc<Vec<Planned>>,
    pool: Arc<Pool>,
    coding: Coding,
    ui: &Ui,
    tally: &Tally,
) -> (Totals, Result<()>) {
    let total: u64 = sources.iter().map(|s| s.offer.size).sum::<u64>() * targets.len() as u64;
    let progress = Progress::default();
    tally.plan(sources.len() * targets.len(), &progress);
    let bar = ui.progress("sending", Some(total), &progress);
    let reporter = Reporter {
        ui: ui.clone(),
        tally: tally.clone(),
        pool,
        deliveries: sources.len() * targets.len(),
    };
    // What crossed the network from here: in a fan-out, far less than the
    // copies the receivers hold.
    let mut traffic = progress.clone();
    let failures = if targets.len() > 1 {
        traffic = Progress::default();
        let progress = (progress.clone(), traffic.clone());
        fan_out_all(targets, sources, coding, progress, reporter).await
    } else {
        let mut runs = JoinSet::new();
        for addr in targets {
            let run = send_all(
                addr,
                sources.clone(),
                coding.clone(),
                progress.clone(),
                reporter.clone(),
            );
            runs.spawn(run);
        }
        let mut failures = Vec::new();
        while let Some(run) = runs.join_next().await {
            match run {
                Ok(outcomes) => failures.extend(outcomes.into_iter().filter_map(Result::err)),
                Err(err) => failures.push(anyhow::Error::new(err).context("a send task failed")),
            }
        }
        failures
    };
    drop(bar);
    // The pool stays open until the summary has read the paths off it.
    let mut totals = tally.finished(failures.len());
    // Counted as data goes out, so files that failed midway count too.
    totals.sent_bytes = traffic.wire();
    totals.data_bytes = traffic.get();
    (totals, first_failure(failures))
}

/// Expands directories, applies `--name`, and validates every file before
/// anything is sent.
fn collect(paths: &[PathBuf], rename: Option<&str>) -> Result<Vec<Outgoing>> {
    let mut outgoing = Vec::new();
    for path in paths {
        if path.is_dir() {
            let dir_name = dir_name(path)?;
            for file in files_in(path, true)? {
                let file = TensorFile::open(&file)?;
                let name = format!("{dir_name}/{}", file.file_name());
                outgoing.push(Outgoing { file, name });
            }
        } else {
            let file = TensorFile::open(path)?;
            let name = file.file_name().to_string();
            outgoing.push(Outgoing { file, name });
        }
    }
    if let Some(rename) = rename {
        if outgoing.len() != 1 {
            bail!("--name needs exactly one file, not {}", outgoing.len());
        }
        let format = outgoing[0].file.format;
        if Format::from_name(rename) != Some(format) {
            bail!(
                "--name {rename:?} does not fit {}: a {} file needs a name ending in .{}",
                outgoing[0].file.path.display(),
                format.as_str(),
                format.extension()
            );
        }
        outgoing[0].name = rename.to_string();
    }
    Ok(outgoing)
}

fn is_index(source: &Planned) -> bool {
    source.offer.format == Format::Index.as_str()
}

fn dir_name(path: &Path) -> Result<String> {
    let absolute = path
        .canonicalize()
        .with_context(|| format!("cannot open {}", path.display()))?;
    absolute
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no usable directory name", path.display()))
}

/// Sends every source to one listener, a few files at a time; says `done` when
/// all were stored. Returns one outcome per file (stored ones are counted in `tally`).
async fn send_all(
    addr: EndpointAddr,
    sources: Arc<Vec<Planned>>,
    coding: Coding,
    progress: Progress,
    reporter: Reporter,
) -> Vec<Result<()>> {
    let (pool, ui) = (reporter.pool.clone(), reporter.ui.clone());
    let slots = Arc::new(Semaphore::new(FILES_IN_FLIGHT));
    // A checkpoint's index names its shards, so it goes after them, and not at
    // all if one of them failed: an index in place means the shards are too.
    let shards = sources.iter().filter(|s| !is_index(s)).count();
    let (shards_done, shards_failed) = watch::channel(if shards == 0 { Some(0) } else { None });
    let mut uploads = JoinSet::new();
    for index in 0..sources.len() {
        let (pool, addr, sources, coding, progress, slots, ui, mut shards_failed) = (
            pool.clone(),
            addr.clone(),
            sources.clone(),
            coding.clone(),
            progress.clone(),
            slots.clone(),
            ui.clone(),
            shards_failed.clone(),
        );
        uploads.spawn(async move {
            let source = &sources[index];
            if is_index(source) {
                let failed = shards_failed
                    .wait_for(Option::is_some)
                    .await
                    .map_or(1, |failed| failed.unwrap_or(1));
                if failed > 0 {
                    let withheld = anyhow::anyhow!(
                        "not sent: {} of this send failed, and the index would name missing shards",
                        count(failed as u64, "other file")
                    )
                    .context(format!(
                        "sending {} to {}",
                        source.offer.name,
                        addr.id.fmt_short()
                    ));
                    return (index, Err(withheld), Duration::ZERO);
                }
            }
            let _slot = slots.acquire().await.expect("never closed");
            let file_progress = progress.child();
            let _bar = ui.progress(&source.offer.name, Some(source.offer.size), &file_progress);
            let started = Instant::now();
            let sent = async {
                // The file must still be the one validated when the send began.
                source.file.check_unchanged()?;
                let opened = whole_file(&source.file, source.offer.clone())?.coded_by(coding);
                let striping = Striping::SharedAmong(sources.len().min(FILES_IN_FLIGHT));
                client::upload(&pool, &addr, &opened, striping, &file_progress).await
            }
            .await
            .with_context(|| format!("sending {} to {}", source.offer.name, addr.id.fmt_short()));
            (index, sent, started.elapsed())
        });
    }
    let mut outcomes = Vec::new();
    let (mut shards_left, mut shards_lost) = (shards, 0);
    let mut shard_finished = |lost: bool| {
        shards_left = shards_left.saturating_sub(1);
        shards_lost += usize::from(lost);
        if shards_left == 0 {
            shards_done.send_replace(Some(shards_lost));
        }
    };
    while let Some(joined) = uploads.join_next().await {
        let (index, sent, elapsed) = match joined {
            Ok(result) => result,
            Err(err) => {
                outcomes.push(Err(anyhow::anyhow!("an upload task failed: {err}")));
                // Counted as a lost shard, so no index waits for it forever.
                shard_finished(true);
                continue;
            }
        };
        if !is_index(&sources[index]) {
            shard_finished(sent.is_err());
        }
        reporter
            .file(&sources[index].offer, &addr, &sent, elapsed)
            .await;
        outcomes.push(sent.map(|_| ()));
    }
    if outcomes.iter().all(Result::is_ok)
        && let Err(err) = client::done(&pool, &addr, outcomes.len() as u64).await
    {
        outcomes.push(Err(
            err.context(format!("finishing the send to {}", addr.id.fmt_short()))
        ));
    }
    outcomes
}

/// Sends every source to all `targets` through a fan-out: each file leaves this
/// machine about once and the listeners pass it on among themselves. Shards
/// go first, a few at a time; an index follows to the listeners that stored
/// every shard, and `done` to those that stored everything.
async fn fan_out_all(
    targets: Vec<EndpointAddr>,
    sources: Arc<Vec<Planned>>,
    coding: Coding,
    progress: (Progress, Progress),
    reporter: Reporter,
) -> Vec<anyhow::Error> {
    let mut failed_at = vec![0u64; targets.len()];
    let mut failures = Vec::new();
    let (shards, indexes): (Vec<usize>, Vec<usize>) =
        (0..sources.len()).partition(|&index| !is_index(&sources[index]));
    for (files, after_shards) in [(shards, false), (indexes, true)] {
        let mut receivers = Vec::new();
        for (target, addr) in targets.iter().enumerate() {
            if !after_shards || failed_at[target] == 0 {
                receivers.push(addr.clone());
                continue;
            }
            for &file in &files {
                let withheld = anyhow::anyhow!(
                    "not sent: {} of this send failed, and the index would name missing shards",
                    count(failed_at[target], "other file")
                )
                .context(format!(
                    "sending {} to {}",
                    sources[file].offer.name,
                    addr.id.fmt_short()
                ));
                reporter
                    .file(
                        &sources[file].offer,
                        addr,
                        &Err(anyhow::anyhow!("{withheld:#}")),
                        Duration::ZERO,
                    )
                    .await;
                failures.push(withheld);
            }
        }
        let slots = Arc::new(Semaphore::new(FILES_IN_FLIGHT));
        let receivers = Arc::new(receivers);
        let mut runs = JoinSet::new();
        for file in files {
            let forwarded = fan_out_file(
                file,
                receivers.clone(),
                sources.clone(),
                coding.clone(),
                progress.clone(),
                reporter.clone(),
                slots.clone(),
            );
            runs.spawn(forwarded);
        }
        while let Some(joined) = runs.join_next().await {
            let Ok((file, outcomes, elapsed)) = joined else {
                failures.push(anyhow::anyhow!("a fan-out task failed"));
                continue;
            };
            for (addr, sent) in receivers.iter().zip(outcomes) {
                reporter
                    .file(&sources[file].offer, addr, &sent, elapsed)
                    .await;
                if let Err(err) = sent {
                    let target = targets
                        .iter()
                        .position(|t| t.id == addr.id)
                        .expect("a target");
                    failed_at[target] += 1;
                    failures.push(err);
                }
            }
        }
    }
    for (addr, failed) in targets.iter().zip(failed_at) {
        if failed == 0
            && let Err(err) = client::done(&reporter.pool, addr, sources.len() as u64).await
        {
            failures.push(err.context(format!("finishing the send to {}", addr.id.fmt_short())));
        }
    }
    failures
}

/// Fans one file out to `receivers` once a slot is free; its outcome at each.
async fn fan_out_file(
    file: usize,
    receivers: Arc<Vec<EndpointAddr>>,
    sources: Arc<Vec<Planned>>,
    coding: Coding,
    (held, sent): (Progress, Progress),
    reporter: Reporter,
    slots: Arc<Semaphore>,
) -> (usize, Vec<Result<Sent>>, Duration) {
    let _slot = slots.acquire().await.expect("never closed");
    let source = &sources[file];
    let file_progress = held.child();
    let all_copies = source.offer.size * receivers.len() as u64;
    let _bar = reporter
        .ui
        .progress(&source.offer.name, Some(all_copies), &file_progress);
    let started = Instant::now();
    // The file must still be the one validated when the send began.
    let opened = source
        .file
        .check_unchanged()
        .and_then(|()| whole_file(&source.file, source.offer.clone()));
    let outcomes = match opened {
        Ok(opened) => {
            let opened = opened.coded_by(coding);
            fanout::distribute(&reporter.pool, &receivers, &opened, &file_progress, &sent).await
        }
        Err(err) => receivers
            .iter()
            .map(|_| Err(anyhow::anyhow!("{err:#}")))
            .collect(),
    };
    let outcomes = receivers
        .iter()
        .zip(outcomes)
        .map(|(addr, sent)| {
            sent.with_context(|| {
                format!("sending {} to {}", source.offer.name, addr.id.fmt_short())
            })
        })
        .collect();
    (file, outcomes, started.elapsed())
}

/// Reports each file's outcome at each listener: a line or a JSON event, and
/// the tally of stored files.
#[derive(Clone)]
struct Reporter {
    ui: Ui,
    tally: Tally,
    pool: Arc<Pool>,
    /// Files times listeners: above one, every failure gets its own line.
    deliveries: usize,
}

impl Reporter {
    async fn file(
        &self,
        offer: &Offer,
        addr: &EndpointAddr,
        sent: &Result<Sent>,
        elapsed: Duration,
    ) {
        let Reporter {
            ui,
            tally,
            pool,
            deliveries,
        } = self;
        if let Ok(sent) = &sent {
            tally.stored(offer.size, sent.traffic);
            if ui.json_mode() {
                let path = PathReport::to_peer(pool, &addr.id).await;
                ui.event(events::FileSent {
                    name: offer.name.clone(),
                    stored_as: sent.stored_as.clone(),
                    peer: addr.id.to_string(),
                    tensors: offer.tensors,
                    bytes: offer.size,
                    sent_bytes: sent.traffic.wire_bytes,
                    compression: sent.traffic.compression(),
                    moved: Moved::of(sent.traffic.data_bytes, offer.size),
                    blake3: sent.hash.clone(),
                    seconds: elapsed.as_secs_f64(),
                    mb_per_s: mb_per_s(offer.size, elapsed),
                    path,
                });
            } else {
                let renamed = if sent.stored_as != offer.name {
                    format!(" (stored as {})", ui.bold(printable(&sent.stored_as)))
                } else {
                    String::new()
                };
                let resumed = moved_note(sent.traffic, offer.size, "sent");
                ui.say(format!(
                    "{} {}{renamed} to {}: {}, {}{resumed}",
                    ui.green("sent"),
                    ui.bold(&offer.name),
                    addr.id.fmt_short(),
                    count(offer.tensors, "tensor"),
                    human_bytes(offer.size),
                ));
            }
        } else if let Err(err) = &sent {
            if ui.json_mode() {
                ui.event(events::FileFailed {
                    name: offer.name.clone(),
                    peer: addr.id.to_string(),
                    error: error_text(err),
                });
            } else if *deliveries > 1 {
                // The closing error names only the first failure; even with
                // --quiet, every failed file must be named somewhere.
                ui.warn(describe(err));
            }
        }
    }
}
