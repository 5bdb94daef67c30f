//! `tensor-iroh listen`: print a ticket, take files from senders, serve files to pullers.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use iroh::EndpointId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{NetArgs, interrupted};
use crate::catalog::Catalog;
use crate::escape::printable;
use crate::protocol::endpoint::{self, Admitted, AllowList, EndpointOptions};
use crate::service::{Event, STALL_TIMEOUT, Service, Uploads};
use crate::store::Store;
use crate::ui::{Ui, count, events, human_bytes, mb_per_s};

const EXAMPLES: &str = "Examples:
  tensor-iroh listen --out ./incoming
  tensor-iroh listen --once --stdout > weights.safetensors
  tensor-iroh listen --serve ./checkpoint --key ~/.tensor-iroh.key --allow <ENDPOINT_ID>";

/// Print a ticket and receive files from `send` (and serve files to `pull`)
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ListenArgs {
    /// Directory for received files [default: the current directory; with --serve, uploads are refused unless given]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write received files' bytes to stdout instead of a directory (the ticket goes to stderr)
    #[arg(long, conflicts_with_all = ["out", "json"])]
    pub stdout: bool,
    /// Exit after the first sender's files are all received
    #[arg(long)]
    pub once: bool,
    /// Overwrite files of the same name instead of choosing a new name
    #[arg(long)]
    pub force: bool,
    /// Serve these .npy/.safetensors files, or the ones in these directories, to `pull`
    #[arg(long, value_name = "PATH")]
    pub serve: Vec<PathBuf>,
    /// Admit only this endpoint id (repeatable); anyone with the ticket otherwise
    #[arg(long, value_name = "ENDPOINT_ID", value_parser = endpoint::parse_endpoint_id)]
    pub allow: Vec<EndpointId>,
    /// Local UDP address to bind, e.g. 0.0.0.0:4433 [default: any; with a lasting key
    /// (--key, IROH_SECRET) a port derived from it, so the ticket survives restarts]
    #[arg(long, value_name = "IP:PORT")]
    pub bind: Option<SocketAddr>,
    /// JSON lines on stdout: `listening` first, then one object per file
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

pub async fn run(args: ListenArgs, ui: Ui) -> Result<()> {
    let catalog = if args.serve.is_empty() {
        None
    } else {
        Some(Catalog::open(&args.serve)?)
    };
    let uploads = if args.stdout {
        Uploads::Stdout
    } else if let Some(out) = args
        .out
        .clone()
        .or_else(|| catalog.is_none().then(|| PathBuf::from(".")))
    {
        let store = Store::open(&out, args.force)?;
        let removed = store.remove_stale_partials();
        if removed > 0 {
            ui.say(format!(
                "removed {} from {}",
                count(removed as u64, "stale partial file"),
                store.dir().display()
            ));
        }
        Uploads::Store(store)
    } else {
        Uploads::Refused
    };

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let admitted = Arc::new(Admitted::default());
    let allowed = (!args.allow.is_empty()).then(|| args.allow.iter().copied().collect());
    let allow = allowed.clone().map(|ids| {
        let events = events_tx.clone();
        AllowList {
            ids,
            admitted: admitted.clone(),
            on_refused: Arc::new(move |peer| {
                events.send(Event::Refused { peer }).ok();
            }),
        }
    });
    let key_source = args.net.key_source();
    let port_from_key = key_source.is_lasting();
    let endpoint = endpoint::bind(EndpointOptions {
        secret_key: endpoint::secret_key(key_source)?,
        relay: args.net.relay.clone(),
        transport: args.net.transport(STALL_TIMEOUT),
        bind: args.bind,
        port_from_key,
        accept: true,
        allow,
    })
    .await?;
    if port_from_key && args.bind.is_none() && !endpoint::holds_key_port(&endpoint) {
        ui.warn(format!(
            "UDP port {} (from this key) is taken; the ticket differs from earlier runs",
            endpoint::port_for(&endpoint.id())
        ));
    }
    let ticket = endpoint::ticket(&endpoint, &args.net.relay).await?;
    if args.json {
        ui.event(events::Listening {
            ticket: ticket.to_string(),
            endpoint_id: endpoint.id().to_string(),
        });
    } else if args.stdout {
        crate::ui::to_stderr(&ticket.to_string());
    } else {
        ui.out(ticket.to_string());
    }
    describe(&ui, &endpoint.id(), &uploads, catalog.as_ref(), &args.allow);

    let service = Service::new(uploads, catalog, events_tx, allowed, admitted);
    let shutdown = CancellationToken::new();
    let bar = ui.progress("receiving", None, &service.progress);
    let serving = tokio::spawn(service.run(endpoint, shutdown.clone()));

    let mut file_bars = HashMap::new();
    // Uploads under way: what a shutdown leaves as partial files.
    let mut receiving = HashSet::new();
    let mut outcome = Ok(());
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let complete = matches!(event, Event::SendComplete { .. });
                match &event {
                    Event::Receiving { upload, name, size, progress } => {
                        receiving.insert(*upload);
                        if let Some(bar) = ui.progress(name, Some(*size), progress) {
                            file_bars.insert(*upload, bar);
                        }
                    }
                    Event::Received { upload, .. } | Event::ReceiveFailed { upload, .. } => {
                        receiving.remove(upload);
                        file_bars.remove(upload);
                    }
                    Event::StdoutSpoiled => {
                        outcome = Err(anyhow!(
                            "a file failed after part of it was written to stdout: what stdout holds is incomplete"
                        ));
                        break;
                    }
                    _ => {}
                }
                report(&ui, event);
                if args.once && complete {
                    break;
                }
            }
            _ = interrupted() => {
                if receiving.is_empty() {
                    ui.say("shutting down");
                } else {
                    ui.say(format!(
                        "shutting down; {} kept for a rerun of the same send",
                        count(receiving.len() as u64, "partial file")
                    ));
                }
                break;
            }
        }
    }
    drop(file_bars);
    drop(bar);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .ok();
    outcome
}

fn describe(
    ui: &Ui,
    id: &EndpointId,
    uploads: &Uploads,
    catalog: Option<&Catalog>,
    allow: &[EndpointId],
) {
    ui.say(format!("listening as {}", ui.bold(id)));
    match uploads {
        Uploads::Store(store) => ui.say(format!("receiving into {}", store.dir().display())),
        Uploads::Stdout => ui.say("receiving to stdout"),
        Uploads::Refused => ui.say("not taking uploads (no --out)"),
    }
    if let Some(catalog) = catalog {
        let tensors: usize = catalog.files().iter().map(|f| f.tensors.len()).sum();
        ui.say(format!(
            "serving {}, {}",
            count(catalog.files().len() as u64, "file"),
            count(tensors as u64, "tensor")
        ));
    }
    if allow.is_empty() {
        ui.say("anyone holding the ticket may connect (use --allow to restrict)");
    } else {
        ui.say(format!("admitting only {} endpoint(s)", allow.len()));
    }
    if !matches!(uploads, Uploads::Refused) {
        ui.say("send with: tensor-iroh send <TICKET> <FILE>...");
    }
    if catalog.is_some() {
        ui.say("pull with: tensor-iroh pull <TICKET> [PATTERN]...");
    }
}

fn report(ui: &Ui, event: Event) {
    match event {
        Event::Receiving { .. } => {}
        Event::Received {
            peer,
            received,
            elapsed,
            ..
        } => {
            let offer = &received.offer;
            if offer.discard {
                return;
            }
            if ui.json_mode() {
                ui.event(events::Received {
                    name: received.stored_as.clone(),
                    sent_name: offer.name.clone(),
                    tensors: offer.tensors,
                    bytes: offer.size,
                    received_bytes: received.traffic.wire_bytes,
                    compression: received.traffic.compression(),
                    blake3: received.hash.clone(),
                    replaced: received.replaced,
                    peer: peer.to_string(),
                    seconds: elapsed.as_secs_f64(),
                    mb_per_s: mb_per_s(received.traffic.data_bytes, elapsed),
                });
            } else {
                let renamed = if received.replaced {
                    " (replacing the file stored under that name)".to_string()
                } else if received.stored_as != offer.name && received.stored_as != "<stdout>" {
                    format!(
                        " (as {}, the name was taken)",
                        ui.bold(printable(&received.stored_as))
                    )
                } else {
                    String::new()
                };
                ui.say(format!(
                    "{} {}{renamed}: {}, {} from {} at {:.1} MB/s",
                    ui.green("received"),
                    ui.bold(printable(&offer.name)),
                    count(offer.tensors, "tensor"),
                    human_bytes(offer.size),
                    peer.fmt_short(),
                    mb_per_s(received.traffic.data_bytes, elapsed),
                ));
            }
        }
        Event::ReceiveFailed { peer, error, .. } => {
            if ui.json_mode() {
                ui.event(events::ReceiveFailed {
                    peer: peer.to_string(),
                    error: error.clone(),
                });
            }
            ui.warn(format!("from {}: {error}", peer.fmt_short()));
        }
        Event::Served {
            peer,
            name,
            bytes,
            elapsed,
        } => {
            if ui.json_mode() {
                ui.event(events::Served {
                    name,
                    bytes,
                    peer: peer.to_string(),
                    seconds: elapsed.as_secs_f64(),
                    mb_per_s: mb_per_s(bytes, elapsed),
                });
            } else {
                ui.say(format!(
                    "{} {} ({}) to {} at {:.1} MB/s",
                    ui.green("served"),
                    ui.bold(&name),
                    human_bytes(bytes),
                    peer.fmt_short(),
                    mb_per_s(bytes, elapsed)
                ));
            }
        }
        Event::ServeFailed { peer, error } => {
            if ui.json_mode() {
                ui.event(events::ServeFailed {
                    peer: peer.to_string(),
                    error: error.clone(),
                });
            }
            ui.warn(format!("serving {}: {error}", peer.fmt_short()));
        }
        Event::Refused { peer } => {
            if ui.json_mode() {
                ui.event(events::Refused {
                    peer: peer.to_string(),
                });
            }
            ui.warn(format!("refused {peer}: not on the --allow list"));
        }
        Event::StdoutSpoiled => {}
        Event::SendComplete { peer, files } => {
            if ui.json_mode() {
                ui.event(events::SendComplete {
                    peer: peer.to_string(),
                    files,
                });
            }
        }
    }
}
