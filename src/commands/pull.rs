//! `tensor-iroh pull`: list a listener's tensors, fetch whole files or the
//! tensors that match glob patterns, to a directory or as one safetensors stream.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use iroh::EndpointAddr;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{
    CompressArgs, NetArgs, Reached, TimeoutArgs, first_failure, interrupted, parse_tickets,
    paths_then_close,
};
use crate::escape::printable;
use crate::formats::Format;
use crate::patterns::Patterns;
use crate::protocol::client;
use crate::protocol::coding::Compress;
use crate::protocol::path::PathReport;
use crate::protocol::pool::Pool;
use crate::protocol::stripes::Striping;
use crate::protocol::transfer::{Progress, Received, Sink};
use crate::protocol::wire::{CatalogFile, Message, Offer, TensorRef};
use crate::service::StdoutSink;
use crate::store::Store;
use crate::ui::{Moved, Tally, Totals, Ui, count, events, human_bytes, mb_per_s, moved_note};

/// Files fetched at once, each on its own stream.
const FILES_IN_FLIGHT: usize = 4;

const EXAMPLES: &str = "Examples:
  tensor-iroh pull <TICKET> --list
  tensor-iroh pull <TICKET> --out ./weights                  # every served file, byte-identical
  tensor-iroh pull <TICKET> 'model.layers.1[0-5].*' --out ./w  # matching tensors per file
  tensor-iroh pull <TICKET> 'lm_head.*' --stdout > head.safetensors";

/// Fetch files or tensors from a listener started with --serve
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct PullArgs {
    /// Ticket printed by `tensor-iroh listen --serve`
    pub ticket: String,
    /// Globs over full tensor names (`*` also matches `.` and `/`); a pattern equal
    /// to a tensor's name selects it exactly; with --list they filter the list.
    /// None: every served file, whole (every tensor with --stdout)
    pub patterns: Vec<String>,
    /// Directory to write to [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write one safetensors stream holding every selected tensor to stdout
    #[arg(long, conflicts_with_all = ["out", "list", "json"])]
    pub stdout: bool,
    /// List the served tensors (name, dtype, shape, bytes, file) and fetch nothing
    #[arg(long)]
    pub list: bool,
    /// JSON lines on stdout
    #[arg(long)]
    pub json: bool,
    /// Overwrite files of the same name instead of choosing a new name
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub compress: CompressArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub timeout: TimeoutArgs,
}

pub async fn run(args: PullArgs, ui: Ui) -> Result<()> {
    if args.list {
        return list_served(&args, &ui).await;
    }
    let started = Instant::now();
    let tally = Tally::default();
    // The listener and the pool once the endpoint is up, for the path in the
    // summary, also of a pull that a signal stops midway.
    let reached: Reached = OnceLock::new();
    let work = async {
        match pull_all(&args, &ui, &tally, &reached).await {
            Ok(done) => done,
            // It failed before it could count files: the pull as a whole failed.
            Err(err) => (
                Totals {
                    failed: 1,
                    ..Totals::default()
                },
                Err(err),
            ),
        }
    };
    // Stopped, it still closes with a summary of the files stored so far; the
    // others keep what arrived for a rerun.
    let ((totals, result), stopped) = tokio::select! {
        done = work => (done, false),
        signal = interrupted() => ((tally.stopped(), Err(signal.into())), true),
    };
    let paths = paths_then_close(&reached, stopped).await;
    ui.summary(
        "pulled",
        &totals,
        started.elapsed(),
        result.as_ref().err(),
        &paths,
    );
    result
}

/// The listener's address, the patterns, and a pool to reach it.
async fn prepare(args: &PullArgs) -> Result<(EndpointAddr, Patterns, Arc<Pool>)> {
    let addr = parse_tickets([&args.ticket])?.remove(0);
    let patterns = Patterns::new(&args.patterns)?;
    let pool = Arc::new(args.net.pool(&args.timeout).await?);
    Ok((addr, patterns, pool))
}

async fn list_served(args: &PullArgs, ui: &Ui) -> Result<()> {
    let (addr, patterns, pool) = prepare(args).await?;
    let result = async {
        let catalog = client::catalog(&pool, &addr).await?;
        patterns.all_match(&catalog)?;
        list(ui, &catalog, &patterns);
        Ok(())
    }
    .await;
    pool.close().await;
    result
}

/// Fetches what the patterns select; fails as a whole before any file is
/// fetched, or else gives each file's outcome in the totals. The pool it
/// dials with goes into `reached`, for the caller to close.
async fn pull_all(
    args: &PullArgs,
    ui: &Ui,
    tally: &Tally,
    reached: &Reached,
) -> Result<(Totals, Result<()>)> {
    let (addr, patterns, pool) = prepare(args).await?;
    reached.set((vec![addr.id], pool.clone())).ok();
    async {
        let catalog = client::catalog(&pool, &addr).await?;
        let wanted = Wanted::select(&patterns, &catalog, args.stdout)?;
        let outcomes = if args.stdout {
            let outcome = fetch_to_stdout(&pool, &addr, &wanted, args.compress.compress).await;
            if let Ok((received, _)) = &outcome {
                tally.stored(received.offer.size, received.traffic);
            }
            vec![outcome]
        } else {
            let store = Store::open(&args.out.clone().unwrap_or_else(|| ".".into()), args.force)?;
            let compress = args.compress.compress;
            fetch_to_store(&pool, &addr, store, wanted, compress, ui, tally).await
        };
        let failures: Vec<_> = outcomes.into_iter().filter_map(Result::err).collect();
        Ok((tally.finished(failures.len()), first_failure(failures)))
    }
    .await
}

fn list(ui: &Ui, catalog: &[CatalogFile], patterns: &Patterns) {
    for file in catalog {
        for tensor in file.tensors.iter().filter(|t| patterns.matches(&t.name)) {
            if ui.json_mode() {
                ui.event(events::Tensor {
                    name: tensor.name.clone(),
                    dtype: tensor.dtype.clone(),
                    shape: tensor.shape.clone(),
                    bytes: tensor.bytes,
                    file: file.name.clone(),
                });
            } else {
                let shape: Vec<String> = tensor.shape.iter().map(u64::to_string).collect();
                // Names come from the network: one line each, whatever they hold.
                ui.out(format!(
                    "{}\t{}\t[{}]\t{}\t{}",
                    printable(&tensor.name),
                    printable(&tensor.dtype),
                    shape.join(", "),
                    tensor.bytes,
                    printable(&file.name)
                ));
            }
        }
    }
}

/// What to fetch from one served file: all of it, or the named tensors.
struct Wanted {
    file: String,
    tensors: Option<Vec<String>>,
    /// About how many bytes will arrive, for progress.
    bytes: u64,
}

impl Wanted {
    /// Applies the patterns to the catalog; a pattern that matches nothing is an
    /// error before anything is fetched. Without patterns whole files are
    /// wanted, or, for one `merged` stream, every tensor of every file.
    fn select(patterns: &Patterns, catalog: &[CatalogFile], merged: bool) -> Result<Vec<Wanted>> {
        if catalog.is_empty() {
            bail!("the listener serves no files");
        }
        if patterns.is_empty() && !merged {
            return Ok(catalog
                .iter()
                .map(|f| Wanted {
                    file: f.name.clone(),
                    tensors: None,
                    bytes: f.size,
                })
                .collect());
        }
        patterns.all_match(catalog)?;
        Ok(catalog
            .iter()
            .filter_map(|file| {
                let chosen: Vec<_> = file
                    .tensors
                    .iter()
                    .filter(|t| patterns.matches(&t.name))
                    .collect();
                (!chosen.is_empty()).then(|| Wanted {
                    file: file.name.clone(),
                    tensors: Some(chosen.iter().map(|t| t.name.clone()).collect()),
                    bytes: chosen.iter().map(|t| t.bytes).sum(),
                })
            })
            .collect())
    }
}

type Outcome = Result<(Received, std::time::Duration)>;

async fn fetch_to_stdout(
    pool: &Pool,
    addr: &iroh::EndpointAddr,
    wanted: &[Wanted],
    compress: Compress,
) -> Outcome {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    let mut refs = Vec::new();
    for file in wanted {
        let Some(names) = &file.tensors else {
            bail!("a whole file cannot go into a safetensors stream");
        };
        for name in names {
            if let Some(first) = seen.insert(name, &file.file) {
                bail!(
                    "tensor {name:?} is in both {first} and {}; a safetensors stream holds each name once",
                    file.file
                );
            }
            refs.push(TensorRef {
                file: file.file.clone(),
                tensor: name.clone(),
            });
        }
    }
    // Tensors of one safetensors file are that file reduced, or the file
    // itself, byte for byte, when all of them are wanted.
    let request = match wanted {
        [one] if Format::from_name(&one.file) == Some(Format::Safetensors) => Message::Fetch {
            file: one.file.clone(),
            tensors: one.tensors.clone(),
            compress,
        },
        _ => Message::FetchMerged {
            tensors: refs,
            compress,
        },
    };
    let started = Instant::now();
    let received = client::fetch(
        pool,
        addr,
        &request,
        Striping::Single,
        &Progress::default(),
        async |_: &Offer| Ok(Box::new(StdoutSink::new((), Arc::default())) as Box<dyn Sink>),
    )
    .await?;
    Ok((received, started.elapsed()))
}

async fn fetch_to_store(
    pool: &Arc<Pool>,
    addr: &iroh::EndpointAddr,
    store: Arc<Store>,
    wanted: Vec<Wanted>,
    compress: Compress,
    ui: &Ui,
    tally: &Tally,
) -> Vec<Outcome> {
    let progress = Progress::default();
    tally.plan(wanted.len(), &progress);
    let total = wanted.iter().map(|w| w.bytes).sum();
    let bar = ui.progress("pulling", Some(total), &progress);
    let slots = Arc::new(Semaphore::new(FILES_IN_FLIGHT));
    let striping = Striping::SharedAmong(wanted.len().min(FILES_IN_FLIGHT));
    let mut fetches = JoinSet::new();
    for item in wanted {
        let (pool, addr, store, slots, progress, ui) = (
            pool.clone(),
            addr.clone(),
            store.clone(),
            slots.clone(),
            progress.child(),
            ui.clone(),
        );
        fetches.spawn(async move {
            let _slot = slots.acquire().await.expect("never closed");
            let _bar = ui.progress(&item.file, Some(item.bytes), &progress);
            let started = Instant::now();
            let request = Message::Fetch {
                file: item.file.clone(),
                tensors: item.tensors,
                compress,
            };
            let received = client::fetch(
                &pool,
                &addr,
                &request,
                striping,
                &progress,
                async |offer: &Offer| {
                    // Within one pull every fetch is live; two fetches of one file
                    // get sibling partial files rather than taking over.
                    store
                        .accept(offer, Arc::new(|| Box::pin(async { true })))
                        .await
                },
            )
            .await
            .with_context(|| format!("pulling {}", item.file))?;
            Ok((received, started.elapsed()))
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = fetches.join_next().await {
        let outcome =
            joined.unwrap_or_else(|err| Err(anyhow::anyhow!("a pull task failed: {err}")));
        if let Ok((received, elapsed)) = &outcome {
            tally.stored(received.offer.size, received.traffic);
            let path = if ui.json_mode() {
                PathReport::to_peer(pool, &addr.id).await
            } else {
                None
            };
            report_file(ui, received, *elapsed, path);
        }
        outcomes.push(outcome);
    }
    drop(bar);
    outcomes
}

/// A stored file's line, or its JSON event with `path`, the path to the
/// listener as it stands.
fn report_file(
    ui: &Ui,
    received: &Received,
    elapsed: std::time::Duration,
    path: Option<PathReport>,
) {
    let offer = &received.offer;
    if ui.json_mode() {
        ui.event(events::FilePulled {
            name: offer.name.clone(),
            stored_as: received.stored_as.clone(),
            tensors: offer.tensors,
            bytes: offer.size,
            sent_bytes: received.traffic.wire_bytes,
            compression: received.traffic.compression(),
            moved: Moved::of(received.traffic.data_bytes, offer.size),
            blake3: received.hash.clone(),
            replaced: received.replaced,
            seconds: elapsed.as_secs_f64(),
            mb_per_s: mb_per_s(offer.size, elapsed),
            path,
        });
    } else {
        ui.say(format!(
            "{} {}: {}, {}{}{}",
            ui.green("pulled"),
            ui.bold(printable(&received.stored_as)),
            count(offer.tensors, "tensor"),
            human_bytes(offer.size),
            moved_note(received.traffic, offer.size, "received"),
            if received.replaced {
                " (replacing the file that was there)"
            } else {
                ""
            }
        ));
    }
}
