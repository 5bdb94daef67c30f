//! The sender's side of a fan-out: one file to several listeners, uploaded once.
//!
//! The sender opens a control stream to every receiver, announces the file and
//! the hash of each chunk as it reads them, and arranges the receivers in a
//! chain: it uploads to the first, and each receiver passes every chunk it has
//! checked on to the next. A receiver that dies hands its children to the
//! nearest live receiver above it; one whose copy fails is attached to the
//! sender itself. The send is done when every receiver reported its copy
//! stored, or failed for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use iroh::{EndpointAddr, EndpointId};
use iroh_tickets::endpoint::EndpointTicket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Frames, with_frames};
use crate::protocol::client;
use crate::protocol::endpoint::parse_endpoint_id;
use crate::protocol::errors::PeerError;
use crate::protocol::pool::Pool;
use crate::protocol::stream::{Frame, FrameReader, FrameWriter};
use crate::protocol::stripes::Striping;
use crate::protocol::transfer::{Progress, Sent, Source, Traffic};
use crate::protocol::wire::{Hash, Message, hash_hex};

/// How often an inbound transfer of one receiver may fail before it counts
/// as failed: each failure attaches it straight to the sender.
const ATTEMPTS: u32 = 3;
/// How long a receiver may send nothing (not even its heartbeat, once a
/// second) before it counts as gone: half the stall timeout, at least 5 s. A
/// receiver killed outright is noticed this soon rather than after the whole
/// stall timeout and QUIC's own idle timeout.
fn heartbeat_silence(stall: Duration) -> Duration {
    (stall / 2).max(Duration::from_secs(5))
}

/// How often the sender looks for receivers that make no progress.
const WATCHDOG: Duration = Duration::from_secs(1);
/// Chunk hashes per announcement.
const HASHES_PER_MESSAGE: usize = 16;

/// Sends `source` to every listener in `targets` through a fan-out; one outcome
/// per target, in order. `held` counts the bytes the receivers hold, for a
/// display; `sent` the bytes this side sent itself, and their wire bytes.
pub async fn distribute(
    pool: &Arc<Pool>,
    targets: &[EndpointAddr],
    source: &Source,
    held: &Progress,
    sent: &Progress,
) -> Vec<Result<Sent>> {
    let fanout = fanout_id();
    let opened = futures_util::future::join_all(
        targets
            .iter()
            .map(|addr| open_control(pool, addr, fanout, source)),
    )
    .await;
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut members = Vec::new();
    let mut outcomes: Vec<Option<Result<Sent>>> = Vec::new();
    let mut direct = Vec::new();
    for (index, (addr, opened)) in targets.iter().zip(opened).enumerate() {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let mut takes_part = false;
        match opened {
            Ok(Opened::Control(streams)) => {
                let (writer, reader) = *streams;
                let events = events_tx.clone();
                let silence = heartbeat_silence(pool.timeout);
                tokio::spawn(member(index, writer, reader, commands_rx, events, silence));
                takes_part = true;
                outcomes.push(None);
            }
            Ok(Opened::Refused(why)) => {
                tracing::debug!(peer = %addr.id.fmt_short(), "no fan-out, a direct upload: {why}");
                direct.push(index);
                outcomes.push(None);
            }
            Err(err) => outcomes.push(Some(Err(err))),
        }
        members.push(Member {
            addr: addr.clone(),
            commands,
            parent: None,
            attempts: 0,
            held: 0,
            arriving: 0,
            progressed: Instant::now(),
            gone: !takes_part,
        });
    }
    let mut distributing = Distributing {
        pool,
        source,
        fanout,
        members,
        outcomes,
        uploads: JoinSet::new(),
        sent: sent.clone(),
        held,
    };
    for index in direct {
        distributing.upload_directly(index, events_tx.clone());
    }
    distributing.run(events, events_tx).await;
    distributing.finish()
}

/// A fan-out's number: it only has to differ from the other fan-outs its
/// receivers take part in at the same time.
fn fanout_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut seed = blake3::Hasher::new();
    seed.update(&std::process::id().to_le_bytes());
    seed.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        seed.update(&now.as_nanos().to_le_bytes());
    }
    let hash = seed.finalize();
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// A receiver's answer to a fan-out.
enum Opened {
    /// It takes part: its control stream.
    Control(Box<(FrameWriter, FrameReader)>),
    /// It will not (it keeps no copy to pass on, or predates fan-outs): it
    /// gets the file by a plain upload.
    Refused(String),
}

/// Opens the control stream to `addr` and announces the fan-out on it.
async fn open_control(
    pool: &Pool,
    addr: &EndpointAddr,
    fanout: u64,
    source: &Source,
) -> Result<Opened> {
    let (mut writer, mut reader) = pool.open(addr).await?;
    writer
        .message(&Message::Fanout {
            fanout,
            offer: source.offer.clone(),
        })
        .await?;
    match reader.message().await? {
        Message::Ack => Ok(Opened::Control(Box::new((writer, reader)))),
        Message::Refused { reason, .. } => Ok(Opened::Refused(reason)),
        Message::Failed { code, reason } => Err(PeerError { code, reason }.into()),
        other => bail!("unexpected answer to a fan-out: {}", other.kind()),
    }
}

/// What the sender tells a receiver on its control stream.
enum Command {
    Announce(Message),
    Attach(EndpointId),
    ForwardTo(EndpointAddr),
}

/// What a receiver told the sender, or that it is gone.
enum Event {
    Attached(usize),
    /// The file bytes it holds checked, and those of its transfer under way.
    Holds(usize, u64, u64),
    /// It could not pass the file on to the child with this id.
    ForwardFailed(usize, EndpointId, String),
    Stored(usize, Sent),
    Failed(usize, String),
    Gone(usize, anyhow::Error),
    HashesRead(Result<()>),
    /// A plain upload to a receiver that takes no part ended.
    Uploaded(usize, Result<Sent>),
}

/// Drives one receiver's control stream: writes the sender's commands, reads
/// its answers as events, until the sender is done with it. A receiver silent
/// for `silence` (it sends a heartbeat every second) counts as gone.
async fn member(
    index: usize,
    mut writer: FrameWriter,
    mut reader: FrameReader,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    silence: Duration,
) {
    let gone = with_frames(&mut reader, async |frames: &mut Frames| {
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else {
                        writer.finish();
                        return None;
                    };
                    if let Err(err) = writer.message(&command_message(command)).await {
                        return Some(err);
                    }
                }
                frame = frames.recv() => {
                    let event = match frame.transpose().map(Option::flatten) {
                        Ok(Some(Frame::Message(message))) => match answer(index, message) {
                            Ok(event) => event,
                            Err(err) => return Some(err),
                        },
                        Ok(Some(_)) => return Some(anyhow!("data on a fan-out's control stream")),
                        Ok(None) => return Some(anyhow!("it ended the fan-out")),
                        Err(err) => return Some(err),
                    };
                    heard = Instant::now();
                    events.send(event).ok();
                }
                _ = tokio::time::sleep_until((heard + silence).into()) => {
                    return Some(anyhow!("it sent nothing for {} s", silence.as_secs()));
                }
            }
        }
    })
    .await;
    if let Some(gone) = gone {
        events.send(Event::Gone(index, gone)).ok();
    }
}

fn command_message(command: Command) -> Message {
    match command {
        Command::Announce(message) => message,
        Command::Attach(parent) => Message::Attach {
            parent: parent.to_string(),
        },
        Command::ForwardTo(child) => Message::ForwardTo {
            child: EndpointTicket::new(child).to_string(),
        },
    }
}

fn answer(index: usize, message: Message) -> Result<Event> {
    Ok(match message {
        Message::Ack => Event::Attached(index),
        Message::Have { bytes, arriving } => Event::Holds(index, bytes, arriving),
        Message::ForwardFailed { child, reason } => {
            Event::ForwardFailed(index, parse_endpoint_id(&child)?, reason)
        }
        Message::FanoutStored {
            name,
            hash,
            data_bytes,
            wire_bytes,
        } => Event::Stored(
            index,
            Sent {
                stored_as: name,
                hash,
                traffic: Traffic {
                    data_bytes,
                    wire_bytes,
                },
            },
        ),
        Message::Failed { reason, .. } => Event::Failed(index, reason),
        other => bail!("unexpected {} message from a receiver", other.kind()),
    })
}

struct Member {
    addr: EndpointAddr,
    commands: mpsc::UnboundedSender<Command>,
    /// The receiver it gets the file from; `None`: the sender.
    parent: Option<usize>,
    /// Inbound transfers that failed.
    attempts: u32,
    /// File bytes it holds, as it last said.
    held: u64,
    /// The bytes of its transfer under way, as it last said.
    arriving: u64,
    /// When it last showed progress, or was attached.
    progressed: Instant,
    /// Its control stream ended: it passes nothing on any more.
    gone: bool,
}

struct Distributing<'a> {
    pool: &'a Arc<Pool>,
    source: &'a Source,
    fanout: u64,
    members: Vec<Member>,
    /// Each receiver's outcome, once final.
    outcomes: Vec<Option<Result<Sent>>>,
    /// The sender's own uploads, to the receivers attached to it.
    uploads: JoinSet<()>,
    /// What this side's own uploads sent.
    sent: Progress,
    /// What the receivers hold, as they last said.
    held: &'a Progress,
}

impl Distributing<'_> {
    /// Whether `index` can still pass the file on.
    fn live(&self, index: usize) -> bool {
        !self.members[index].gone && !matches!(self.outcomes[index], Some(Err(_)))
    }

    fn pending(&self) -> bool {
        self.outcomes.iter().any(Option::is_none)
    }

    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        events_tx: mpsc::UnboundedSender<Event>,
    ) {
        let receivers: Vec<usize> = (0..self.members.len()).filter(|&i| self.live(i)).collect();
        let announcing = (!receivers.is_empty()).then(|| self.announce_hashes(events_tx));
        let mut previous = None;
        for &index in &receivers {
            self.reattach(index, previous);
            previous = Some(index);
        }
        let mut watchdog = tokio::time::interval(WATCHDOG);
        while self.pending() {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = watchdog.tick() => {
                    self.unstick();
                    continue;
                }
            };
            let Some(event) = event else {
                break;
            };
            match event {
                // It admits its parent now: the data can start.
                Event::Attached(index) => self.deliver_to(index),
                Event::Holds(index, bytes, arriving) => {
                    self.holds(index, bytes);
                    let member = &mut self.members[index];
                    if arriving != member.arriving {
                        member.arriving = arriving;
                        member.progressed = Instant::now();
                    }
                }
                Event::ForwardFailed(parent, child, reason) => {
                    let orphan = (0..self.members.len()).find(|&index| {
                        self.members[index].addr.id == child
                            && self.members[index].parent == Some(parent)
                    });
                    if let Some(orphan) = orphan {
                        self.inbound_failed(orphan, reason);
                    }
                }
                Event::Stored(index, sent) => {
                    self.holds(index, self.source.offer.size);
                    self.outcomes[index].get_or_insert(Ok(sent));
                }
                Event::Failed(index, reason) => self.inbound_failed(index, reason),
                Event::Gone(index, err) => {
                    self.members[index].gone = true;
                    let err = err.context("the receiver stopped answering");
                    self.lost(index, err);
                }
                Event::HashesRead(Err(err)) => {
                    for outcome in &mut self.outcomes {
                        outcome.get_or_insert_with(|| Err(anyhow!("{err:#}")));
                    }
                }
                Event::HashesRead(Ok(())) => {}
                Event::Uploaded(index, sent) => {
                    if sent.is_ok() {
                        self.holds(index, self.source.offer.size);
                    }
                    self.outcomes[index] = Some(sent);
                }
            }
        }
        if let Some(announcing) = announcing {
            announcing.abort();
        }
    }

    fn holds(&mut self, index: usize, bytes: u64) {
        let member = &mut self.members[index];
        if bytes > member.held {
            self.held.add(bytes - member.held, 0);
            member.held = bytes;
            member.progressed = Instant::now();
        }
    }

    /// Attaches to the sender every receiver that got nothing for the stall
    /// timeout while its parent had more to give: a parent that cannot reach
    /// it, or hangs, would otherwise hold it forever.
    fn unstick(&mut self) {
        let stall = self.pool.timeout;
        for index in 0..self.members.len() {
            let member = &self.members[index];
            if self.outcomes[index].is_some() || member.gone || member.progressed.elapsed() < stall
            {
                continue;
            }
            let parent_has_more = member
                .parent
                .is_none_or(|parent| self.members[parent].held > member.held);
            if parent_has_more {
                let reason = format!("nothing arrived for {} s", stall.as_secs());
                self.inbound_failed(index, reason);
            }
        }
    }

    /// Reads the file's chunk hashes in order and announces them to every
    /// receiver, ahead of the data.
    fn announce_hashes(&self, events: mpsc::UnboundedSender<Event>) -> tokio::task::JoinHandle<()> {
        let source = self.source.clone();
        let receivers: Vec<_> = self
            .members
            .iter()
            .map(|member| member.commands.clone())
            .collect();
        tokio::task::spawn_blocking(move || {
            let mut batch: Vec<Hash> = Vec::new();
            let mut first = 0;
            let chunks = source.offer.chunks();
            let read = source.hash_chunks(&mut |index, hash| {
                batch.push(hash);
                // The first chunk's hash goes at once: the data follows it closely.
                if index == 0 || batch.len() == HASHES_PER_MESSAGE || index + 1 == chunks {
                    let message = Message::ChunkHashes {
                        first,
                        hashes: batch.iter().map(hash_hex).collect(),
                    };
                    for receiver in &receivers {
                        receiver.send(Command::Announce(message.clone())).ok();
                    }
                    first = index + 1;
                    batch.clear();
                }
                true
            });
            events.send(Event::HashesRead(read)).ok();
        })
    }

    fn parent_id(&self, parent: Option<usize>) -> EndpointId {
        match parent {
            Some(parent) => self.members[parent].addr.id,
            None => self.pool.endpoint().id(),
        }
    }

    fn command(&self, index: usize, command: Command) {
        self.members[index].commands.send(command).ok();
    }

    /// Starts the data towards `index` from its parent: the sender's upload,
    /// or a receiver told to pass the file on.
    fn deliver_to(&mut self, index: usize) {
        if !self.live(index) || self.outcomes[index].is_some() {
            return;
        }
        match self.members[index].parent {
            Some(parent) => {
                let child = self.members[index].addr.clone();
                self.command(parent, Command::ForwardTo(child));
            }
            None => self.upload_to(index),
        }
    }

    fn upload_to(&mut self, index: usize) {
        let pool = self.pool.clone();
        let addr = self.members[index].addr.clone();
        let source = self.source.clone();
        let fanout = self.fanout;
        let progress = self.sent.clone();
        self.uploads.spawn(async move {
            let uploaded = client::deliver(&pool, &addr, fanout, &source, &progress);
            // The receiver reports its copy on its control stream.
            if let Err(err) = uploaded.await {
                tracing::debug!(peer = %addr.id.fmt_short(), "fan-out upload failed: {err:#}");
            }
        });
    }

    /// Uploads the file to `index`, which takes no part in the fan-out, as a
    /// send to it alone would.
    fn upload_directly(&mut self, index: usize, events: mpsc::UnboundedSender<Event>) {
        let pool = self.pool.clone();
        let addr = self.members[index].addr.clone();
        let source = self.source.clone();
        let progress = self.sent.clone();
        self.uploads.spawn(async move {
            let sent = client::upload(&pool, &addr, &source, Striping::SharedAmong(1), &progress);
            events.send(Event::Uploaded(index, sent.await)).ok();
        });
    }

    /// `index` says its inbound transfer failed: it gets the file straight
    /// from the sender, up to [`ATTEMPTS`] times.
    fn inbound_failed(&mut self, index: usize, reason: String) {
        if self.outcomes[index].is_some() {
            return;
        }
        let member = &mut self.members[index];
        member.attempts += 1;
        if member.attempts >= ATTEMPTS {
            self.lost(index, anyhow!("{reason}"));
            return;
        }
        self.reattach(index, None);
    }

    /// `index` failed for good, or can pass nothing on: its children move to
    /// the nearest live receiver above it.
    fn lost(&mut self, index: usize, err: anyhow::Error) {
        self.outcomes[index].get_or_insert(Err(err));
        let above = self.live_ancestor(self.members[index].parent);
        let children: Vec<usize> = (0..self.members.len())
            .filter(|&child| self.members[child].parent == Some(index))
            .collect();
        for child in children {
            if self.live(child) && self.outcomes[child].is_none() {
                self.reattach(child, above);
            }
        }
    }

    fn live_ancestor(&self, mut parent: Option<usize>) -> Option<usize> {
        while let Some(index) = parent {
            if self.live(index) {
                return Some(index);
            }
            parent = self.members[index].parent;
        }
        None
    }

    /// Attaches `index` to `parent`; its data starts once it acknowledged.
    fn reattach(&mut self, index: usize, parent: Option<usize>) {
        self.members[index].parent = parent;
        self.members[index].progressed = Instant::now();
        self.command(index, Command::Attach(self.parent_id(parent)));
    }

    /// Every receiver's outcome, with the bytes the sender put on the wire.
    fn finish(self) -> Vec<Result<Sent>> {
        drop(self.uploads);
        self.outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Err(anyhow!("the fan-out ended early"))))
            .collect()
    }
}
