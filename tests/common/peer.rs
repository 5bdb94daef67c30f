//! A peer on the library crate that frames whatever it is told to: the
//! hand-written (often hostile) clients of the protocol tests.

use std::time::Duration;

use bytes::Bytes;
use iroh::{EndpointAddr, SecretKey};
use tensor_iroh::protocol::endpoint::{self, EndpointOptions, Relay, parse_ticket};
use tensor_iroh::protocol::pool::Pool;
use tensor_iroh::protocol::stream::{Frame, FrameReader, FrameWriter};
use tensor_iroh::protocol::transport::{Congestion, Transport};
use tensor_iroh::protocol::wire::{Message, Offer};

pub struct LibraryPeer {
    pub pool: Pool,
    pub addr: EndpointAddr,
    /// Its endpoint id, as `--allow` takes it.
    pub id: String,
}

impl LibraryPeer {
    /// A peer with `secret_key` that dials the listener of `ticket`, waiting
    /// `timeout` on it.
    pub async fn connect(secret_key: SecretKey, ticket: &str, timeout: Duration) -> LibraryPeer {
        let id = secret_key.public().to_string();
        let endpoint = endpoint::bind(EndpointOptions {
            secret_key,
            relay: Relay::Disabled,
            transport: Transport {
                congestion: Congestion::default(),
                patience: timeout,
            },
            bind: None,
            port_from_key: false,
            accept: false,
            allow: None,
        })
        .await
        .unwrap();
        LibraryPeer {
            pool: Pool::new(endpoint, timeout),
            addr: parse_ticket(ticket).unwrap(),
            id,
        }
    }

    pub async fn open(&self) -> anyhow::Result<(FrameWriter, FrameReader)> {
        self.pool.open(&self.addr).await
    }

    /// Writes `frames` on a new stream and ends it; returns the messages the
    /// listener answers before it ends its side (or stalls).
    pub async fn exchange(&self, frames: &[Vec<u8>]) -> Vec<Message> {
        let (mut writer, mut reader) = self.open().await.unwrap();
        for frame in frames {
            if writer.write(Bytes::copy_from_slice(frame)).await.is_err() {
                break;
            }
        }
        writer.finish();
        let mut answers = Vec::new();
        while let Ok(Some(Frame::Message(message))) = reader.next().await {
            answers.push(message);
        }
        answers
    }
}

/// The offer of a one-tensor `.npy` of `size` bytes named `name`, as an
/// honest sender would make it; `eager` where its data follows at once.
pub fn offer(name: &str, size: u64, eager: bool) -> Offer {
    Offer {
        name: name.into(),
        format: "npy".into(),
        size,
        tensors: 1,
        identity: "0123456789abcdef0123456789abcdef".into(),
        eager,
        discard: false,
        first_chunk: None,
        patience_secs: 20,
        files_in_send: 1,
        stripes: 1,
        transfer: 0,
    }
}
