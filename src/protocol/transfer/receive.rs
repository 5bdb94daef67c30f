//! The receiver's side: accepting an offer into a sink, answering `Ready`,
//! getting the streams the chunks arrive on, and answering the verdict once
//! the checked file is committed.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, anyhow};
use iroh::endpoint::Connection;

use crate::protocol::errors::{ErrorCode, PeerError, code_of};
use crate::protocol::liveness::{Liveness, Stalled};
use crate::protocol::stream::{FrameReader, FrameWriter};
use crate::protocol::stripes::{Joining, StripeLink, open_stripes, usable_stripes};
use crate::protocol::wire::{Hash, HeldChunk, Message, Offer, hash_hex};

use super::receive_chunks::{ExtraStreams, receive_checked};
use super::sink::{Committed, Sink};
use super::{CODE_FAILED, Progress, REASON_WAIT, Received, Traffic};

/// Receives one offered file into the sink that `accept` gives for the offer (or
/// refuses it with the reason `accept` returns).
/// `link` says how a striped transfer gets its extra streams.
pub async fn receive_file<F>(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    link: StripeLink<'_>,
    progress: &Progress,
    accept: F,
) -> Result<Received>
where
    F: AsyncFnOnce(&Offer) -> Result<Box<dyn Sink>>,
{
    let (offer, mut sink) = accept_offer(writer, reader, accept).await?;
    let plan = StripePlan::new(link, &offer, !offer.eager && !sink.in_order_only());
    let held = match answer_ready(writer, &offer, sink.as_mut(), &plan).await {
        Ok(held) => held,
        Err(err) => {
            sink.abandon(true);
            return Err(err);
        }
    };
    let stripes = plan.stripes;
    let extra = match plan.extra_streams(writer.liveness()).await {
        Ok(extra) => extra,
        Err(err) => {
            sink.abandon(true);
            return fail(writer, reader, &offer, err).await;
        }
    };
    let checked = receive_checked(reader, sink, extra, stripes, &offer, &held, progress).await;
    let (sink, hash, traffic) = match checked {
        Ok(checked) => checked,
        Err(err) => return fail(writer, reader, &offer, err).await,
    };
    match commit(sink, hash).await {
        Ok(committed) => answer_stored(writer, offer, committed, hash, traffic).await,
        Err(err) => fail(writer, reader, &offer, err).await,
    }
}

/// Reads the offer and takes the sink `accept` gives for it; an offer that
/// cannot be read or is not accepted is refused with the reason.
async fn accept_offer<F>(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    accept: F,
) -> Result<(Offer, Box<dyn Sink>)>
where
    F: AsyncFnOnce(&Offer) -> Result<Box<dyn Sink>>,
{
    let offer = match reader.message().await {
        Ok(Message::Offer(offer)) => offer,
        Ok(Message::Refused { code, reason } | Message::Failed { code, reason }) => {
            return Err(PeerError { code, reason }.into());
        }
        // An offer that breaks a bound is answered, so a sender learns why
        // instead of seeing the stream end.
        Ok(other) => {
            let violation = ErrorCode::ProtocolViolation.error(format!(
                "expected a file offer, got a {} message",
                other.kind()
            ));
            refuse(writer, reader, violation.code, &violation.message).await;
            return Err(violation.into());
        }
        Err(err) => {
            refuse(writer, reader, code_of(&err), &format!("{err:#}")).await;
            return Err(err.context("refused an offer"));
        }
    };
    match accept(&offer).await {
        Ok(sink) => Ok((offer, sink)),
        Err(err) => {
            refuse(writer, reader, code_of(&err), &format!("{err:#}")).await;
            Err(err.context(format!("refused {}", offer.name)))
        }
    }
}

/// How many streams this side takes for a file, and how it gets the extra
/// ones: through the registry as the listener, or opening them as the dialer.
struct StripePlan<'a> {
    stripes: u32,
    transfer: u64,
    joining: Option<Joining>,
    to_open: Option<&'a Connection>,
}

impl<'a> StripePlan<'a> {
    /// One stream unless the file may be `striped`; a listener registers the
    /// transfer here, for the dialer's extra streams to join.
    fn new(link: StripeLink<'a>, offer: &Offer, striped: bool) -> StripePlan<'a> {
        let one_stream = StripePlan {
            stripes: 1,
            transfer: 0,
            joining: None,
            to_open: None,
        };
        match link {
            StripeLink::Listener { registry, stripes } if striped => {
                let joining =
                    registry.join(usable_stripes(offer.stripes.min(stripes), offer.chunks()));
                match joining {
                    Some(joining) => StripePlan {
                        stripes: joining.stripes,
                        transfer: joining.transfer,
                        joining: Some(joining),
                        to_open: None,
                    },
                    None => one_stream,
                }
            }
            StripeLink::Dialer {
                connection,
                stripes,
            } if striped && offer.transfer != 0 => StripePlan {
                stripes: usable_stripes(offer.stripes.min(stripes), offer.chunks()),
                transfer: offer.transfer,
                joining: None,
                to_open: Some(connection),
            },
            _ => one_stream,
        }
    }

    /// The extra streams as this side will have them: opened now as the
    /// dialer, or left to arrive through the registry.
    async fn extra_streams(self, liveness: &Liveness) -> Result<ExtraStreams> {
        let opened = match self.to_open {
            Some(connection) if self.stripes > 1 => {
                open_stripes(connection, self.transfer, self.stripes, liveness).await?
            }
            _ => Vec::new(),
        };
        Ok(ExtraStreams {
            opened,
            joining: self.joining,
            liveness: liveness.clone(),
        })
    }
}

/// Answers an offer that awaits one with `Ready`: the chunks `sink` already
/// holds and the streams planned for the file. Returns the held chunks.
async fn answer_ready(
    writer: &mut FrameWriter,
    offer: &Offer,
    sink: &mut dyn Sink,
    plan: &StripePlan<'_>,
) -> Result<HashMap<u32, Hash>> {
    if offer.eager {
        return Ok(HashMap::new());
    }
    let held = sink.held();
    let message = Message::Ready {
        held: held
            .iter()
            .map(|(index, hash)| HeldChunk {
                index: *index,
                hash: hash_hex(hash),
            })
            .collect(),
        stripes: plan.stripes,
        transfer: plan.transfer,
    };
    writer.message(&message).await?;
    Ok(held.into_iter().collect())
}

/// Commits `sink`; on a blocking thread where that syncs the file and may
/// compare it with one stored before.
async fn commit(sink: Box<dyn Sink>, hash: Hash) -> Result<Committed> {
    if !sink.commit_blocks() {
        return sink.commit(&hash);
    }
    tokio::task::spawn_blocking(move || sink.commit(&hash))
        .await
        .unwrap_or_else(|_| Err(anyhow!("storing the file failed unexpectedly")))
}

/// Tells the sender the file is stored, and under which name.
async fn answer_stored(
    writer: &mut FrameWriter,
    offer: Offer,
    committed: Committed,
    hash: Hash,
    traffic: Traffic,
) -> Result<Received> {
    let hash = hash_hex(&hash);
    writer
        .message(&Message::Stored {
            name: committed.name.clone(),
            hash: hash.clone(),
        })
        .await?;
    writer.finish_and_flush().await;
    Ok(Received {
        offer,
        stored_as: committed.name,
        replaced: committed.replaced,
        hash,
        traffic,
    })
}

async fn refuse(writer: &mut FrameWriter, reader: &mut FrameReader, code: ErrorCode, reason: &str) {
    writer
        .message(&Message::Refused {
            code,
            reason: reason.to_string(),
        })
        .await
        .ok();
    writer.finish();
    reader.stop(CODE_FAILED);
}

async fn fail(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    offer: &Offer,
    err: anyhow::Error,
) -> Result<Received> {
    let err_stalled = err.is::<Stalled>();
    writer
        .message(&Message::Failed {
            code: code_of(&err),
            reason: format!("{}: {err:#}", offer.name),
        })
        .await
        .ok();
    reader.stop(CODE_FAILED);
    // The peer may be gone (that may be the failure): do not wait a stall for it.
    let wait = if err_stalled {
        Duration::ZERO
    } else {
        REASON_WAIT
    };
    writer.finish_and_flush_within(wait).await;
    Err(err.context(offer.name.clone()))
}
