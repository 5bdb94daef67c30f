//! Fan-outs: one file sent to several listeners at the cost of about one upload.
//!
//! The sender arranges the receivers in a chain and uploads to the first;
//! each receiver checks every chunk against the hash the sender announced on
//! its own control stream, and passes checked chunks on to the next. A
//! receiver admits the parent the sender names for that fan-out only, so
//! `listen --allow <sender>` still works, and a parent can neither alter the
//! file nor deliver another.
//!
//! `distribute` is the sender's side, `node` a receiver's, `state` what a
//! receiver knows of the file, `sink` the sink that makes its chunks readable.

mod distribute;
mod node;
mod sink;
mod state;

pub use distribute::distribute;
pub use node::{Delivery, Fanout, FanoutNode};
pub use sink::FanoutSink;

use anyhow::Result;
use tokio::sync::mpsc;

use crate::protocol::stream::{Frame, FrameReader};

/// The frames of a control stream as they arrive.
type Frames = mpsc::Receiver<Result<Option<Frame>>>;

/// Runs `body` with the frames `reader` yields, through a channel: a control
/// loop `select!`s between the peer's frames and its own business, and a
/// frame read half-way must not be lost when another branch wins
/// ([`FrameReader::next`] is not cancel-safe). The channel ends after the
/// stream's end or first error.
async fn with_frames<T>(reader: &mut FrameReader, body: impl AsyncFnOnce(&mut Frames) -> T) -> T {
    let (frames_tx, mut frames) = mpsc::channel(8);
    let reading = async move {
        loop {
            let frame = reader.next().await;
            let last = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || last {
                break;
            }
        }
    };
    let looping = body(&mut frames);
    let mut reading = std::pin::pin!(reading);
    let mut looping = std::pin::pin!(looping);
    tokio::select! {
        result = &mut looping => result,
        () = &mut reading => looping.await,
    }
}
