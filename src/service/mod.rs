//! What a listener does with its connections: takes uploads into the store (or
//! stdout, or nowhere for bench traffic), serves its catalog, and reports each
//! outcome as an [`Event`] for the command to show. `sinks` holds where
//! uploads go other than the store: stdout, and nowhere for bench data;
//! serving a pull from several sources (hash lists, chunk sets) is in `chunks`.

mod chunks;
mod sinks;

use sinks::DiscardSink;
pub use sinks::StdoutSink;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use iroh::endpoint::Connection;
use iroh::{Endpoint, EndpointId};
use tokio::sync::{RwLock, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::Catalog;
use crate::escape::printable;
use crate::protocol::coding::{Coding, Compress};
use crate::protocol::endpoint::Admitted;
use crate::protocol::errors::{ErrorCode, code_of};
use crate::protocol::fanout::{Delivery, FanoutNode, FanoutSink};
use crate::protocol::governor::Governor;
use crate::protocol::liveness::Liveness;
use crate::protocol::pool::{Pool, peer_answers};
use crate::protocol::stream::{FrameReader, FrameWriter};
use crate::protocol::stripes::{StripeLink, StripeRegistry, StripeStream, link_stripes};
use crate::protocol::transfer::{Progress, Received, Sink, receive_file, send_file};
use crate::protocol::wire::{Message, Offer, PROTOCOL_VERSION, WireError};
use crate::protocol::{CODE_SHUTDOWN, HELLO_ALPN};
use crate::store::{AliveProbe, Store};
use crate::ui::errors::describe;

/// How long a listener waits on a silent peer in the middle of a request.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fan-out's receiver waits to reach the receiver it passes the file on to.
const DIAL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long in-flight requests get to wind down after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a fan-out's transfer from a replaced parent gets to stop by itself,
/// keeping its checked chunks for the new parent's.
const DETACH_GRACE: Duration = Duration::from_secs(2);
/// Extra streams of striped transfers (uploads and pulls) the listener takes
/// at once: three files' worth on a short link, one and a bit on a long one.
/// Each holds a few MiB of buffers.
const EXTRA_STREAMS: usize = 9;

#[derive(Debug)]
pub enum Event {
    /// An upload was accepted; `progress` counts its bytes until it ends with
    /// `Received` or `ReceiveFailed` of the same `upload`.
    Receiving {
        upload: u64,
        name: String,
        size: u64,
        progress: Progress,
    },
    Received {
        upload: u64,
        peer: EndpointId,
        received: Received,
        elapsed: Duration,
    },
    ReceiveFailed {
        upload: u64,
        peer: EndpointId,
        error: String,
    },
    Served {
        peer: EndpointId,
        name: String,
        bytes: u64,
        elapsed: Duration,
    },
    ServeFailed {
        peer: EndpointId,
        error: String,
    },
    /// A peer not on the `--allow` list tried to connect.
    Refused {
        peer: EndpointId,
    },
    /// A file failed after part of it went to stdout, which now holds an
    /// incomplete file; the listener must stop and say so.
    StdoutSpoiled,
    /// A sender finished: every file it sent was stored.
    SendComplete {
        peer: EndpointId,
        files: u64,
    },
}

/// Where uploads go.
pub enum Uploads {
    Store(Arc<Store>),
    Stdout,
    Refused,
}

pub struct Service {
    pub uploads: Uploads,
    pub catalog: Option<Catalog>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Bytes received, for a progress display.
    pub progress: Progress,
    /// Numbers uploads, to tie an upload's events together.
    uploads_seen: AtomicU64,
    /// Set once an upload to stdout failed after part of it was written there.
    stdout_spoiled: Arc<AtomicBool>,
    /// One upload at a time writes to stdout.
    stdout_lock: Arc<tokio::sync::Mutex<()>>,
    /// The listener's budget of extra streams for striped transfers.
    extra_streams: Arc<Semaphore>,
    /// Decides for the pulls that ask `--compress auto` whether coding pays.
    governor: Arc<Governor>,
    /// `--allow`: the peers that may make any request; others may only
    /// deliver the file of a fan-out whose parent they are.
    allowed: Option<HashSet<EndpointId>>,
    fanouts: FanoutNode,
}

/// What the streams of one connection share.
#[derive(Clone, Copy)]
struct Streams<'a> {
    hello_only: bool,
    /// Held (read) while an upload is reported; `done` waits for them (write).
    uploads: &'a RwLock<()>,
    stripes: &'a Arc<StripeRegistry>,
}

impl Service {
    /// `admitted` is where fan-outs admit their parents past `allowed`.
    pub fn new(
        uploads: Uploads,
        catalog: Option<Catalog>,
        events: mpsc::UnboundedSender<Event>,
        allowed: Option<HashSet<EndpointId>>,
        admitted: Arc<Admitted>,
    ) -> Arc<Service> {
        Arc::new(Service {
            uploads,
            catalog,
            events,
            progress: Progress::default(),
            uploads_seen: AtomicU64::new(0),
            stdout_spoiled: Arc::default(),
            stdout_lock: Arc::new(tokio::sync::Mutex::new(())),
            extra_streams: Arc::new(Semaphore::new(EXTRA_STREAMS)),
            governor: Arc::default(),
            allowed,
            fanouts: FanoutNode::new(admitted),
        })
    }

    /// Accepts connections until `shutdown` fires, then closes them all and
    /// gives in-flight requests a moment to keep their partial files.
    pub async fn run(self: Arc<Self>, endpoint: Endpoint, shutdown: CancellationToken) {
        self.fanouts
            .dial_with(Arc::new(Pool::new(endpoint.clone(), DIAL_TIMEOUT)));
        let tasks = TaskTracker::new();
        loop {
            let incoming = tokio::select! {
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let service = self.clone();
            let shutdown = shutdown.clone();
            let tracker = tasks.clone();
            tasks.spawn(async move {
                let connection = match incoming.await {
                    Ok(connection) => connection,
                    Err(err) => {
                        tracing::debug!(
                            "incoming connection failed: {}",
                            printable(&format!("{err:#}"))
                        );
                        return;
                    }
                };
                service
                    .serve_connection(connection, shutdown, tracker)
                    .await;
            });
        }
        tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some requests did not end within {SHUTDOWN_GRACE:?}");
        }
        endpoint.close().await;
    }

    async fn serve_connection(
        self: Arc<Self>,
        connection: Connection,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let peer = connection.remote_id();
        let hello_only = connection.alpn() == HELLO_ALPN;
        let uploads = Arc::new(RwLock::new(()));
        let stripes = StripeRegistry::new(self.extra_streams.clone());
        loop {
            let (send, recv) = tokio::select! {
                streams = connection.accept_bi() => match streams {
                    Ok(streams) => streams,
                    Err(err) => {
                        tracing::debug!(
                            peer = %peer.fmt_short(),
                            "connection ended: {}",
                            printable(&format!("{err:#}"))
                        );
                        return;
                    }
                },
                _ = shutdown.cancelled() => {
                    connection.close(CODE_SHUTDOWN.into(), b"listener shutting down");
                    return;
                }
            };
            let service = self.clone();
            let connection = connection.clone();
            let uploads = uploads.clone();
            let stripes = stripes.clone();
            tasks.spawn(async move {
                let liveness = Liveness::new(connection.clone(), STALL_TIMEOUT);
                let writer = FrameWriter::new(send, liveness.clone());
                let reader = FrameReader::new(recv, liveness);
                let streams = Streams {
                    hello_only,
                    uploads: &uploads,
                    stripes: &stripes,
                };
                if let Err(err) = service
                    .serve_request(&connection, streams, writer, reader)
                    .await
                {
                    tracing::debug!(
                        peer = %peer.fmt_short(),
                        "request failed: {}",
                        printable(&format!("{err:#}"))
                    );
                }
            });
        }
    }

    async fn serve_request(
        &self,
        connection: &Connection,
        streams: Streams<'_>,
        mut writer: FrameWriter,
        mut reader: FrameReader,
    ) -> Result<()> {
        let peer = connection.remote_id();
        let request = match reader.message().await {
            Ok(request) => request,
            Err(err) => {
                // A request that breaks a bound (too many tensors, say) is
                // answered, so the peer learns which.
                if err.is::<WireError>() {
                    let refused = Message::Refused {
                        code: code_of(&err),
                        reason: format!("{err:#}"),
                    };
                    writer.message(&refused).await.ok();
                    writer.finish();
                }
                return Err(err);
            }
        };
        if streams.hello_only && !matches!(request, Message::Hello { .. }) {
            bail!("request on the version-neutral protocol");
        }
        let admitted_only = self
            .allowed
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(&peer));
        let fan_out_request = matches!(
            request,
            Message::Forwarded { .. } | Message::Stripe { .. } | Message::Hello { .. }
        );
        if admitted_only && !fan_out_request {
            refuse(&mut writer, ErrorCode::NotAllowed, "not on the allow list").await;
            return Ok(());
        }
        if let Message::Stripe { transfer, stripe } = request {
            let stream = StripeStream {
                stripe,
                writer,
                reader,
            };
            return streams.stripes.deliver(transfer, stream);
        }
        let (writer, reader) = (&mut writer, &mut reader);
        let uploads = streams.uploads;
        match request {
            Message::Hello { .. } => {
                writer
                    .message(&Message::Hello {
                        version: PROTOCOL_VERSION,
                    })
                    .await?;
                writer.finish();
            }
            Message::Upload => {
                self.receive_upload(connection, streams, writer, reader, None)
                    .await;
            }
            Message::Fanout { fanout, offer } => {
                if !matches!(self.uploads, Uploads::Store(_)) {
                    let reason = "this listener keeps no copy it could pass on (it has no --out)";
                    refuse(writer, ErrorCode::NoUploads, reason).await;
                    return Ok(());
                }
                self.fanouts
                    .serve_control(fanout, offer, writer, reader)
                    .await?;
            }
            Message::Forwarded { fanout } => match self.fanouts.delivery(fanout, &peer) {
                Ok(delivery) => {
                    self.receive_upload(connection, streams, writer, reader, Some(delivery))
                        .await;
                }
                Err(err) => refuse(writer, ErrorCode::NotAllowed, &format!("{err:#}")).await,
            },
            Message::RawBench { size } => {
                reader.discard(size).await?;
                writer.message(&Message::Ack).await?;
                writer.finish();
            }
            Message::Done { files } => {
                // The sender says `done` once every file was stored, but an upload
                // may still be reporting: wait for it, so every file is reported
                // before its send completes (and before a --once listener exits).
                let _reported = uploads.write().await;
                writer.message(&Message::Ack).await?;
                // A --once listener closes the connection on the event below;
                // the sender must have its answer first.
                writer.finish_and_flush().await;
                self.events.send(Event::SendComplete { peer, files }).ok();
            }
            Message::Catalog => {
                let reply = match &self.catalog {
                    Some(catalog) => Message::CatalogReply {
                        files: catalog.entries(),
                    },
                    None => Message::Refused {
                        code: ErrorCode::NothingServed,
                        reason: NOTHING_SERVED.into(),
                    },
                };
                writer.message(&reply).await?;
                writer.finish();
            }
            Message::Fetch { .. } | Message::FetchMerged { .. } => {
                let link = StripeLink::Listener {
                    registry: streams.stripes,
                    stripes: link_stripes(connection),
                };
                self.serve_fetch(peer, &request, link, writer, reader)
                    .await?
            }
            Message::FetchHashes { file } => self.serve_hashes(peer, &file, writer).await?,
            Message::FetchChunks { .. } => self.serve_chunks(peer, &request, writer).await?,
            other => bail!("unexpected request {other:?}"),
        }
        Ok(())
    }

    /// Receives a file a peer uploads, or delivers as the parent of a fan-out,
    /// and reports it.
    async fn receive_upload(
        &self,
        connection: &Connection,
        streams: Streams<'_>,
        writer: &mut FrameWriter,
        reader: &mut FrameReader,
        delivery: Option<Delivery>,
    ) {
        let peer = connection.remote_id();
        // Held until the file is reported, so `done` on this connection
        // waits for it (see `Message::Done`).
        let _reporting = streams.uploads.read().await;
        let upload = self.uploads_seen.fetch_add(1, Ordering::Relaxed);
        let progress = self.progress.child();
        if let Some(delivery) = &delivery {
            delivery.fanout.arriving_in(&progress);
        }
        let started = Instant::now();
        let receiving = receive_file(
            writer,
            reader,
            StripeLink::Listener {
                registry: streams.stripes,
                stripes: link_stripes(connection),
            },
            &progress,
            async |offer: &Offer| {
                let mut sink = self.sink_for(offer, connection).await?;
                if let Some(delivery) = &delivery {
                    delivery.fanout.check_offer(offer)?;
                    let state = delivery.fanout.state.clone();
                    sink = Box::new(FanoutSink::new(sink, state, delivery.detached.clone()));
                }
                if !offer.discard {
                    self.events
                        .send(Event::Receiving {
                            upload,
                            name: offer.name.clone(),
                            size: offer.size,
                            progress: progress.clone(),
                        })
                        .ok();
                }
                Ok(sink)
            },
        );
        let result = match &delivery {
            None => receiving.await,
            Some(delivery) => {
                // A transfer whose parent was replaced stops when its chunks
                // stop (keeping them); one waiting elsewhere is dropped.
                let replaced = async {
                    delivery.detached.cancelled().await;
                    tokio::time::sleep(DETACH_GRACE).await;
                };
                tokio::select! {
                    result = receiving => result,
                    _ = replaced => Err(anyhow::anyhow!("the sender moved this fan-out to another parent")),
                }
            }
        };
        if let Some(delivery) = &delivery
            && !delivery.detached.is_cancelled()
        {
            delivery.fanout.report(&result);
        }
        let event = match result {
            Ok(received) => Event::Received {
                upload,
                peer,
                received,
                elapsed: started.elapsed(),
            },
            Err(err) => Event::ReceiveFailed {
                upload,
                peer,
                error: describe(&err),
            },
        };
        self.events.send(event).ok();
        if self.stdout_spoiled.load(Ordering::Relaxed) {
            self.events.send(Event::StdoutSpoiled).ok();
        }
    }

    /// How a pull that asked for `compress` is coded.
    fn coding(&self, compress: Compress) -> Coding {
        Coding::new(compress, self.governor.clone())
    }

    async fn serve_fetch(
        &self,
        peer: EndpointId,
        request: &Message,
        link: StripeLink<'_>,
        writer: &mut FrameWriter,
        reader: &mut FrameReader,
    ) -> Result<()> {
        let started = Instant::now();
        let source = match (&self.catalog, request) {
            (None, _) => Err(ErrorCode::NothingServed.error(NOTHING_SERVED).into()),
            (
                Some(catalog),
                Message::Fetch {
                    file,
                    tensors,
                    compress,
                },
            ) => catalog
                .source(file, tensors.as_deref())
                .map(|source| source.coded_by(self.coding(*compress))),
            (Some(catalog), Message::FetchMerged { tensors, compress }) => catalog
                .merged(tensors)
                .map(|source| source.coded_by(self.coding(*compress))),
            _ => unreachable!("serve_fetch is called for fetch requests"),
        };
        let source = match source {
            Ok(source) => source,
            Err(err) => {
                writer
                    .message(&Message::Refused {
                        code: code_of(&err),
                        reason: format!("{err:#}"),
                    })
                    .await?;
                writer.finish();
                self.events
                    .send(Event::ServeFailed {
                        peer,
                        error: describe(&err),
                    })
                    .ok();
                return Ok(());
            }
        };
        let progress = Progress::default();
        let event = match send_file(writer, reader, None, &source, link, &progress).await {
            Ok(_) => Event::Served {
                peer,
                name: source.offer.name.clone(),
                bytes: source.offer.size,
                elapsed: started.elapsed(),
            },
            Err(err) => Event::ServeFailed {
                peer,
                error: describe(&err.context(source.offer.name.clone())),
            },
        };
        self.events.send(event).ok();
        Ok(())
    }

    async fn sink_for(&self, offer: &Offer, connection: &Connection) -> Result<Box<dyn Sink>> {
        if offer.discard {
            return Ok(Box::new(DiscardSink::default()));
        }
        match &self.uploads {
            Uploads::Store(store) => {
                let connection = connection.clone();
                let alive: AliveProbe = Arc::new(move || {
                    let connection = connection.clone();
                    Box::pin(async move { peer_answers(&connection).await })
                });
                store.accept(offer, alive).await
            }
            Uploads::Stdout => {
                // Files joined on one stream would read as the first alone.
                if offer.files_in_send > 1 {
                    bail!(ErrorCode::NoUploads.error(format!(
                        "this listener writes to stdout and takes a send of one file; this send has {} (send them one by one, or listen with --out DIR)",
                        offer.files_in_send
                    )));
                }
                let guard = self.stdout_lock.clone().lock_owned().await;
                Ok(Box::new(StdoutSink::new(
                    guard,
                    self.stdout_spoiled.clone(),
                )))
            }
            Uploads::Refused => bail!(ErrorCode::NoUploads.error(
                "this listener only serves files; it takes uploads when started with --out DIR"
            )),
        }
    }
}

/// Answers a request with the reason it is refused.
async fn refuse(writer: &mut FrameWriter, code: ErrorCode, reason: &str) {
    let reason = reason.to_string();
    writer
        .message(&Message::Refused { code, reason })
        .await
        .ok();
    writer.finish();
}

const NOTHING_SERVED: &str = "this listener serves no files (start it with --serve PATH)";
