//! A listener's part in fan-outs: the fan-outs it takes part in, each with its
//! control stream to the sender, the parent it admits for that fan-out only, and
//! the children it passes the file on to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use iroh::{EndpointAddr, EndpointId};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::state::{FanoutState, Forwarding};
use super::{Frames, with_frames};
use crate::protocol::client;
use crate::protocol::endpoint::{Admitted, parse_endpoint_id, parse_ticket};
use crate::protocol::errors::{ErrorCode, code_of};
use crate::protocol::pool::Pool;
use crate::protocol::stream::{Frame, FrameReader, FrameWriter};
use crate::protocol::transfer::{Progress, Received, Segment, Source};
use crate::protocol::wire::{Message, Offer, parse_hash};

/// How often a receiver tells the sender what it holds: its sign of life
/// while its copy arrives from another receiver.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The fan-outs a listener takes part in.
pub struct FanoutNode {
    fanouts: Mutex<HashMap<u64, Arc<Fanout>>>,
    /// The parents admitted past `--allow`, each for its fan-out only.
    admitted: Arc<Admitted>,
    /// Dials the children, from the listener's endpoint.
    pool: OnceLock<Arc<Pool>>,
}

/// One fanned-out file as a receiver takes part in it.
pub struct Fanout {
    id: u64,
    pub offer: Offer,
    pub state: Arc<FanoutState>,
    attachment: Mutex<Attachment>,
    /// Held by the transfer receiving the file: a new parent's waits for the
    /// old one's to let go of the partial file.
    receiving: Arc<tokio::sync::Mutex<()>>,
    verdicts: mpsc::UnboundedSender<Result<Received, (ErrorCode, String)>>,
    /// Counts the bytes of the transfer under way, for the heartbeats.
    arriving: Mutex<Progress>,
}

struct Attachment {
    parent: Option<EndpointId>,
    /// Fires when the sender attaches this receiver to another parent.
    detached: CancellationToken,
}

/// What a parent's data stream holds while it delivers the file.
pub struct Delivery {
    pub fanout: Arc<Fanout>,
    pub detached: CancellationToken,
    _receiving: OwnedMutexGuard<()>,
}

impl FanoutNode {
    pub fn new(admitted: Arc<Admitted>) -> FanoutNode {
        FanoutNode {
            fanouts: Mutex::default(),
            admitted,
            pool: OnceLock::new(),
        }
    }

    /// Children are dialed from `pool`, the listener's endpoint.
    pub fn dial_with(&self, pool: Arc<Pool>) {
        self.pool.set(pool).ok();
    }

    fn fanouts(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Fanout>>> {
        self.fanouts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Serves a fan-out's control stream until the sender ends it: the hashes
    /// it announces, the parents and children it names, and this receiver's
    /// heartbeats and verdicts back.
    pub async fn serve_control(
        &self,
        id: u64,
        offer: Offer,
        writer: &mut FrameWriter,
        reader: &mut FrameReader,
    ) -> Result<()> {
        let (verdicts, mut verdicts_rx) = mpsc::unbounded_channel();
        let fanout = Arc::new(Fanout {
            id,
            state: FanoutState::new(&offer),
            offer,
            attachment: Mutex::new(Attachment {
                parent: None,
                detached: CancellationToken::new(),
            }),
            receiving: Arc::default(),
            verdicts,
            arriving: Mutex::default(),
        });
        if self.fanouts().insert(id, fanout.clone()).is_some() {
            bail!("fan-out {id} is already under way here");
        }
        writer.message(&Message::Ack).await?;
        let mut forwards = JoinSet::new();
        let served = with_frames(reader, async |frames: &mut Frames| {
            self.control_loop(&fanout, writer, frames, &mut verdicts_rx, &mut forwards)
                .await
        })
        .await;
        self.fanouts().remove(&id);
        fanout.state.close("the sender ended the fan-out");
        let parent = fanout.detach();
        if let Some(parent) = parent {
            self.admitted.release(&parent);
        }
        forwards.shutdown().await;
        served
    }

    async fn control_loop(
        &self,
        fanout: &Arc<Fanout>,
        writer: &mut FrameWriter,
        frames: &mut Frames,
        verdicts: &mut mpsc::UnboundedReceiver<Result<Received, (ErrorCode, String)>>,
        forwards: &mut JoinSet<Option<(EndpointId, String)>>,
    ) -> Result<()> {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                frame = frames.recv() => match frame.transpose()?.flatten() {
                    Some(Frame::Message(message)) => {
                        self.obey(fanout, message, writer, forwards).await?;
                    }
                    None => return Ok(()),
                    Some(_) => bail!("data on a fan-out's control stream"),
                },
                Some(verdict) = verdicts.recv() => {
                    writer.message(&verdict_message(verdict)).await?;
                }
                Some(Ok(Some((child, reason)))) = forwards.join_next(), if !forwards.is_empty() => {
                    let child = child.to_string();
                    writer.message(&Message::ForwardFailed { child, reason }).await?;
                }
                _ = heartbeat.tick() => {
                    let bytes = fanout.state.bytes_held();
                    let arriving = fanout.lock_arriving().get();
                    writer.message(&Message::Have { bytes, arriving }).await?;
                }
            }
        }
    }

    /// Carries out one message of the sender's.
    async fn obey(
        &self,
        fanout: &Arc<Fanout>,
        message: Message,
        writer: &mut FrameWriter,
        forwards: &mut JoinSet<Option<(EndpointId, String)>>,
    ) -> Result<()> {
        match message {
            Message::ChunkHashes { first, hashes } => {
                let hashes = hashes
                    .iter()
                    .map(|hash| parse_hash(hash))
                    .collect::<Result<Vec<_>, _>>()?;
                fanout.state.announce(first, &hashes)
            }
            Message::Attach { parent } => {
                let parent = parse_endpoint_id(&parent)?;
                self.attach(fanout, parent).await;
                writer.message(&Message::Ack).await
            }
            Message::ForwardTo { child } => {
                let child = parse_ticket(&child)?;
                let pool = self
                    .pool
                    .get()
                    .cloned()
                    .context("this listener cannot dial out")?;
                let fanout = fanout.clone();
                forwards.spawn(async move {
                    let err = forward(&pool, &fanout, &child).await.err()?;
                    // A stale pooled connection (the child restarted) would
                    // stall the next attempt too.
                    pool.discard(&child.id).await;
                    Some((child.id, format!("{err:#}")))
                });
                Ok(())
            }
            other => bail!(
                "unexpected {} message on a fan-out's control stream",
                other.kind()
            ),
        }
    }

    /// Makes `parent` the one peer that may deliver the fan-out's file, once the
    /// transfer from an earlier parent has let go of it.
    async fn attach(&self, fanout: &Fanout, parent: EndpointId) {
        let earlier = {
            let mut attachment = fanout.lock_attachment();
            attachment.detached.cancel();
            attachment.detached = CancellationToken::new();
            attachment.parent.replace(parent)
        };
        drop(fanout.receiving.lock().await);
        self.admitted.admit(parent);
        if let Some(earlier) = earlier {
            self.admitted.release(&earlier);
        }
    }

    /// The fan-out a data stream from `peer` delivers, if `peer` is its parent.
    pub fn delivery(&self, id: u64, peer: &EndpointId) -> Result<Delivery> {
        let fanout = self
            .fanouts()
            .get(&id)
            .cloned()
            .ok_or_else(|| anyhow!("no fan-out {id} is under way here"))?;
        let detached = {
            let attachment = fanout.lock_attachment();
            if attachment.parent.as_ref() != Some(peer) {
                bail!("this peer is not the fan-out's parent");
            }
            attachment.detached.clone()
        };
        let receiving = fanout
            .receiving
            .clone()
            .try_lock_owned()
            .map_err(|_| anyhow!("the fan-out's file is already arriving from this parent"))?;
        Ok(Delivery {
            fanout,
            detached,
            _receiving: receiving,
        })
    }
}

impl Fanout {
    fn lock_attachment(&self) -> std::sync::MutexGuard<'_, Attachment> {
        self.attachment
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_arriving(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.arriving
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The transfer now under way counts its bytes in `progress`.
    pub fn arriving_in(&self, progress: &Progress) {
        *self.lock_arriving() = progress.clone();
    }

    fn detach(&self) -> Option<EndpointId> {
        let mut attachment = self.lock_attachment();
        attachment.detached.cancel();
        attachment.parent.take()
    }

    /// Whether `offer` is the file the sender announced: a parent can deliver
    /// nothing else under the fan-out.
    pub fn check_offer(&self, offer: &Offer) -> Result<()> {
        let announced = &self.offer;
        if offer.name != announced.name
            || offer.size != announced.size
            || offer.identity != announced.identity
            || offer.format != announced.format
        {
            bail!("the parent offered a file other than the one the sender announced");
        }
        Ok(())
    }

    /// Tells the sender how the delivery of the file ended.
    pub fn report(&self, outcome: &Result<Received>) {
        let verdict = match outcome {
            Ok(received) => Ok(received.clone()),
            Err(err) => Err((code_of(err), format!("{err:#}"))),
        };
        self.verdicts.send(verdict).ok();
    }
}

fn verdict_message(verdict: Result<Received, (ErrorCode, String)>) -> Message {
    match verdict {
        Ok(received) => Message::FanoutStored {
            name: received.stored_as,
            hash: received.hash,
            data_bytes: received.traffic.data_bytes,
            wire_bytes: received.traffic.wire_bytes,
        },
        Err((code, reason)) => Message::Failed { code, reason },
    }
}

/// Passes the fanned-out file on to `child` as its chunks are checked here.
async fn forward(pool: &Pool, fanout: &Fanout, child: &EndpointAddr) -> Result<()> {
    if fanout.offer.eager {
        // A file of one chunk is sent from memory in one go: wait for all of it.
        fanout.state.whole().await?;
    }
    let forwarded = Segment::Converted(Arc::new(Forwarding(fanout.state.clone())));
    let source = Source::with_offer(fanout.offer.clone(), vec![forwarded]);
    client::deliver(pool, child, fanout.id, &source, &Progress::default()).await?;
    Ok(())
}
