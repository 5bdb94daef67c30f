//! `tensor-iroh pull`: list a listener's tensors, fetch whole files or the
//! tensors that match glob patterns, to a directory or as one safetensors stream;
//! from several listeners at once where they serve the same whole file
//! (`sources`).

mod sources;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use iroh::{EndpointAddr, EndpointId};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{
    CompressArgs, NetArgs, Reached, TimeoutArgs, first_failure, split_sources,
    until_done_or_stopped,
};
use crate::escape::printable;
use crate::formats::Format;
use crate::patterns::Patterns;
use crate::protocol::client;
use crate::protocol::coding::Compress;
use crate::protocol::path::PathReport;
use crate::protocol::pool::Pool;
use crate::protocol::sources::{SourceReport, fetch_from_all};
use crate::protocol::stripes::Striping;
use crate::protocol::transfer::{Progress, Received, Sink};
use crate::protocol::wire::{CatalogFile, Message, Offer, TensorRef};
use crate::service::StdoutSink;
use crate::store::Store;
use crate::ui::errors::describe;
use crate::ui::{Moved, Tally, Totals, Ui, count, events, human_bytes, mb_per_s, moved_note};
use sources::Served;

/// Files fetched at once, each on its own stream.
const FILES_IN_FLIGHT: usize = 4;

const EXAMPLES: &str = "Examples:
  tensor-iroh pull <TICKET> --list
  tensor-iroh pull <TICKET> --out ./weights                  # every served file, byte-identical
  tensor-iroh pull <TICKET> 'model.layers.1[0-5].*' --out ./w  # matching tensors per file
  tensor-iroh pull <TICKET> 'lm_head.*' --stdout > head.safetensors
  tensor-iroh pull <TICKET> <TICKET2> --out ./w              # each shared file from both at once";

/// Fetch files or tensors from a listener started with --serve
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct PullArgs {
    /// Ticket printed by `tensor-iroh listen --serve`; arguments after it that
    /// read as tickets are further sources, and a whole file several of them
    /// serve comes from all at once
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

impl PullArgs {
    /// `--list` and `--stdout` read one listener; several tickets with them
    /// are a usage error rather than a silent choice.
    pub fn check_usage(&self) -> Result<(), String> {
        let several =
            split_sources(&self.ticket, &self.patterns).is_ok_and(|(sources, _)| sources.len() > 1);
        match (several, self.list, self.stdout) {
            (true, true, _) => Err("--list takes one ticket".into()),
            (true, _, true) => Err("--stdout takes one ticket".into()),
            _ => Ok(()),
        }
    }
}

pub async fn run(args: PullArgs, ui: Ui) -> Result<()> {
    if args.list {
        return list_served(&args, &ui).await;
    }
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
    until_done_or_stopped("pulled", &ui, &tally, &reached, work).await
}

/// The listeners' addresses in ticket order, the patterns, and a pool to
/// reach them.
async fn prepare(args: &PullArgs) -> Result<(Vec<EndpointAddr>, Patterns, Arc<Pool>)> {
    let (addrs, patterns) = split_sources(&args.ticket, &args.patterns)?;
    let patterns = Patterns::new(&patterns)?;
    let pool = Arc::new(args.net.pool(&args.timeout).await?);
    Ok((addrs, patterns, pool))
}

async fn list_served(args: &PullArgs, ui: &Ui) -> Result<()> {
    let (addrs, patterns, pool) = prepare(args).await?;
    // `check_usage` let one ticket through.
    let addr = &addrs[0];
    let result = async {
        let catalog = client::catalog(&pool, addr).await?;
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
    let (addrs, patterns, pool) = prepare(args).await?;
    reached
        .set((addrs.iter().map(|addr| addr.id).collect(), pool.clone()))
        .ok();
    async {
        let served = Served::ask(&pool, &addrs, ui).await?;
        let (catalog, origins) = served.merged();
        let wanted = Wanted::select(&patterns, &catalog, &origins, &served, args.stdout)?;
        let outcomes = if args.stdout {
            // `check_usage` let one ticket through.
            let addr = &addrs[0];
            let outcome = fetch_to_stdout(&pool, addr, &wanted, args.compress.compress).await;
            if let Ok(pulled) = &outcome {
                tally.stored(pulled.received.offer.size, pulled.received.traffic);
            }
            vec![outcome]
        } else {
            let store = Store::open(&args.out.clone().unwrap_or_else(|| ".".into()), args.force)?;
            let how = How {
                compress: args.compress.compress,
                patience: args.timeout.duration(),
            };
            fetch_to_store(&pool, store, wanted, how, ui, tally).await
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
    /// About how many bytes will arrive, for progress; the file's size where
    /// it is wanted whole.
    bytes: u64,
    /// Where from, in ticket order: the first source serving the file, and
    /// for a whole file the others serving one of its name and size.
    sources: Vec<EndpointAddr>,
}

impl Wanted {
    /// Applies the patterns to the catalog; a pattern that matches nothing is an
    /// error before anything is fetched. Without patterns whole files are
    /// wanted, or, for one `merged` stream, every tensor of every file. Each
    /// file of `catalog` comes from its `origins` entry, or, wanted whole,
    /// from every source `served` has for it.
    fn select(
        patterns: &Patterns,
        catalog: &[CatalogFile],
        origins: &[EndpointAddr],
        served: &Served,
        merged: bool,
    ) -> Result<Vec<Wanted>> {
        if catalog.is_empty() {
            bail!("the listener serves no files");
        }
        if patterns.is_empty() && !merged {
            return Ok(catalog
                .iter()
                .zip(origins)
                .map(|(f, origin)| Wanted {
                    file: f.name.clone(),
                    tensors: None,
                    bytes: f.size,
                    sources: served.of_whole(f, origin),
                })
                .collect());
        }
        patterns.all_match(catalog)?;
        Ok(catalog
            .iter()
            .zip(origins)
            .filter_map(|(file, origin)| {
                let chosen: Vec<_> = file
                    .tensors
                    .iter()
                    .filter(|t| patterns.matches(&t.name))
                    .collect();
                // Every tensor of a file is the file, byte for byte: several
                // sources may serve it.
                let whole = chosen.len() == file.tensors.len() && !merged;
                let (sources, bytes) = if whole {
                    (served.of_whole(file, origin), file.size)
                } else {
                    (vec![origin.clone()], chosen.iter().map(|t| t.bytes).sum())
                };
                (!chosen.is_empty()).then(|| Wanted {
                    file: file.name.clone(),
                    tensors: Some(chosen.iter().map(|t| t.name.clone()).collect()),
                    bytes,
                    sources,
                })
            })
            .collect())
    }
}

/// A stored file and how long it took.
struct Pulled {
    received: Received,
    elapsed: Duration,
    /// The listener whose path the file's event shows: its first source.
    peer: EndpointId,
}

type Outcome = Result<Pulled>;

/// How each file is fetched.
#[derive(Clone, Copy)]
struct How {
    compress: Compress,
    /// How long to wait on a silent source of a file from several.
    patience: Duration,
}

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
    Ok(Pulled {
        received,
        elapsed: started.elapsed(),
        peer: addr.id,
    })
}

async fn fetch_to_store(
    pool: &Arc<Pool>,
    store: Arc<Store>,
    wanted: Vec<Wanted>,
    how: How,
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
        let (pool, store, slots, progress, ui) = (
            pool.clone(),
            store.clone(),
            slots.clone(),
            progress.child(),
            ui.clone(),
        );
        fetches.spawn(async move {
            let _slot = slots.acquire().await.expect("never closed");
            let _bar = ui.progress(&item.file, Some(item.bytes), &progress);
            fetch_one(&pool, &store, item, how, striping, &progress).await
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = fetches.join_next().await {
        let (name, sources, outcome) = joined.unwrap_or_else(|err| {
            let failed = Err(anyhow::anyhow!("a pull task failed: {err}"));
            (String::new(), Vec::new(), failed)
        });
        report_sources(ui, &name, &sources);
        if let Ok(pulled) = &outcome {
            tally.stored(pulled.received.offer.size, pulled.received.traffic);
            let path = if ui.json_mode() {
                PathReport::to_peer(pool, &pulled.peer).await
            } else {
                None
            };
            report_file(ui, &pulled.received, pulled.elapsed, path);
        }
        outcomes.push(outcome);
    }
    drop(bar);
    outcomes
}

/// Fetches one wanted file into the store: from all its sources at once, or
/// as a plain fetch from its one. Returns its name, what each of several
/// sources did (also when the file failed), and the outcome.
async fn fetch_one(
    pool: &Pool,
    store: &Arc<Store>,
    item: Wanted,
    how: How,
    striping: Striping,
    progress: &Progress,
) -> (String, Vec<SourceReport>, Outcome) {
    let started = Instant::now();
    let peer = item.sources[0].id;
    // Within one pull every fetch is live; two fetches of one file get
    // sibling partial files rather than taking over.
    let accept = async |offer: &Offer| {
        store
            .accept(offer, Arc::new(|| Box::pin(async { true })))
            .await
    };
    let context = format!("pulling {}", item.file);
    if item.sources.len() > 1 {
        let fetched = fetch_from_all(
            pool,
            &item.sources,
            &item.file,
            item.bytes,
            how.compress,
            how.patience,
            progress,
            accept,
        )
        .await;
        let (sources, received) = match fetched {
            Ok(fetched) => (fetched.sources, fetched.received),
            Err(err) => (Vec::new(), Err(err)),
        };
        let outcome = received.context(context).map(|received| Pulled {
            received,
            elapsed: started.elapsed(),
            peer,
        });
        return (item.file, sources, outcome);
    }
    let request = Message::Fetch {
        file: item.file.clone(),
        tensors: item.tensors,
        compress: how.compress,
    };
    let received = client::fetch(pool, &item.sources[0], &request, striping, progress, accept)
        .await
        .context(context);
    let outcome = received.map(|received| Pulled {
        received,
        elapsed: started.elapsed(),
        peer,
    });
    (item.file, Vec::new(), outcome)
}

/// What each source of a file from several did: a JSON event each, or a
/// warning for a source that failed or was not used.
fn report_sources(ui: &Ui, name: &str, sources: &[SourceReport]) {
    for source in sources {
        if ui.json_mode() {
            ui.event(events::Source {
                name: name.to_string(),
                peer: source.peer.to_string(),
                bytes: source.bytes,
                chunks: source.chunks,
                seconds: source.elapsed.as_secs_f64(),
                mb_per_s: mb_per_s(source.bytes, source.elapsed),
                error: source.error.as_ref().map(describe),
            });
        } else if let Some(error) = &source.error {
            ui.warn(format!(
                "{name}: source {} did not finish: {}",
                source.peer.fmt_short(),
                describe(error)
            ));
        }
    }
}

/// A stored file's line, or its JSON event with `path`, the path to the
/// listener as it stands.
fn report_file(ui: &Ui, received: &Received, elapsed: Duration, path: Option<PathReport>) {
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
