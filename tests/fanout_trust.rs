//! What a fan-out's parent can and cannot do to a listener that admits only
//! the sender: deliver the announced file, and nothing else. The sender and
//! the parent are hand-written clients on the library crate, the parent a
//! hostile one.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Listener;
use common::peer::{LibraryPeer, offer};
use iroh::SecretKey;
use tensor_iroh::protocol::errors::ErrorCode;
use tensor_iroh::protocol::stream::FrameReader;
use tensor_iroh::protocol::wire::{Message, Offer, chunk_header, end_frame, hash_hex};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the listener closes the connection on `peer`: its TLS handshake
/// may complete before the listener's refusal arrives, so a request is
/// tried, and must get no answer.
async fn is_shut_out(peer: &LibraryPeer) -> bool {
    let Ok((mut writer, mut reader)) = peer.open().await else {
        return true;
    };
    writer.message(&Message::Catalog).await.ok();
    writer.finish();
    !matches!(reader.next().await, Ok(Some(_)))
}

/// The next message on a control stream other than a heartbeat.
async fn next_word(reader: &mut FrameReader) -> Message {
    loop {
        match reader.message().await.unwrap() {
            Message::Have { .. } => continue,
            message => return message,
        }
    }
}

/// A delivery of `data` as file `offer` under fan-out `fanout`, its chunk
/// claiming the hash of what it carries.
fn delivery(fanout: u64, offer: Offer, data: &[u8]) -> Vec<Vec<u8>> {
    let hash = *blake3::hash(data).as_bytes();
    vec![
        Message::Forwarded { fanout }.encode(),
        Message::Offer(offer).encode(),
        chunk_header(0, data.len() as u32, false).to_vec(),
        data.to_vec(),
        hash.to_vec(),
        end_frame(&hash).to_vec(),
    ]
}

fn refused(answers: &[Message], code: ErrorCode) -> bool {
    answers
        .iter()
        .any(|m| matches!(m, Message::Refused { code: c, .. } if *c == code))
}

fn stored(out: &Path) -> bool {
    out.join("w.npy").exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_delivers_the_announced_file_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let data = b"the sender's own bytes".to_vec();
    let mut altered = data.clone();
    altered[0] ^= 1;
    let file = offer("w.npy", data.len() as u64, true);

    let sender_key = SecretKey::generate();
    let allow = sender_key.public().to_string();
    let listener = Listener::start(&["--out", out.to_str().unwrap(), "--allow", &allow]);
    let sender = LibraryPeer::connect(sender_key, &listener.ticket, TIMEOUT).await;
    let parent = LibraryPeer::connect(SecretKey::generate(), &listener.ticket, TIMEOUT).await;
    let stranger = LibraryPeer::connect(SecretKey::generate(), &listener.ticket, TIMEOUT).await;
    assert!(
        is_shut_out(&stranger).await,
        "a peer no fan-out names is refused"
    );

    // The sender announces the file, its hash and its parent.
    let fanout = 7;
    let (mut control, mut answers) = sender.open().await.unwrap();
    control
        .message(&Message::Fanout {
            fanout,
            offer: file.clone(),
        })
        .await
        .unwrap();
    assert!(matches!(next_word(&mut answers).await, Message::Ack));
    let hashes = vec![hash_hex(blake3::hash(&data).as_bytes())];
    control
        .message(&Message::ChunkHashes { first: 0, hashes })
        .await
        .unwrap();
    let parent_id = parent.id.clone();
    control
        .message(&Message::Attach { parent: parent_id })
        .await
        .unwrap();
    assert!(matches!(next_word(&mut answers).await, Message::Ack));

    // Admitted, the parent may deliver that file only.
    let catalog = parent.exchange(&[Message::Catalog.encode()]).await;
    assert!(refused(&catalog, ErrorCode::NotAllowed), "{catalog:?}");
    let upload = parent
        .exchange(&[
            Message::Upload.encode(),
            Message::Offer(file.clone()).encode(),
        ])
        .await;
    assert!(refused(&upload, ErrorCode::NotAllowed), "{upload:?}");
    let elsewhere = parent
        .exchange(&delivery(fanout + 1, file.clone(), &data))
        .await;
    assert!(refused(&elsewhere, ErrorCode::NotAllowed), "{elsewhere:?}");
    let other_file = parent
        .exchange(&delivery(
            fanout,
            offer("v.npy", data.len() as u64, true),
            &data,
        ))
        .await;
    assert!(
        other_file
            .iter()
            .any(|m| matches!(m, Message::Refused { reason, .. } if reason.contains("other than"))),
        "{other_file:?}"
    );
    assert!(
        matches!(next_word(&mut answers).await, Message::Failed { .. }),
        "the sender hears of the refused delivery"
    );

    // Altered bytes with a hash that matches them are not the sender's.
    let lie = parent
        .exchange(&delivery(fanout, file.clone(), &altered))
        .await;
    assert!(
        lie.iter().any(
            |m| matches!(m, Message::Failed { reason, .. } if reason.contains("not the sender's"))
        ),
        "{lie:?}"
    );
    assert!(
        matches!(next_word(&mut answers).await, Message::Failed { .. }),
        "the sender hears of the failed delivery"
    );
    assert!(!stored(&out), "nothing is stored from an altered delivery");

    // The announced bytes are stored, and the sender told.
    let honest = parent.exchange(&delivery(fanout, file, &data)).await;
    assert!(
        honest.iter().any(|m| matches!(m, Message::Stored { .. })),
        "{honest:?}"
    );
    assert!(matches!(
        next_word(&mut answers).await,
        Message::FanoutStored { .. }
    ));
    assert_eq!(std::fs::read(out.join("w.npy")).unwrap(), data);
}
