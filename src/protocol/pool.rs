//! One connection per peer, shared by every request to it.
//!
//! Dialing offers two ALPNs: this build's versioned protocol and a version-neutral
//! one. A listener of another version accepts only the neutral one, and the two
//! sides then exchange versions so the user gets an error naming both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use iroh::endpoint::{ConnectOptions, ConnectingError, Connection, ConnectionError};
use iroh::{Endpoint, EndpointAddr, EndpointId};
use tokio::sync::Mutex;

use super::errors::{PeerEnded, connection_failed};
use super::liveness::{Liveness, with_progress};
use super::stream::{FrameReader, FrameWriter};
use super::wire::{Message, PROTOCOL_VERSION};
use super::{ALPN, HELLO_ALPN, round_trip};

/// The predecessor's defaults, which suit a CLI as well as a library.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const MAX_CONNECTIONS: usize = 10;
/// Close code a client uses for a connection it is done with.
pub const CODE_DONE: u32 = 0;

pub struct Pool {
    endpoint: Endpoint,
    connections: Mutex<HashMap<EndpointId, Pooled>>,
    /// The last failed dial per peer, with when it ended: requests that waited
    /// for that dial, or come soon after it, share its failure instead of each
    /// waiting out a dial of their own.
    failed_dials: std::sync::Mutex<HashMap<EndpointId, (Instant, DialFailure)>>,
    /// Bounds connecting and every wait on a stream.
    pub timeout: Duration,
    /// Connections kept at most; the least recently used one goes first.
    capacity: usize,
}

struct Pooled {
    connection: Connection,
    last_used: Instant,
}

impl Pool {
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Pool {
        Pool {
            endpoint,
            connections: Mutex::new(HashMap::new()),
            failed_dials: std::sync::Mutex::default(),
            timeout,
            capacity: MAX_CONNECTIONS,
        }
    }

    /// The pool, keeping up to `peers` connections when that is more than
    /// [`MAX_CONNECTIONS`]: a send to more listeners needs one to each at once,
    /// and closing one would cut its transfer.
    pub fn for_peers(mut self, peers: usize) -> Pool {
        self.capacity = self.capacity.max(peers);
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The pooled connection to `id` if it is still open; never dials.
    pub async fn existing(&self, id: &EndpointId) -> Option<Connection> {
        let connections = self.connections.lock().await;
        let pooled = connections.get(id)?;
        pooled
            .connection
            .close_reason()
            .is_none()
            .then(|| pooled.connection.clone())
    }

    /// A live connection to `addr`, reused when one is pooled.
    pub async fn connection(&self, addr: &EndpointAddr) -> Result<Connection> {
        let asked = Instant::now();
        let mut connections = self.connections.lock().await;
        if let Some((ended, error)) = self.failed_dials.lock().expect("pool lock").get(&addr.id)
            && (*ended >= asked || ended.elapsed() < self.timeout)
        {
            return Err(error.error());
        }
        if let Some(pooled) = connections.get(&addr.id)
            && let Some(reason) = pooled.connection.close_reason()
            && let Some(ended) = closed_on_purpose(&reason)
        {
            // Shared like a failed dial, so concurrent requests do not each
            // dial again to be refused again.
            connections.remove(&addr.id);
            return Err(self.remember_failure(addr.id, ended.into()));
        }
        connections.retain(|_, pooled| {
            pooled.connection.close_reason().is_none() && pooled.last_used.elapsed() < IDLE_TIMEOUT
        });
        if let Some(pooled) = connections.get_mut(&addr.id) {
            pooled.last_used = Instant::now();
            return Ok(pooled.connection.clone());
        }
        if connections.len() >= self.capacity
            && let Some(oldest) = connections
                .iter()
                .min_by_key(|(_, pooled)| pooled.last_used)
                .map(|(id, _)| *id)
            && let Some(evicted) = connections.remove(&oldest)
        {
            evicted.connection.close(CODE_DONE.into(), b"pool full");
        }
        let connection = match self.dial(addr).await {
            Ok(connection) => connection,
            Err(err) => return Err(self.remember_failure(addr.id, err)),
        };
        tokio::spawn(answer_pings(connection.clone()));
        connections.insert(
            addr.id,
            Pooled {
                connection: connection.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(connection)
    }

    /// Requests to `id` for the next while fail with `error` instead of
    /// dialing; returns it.
    fn remember_failure(&self, id: EndpointId, error: anyhow::Error) -> anyhow::Error {
        self.failed_dials
            .lock()
            .expect("pool lock")
            .insert(id, (Instant::now(), DialFailure::of(&error)));
        error
    }

    async fn dial(&self, addr: &EndpointAddr) -> Result<Connection> {
        let peer = addr.id.fmt_short();
        let options = ConnectOptions::new().with_additional_alpns(vec![HELLO_ALPN.to_vec()]);
        let connecting = async {
            let connecting = self
                .endpoint
                .connect_with_opts(addr.clone(), ALPN, options)
                .await
                .map_err(|err| anyhow!("{err:#}"))?;
            connecting.await.map_err(handshake_failed)
        };
        let unreachable = || {
            anyhow!(
                "could not reach peer {peer} within {} s: check the ticket, that the listener runs, and that UDP gets through",
                self.timeout.as_secs()
            )
        };
        let connection = match tokio::time::timeout(self.timeout, connecting).await {
            Err(_) => return Err(unreachable()),
            Ok(Err(err)) if timed_out(&err) => return Err(unreachable()),
            // The peer was reached where it said why it would not go on.
            Ok(Err(err)) if err.is::<PeerEnded>() => return Err(err),
            Ok(result) => result.with_context(|| format!("could not reach peer {peer}"))?,
        };
        if connection.alpn() != ALPN {
            let theirs = exchange_versions(&connection, self.timeout).await;
            connection.close(CODE_DONE.into(), b"version mismatch");
            match theirs {
                Ok(version) => bail!(
                    "peer {peer} speaks tensor-iroh protocol {version}, this tensor-iroh speaks protocol {PROTOCOL_VERSION}"
                ),
                Err(err) => bail!(
                    "peer {peer} does not speak tensor-iroh protocol {PROTOCOL_VERSION}: {err:#}"
                ),
            }
        }
        Ok(connection)
    }

    /// Opens a stream pair to `addr`, redialing once if the pooled connection died.
    pub async fn open(&self, addr: &EndpointAddr) -> Result<(FrameWriter, FrameReader)> {
        let (_, writer, reader) = self.open_on_connection(addr).await?;
        Ok((writer, reader))
    }

    /// [`Pool::open`], with the connection the streams are on.
    pub async fn open_on_connection(
        &self,
        addr: &EndpointAddr,
    ) -> Result<(Connection, FrameWriter, FrameReader)> {
        let mut retried = false;
        loop {
            let connection = self.connection(addr).await?;
            let liveness = Liveness::new(connection.clone(), self.timeout);
            // Waits for a free stream while the connection moves: on a slow link,
            // earlier transfers may hold every stream for longer than the timeout.
            match liveness.bound(connection.open_bi()).await {
                Ok(Ok((send, recv))) => {
                    return Ok((
                        connection,
                        FrameWriter::new(send, liveness.clone()),
                        FrameReader::new(recv, liveness),
                    ));
                }
                Ok(Err(err)) if !retried && closed_on_purpose(&err).is_none() => {
                    tracing::debug!(
                        "pooled connection failed ({}), redialing",
                        crate::escape::printable(&err.to_string())
                    );
                    self.forget(addr.id, &connection).await;
                    retried = true;
                }
                Ok(Err(err)) => {
                    return Err(connection_failed(err, "cannot open a stream"))
                        .with_context(|| format!("peer {}", addr.id.fmt_short()));
                }
                Err(stalled) => {
                    return Err(stalled).with_context(|| {
                        format!("peer {} accepted no new stream", addr.id.fmt_short())
                    });
                }
            }
        }
    }

    /// Closes the pooled connection to `id`, if any: the next request dials
    /// afresh. For a connection that stalled because its peer restarted.
    pub async fn discard(&self, id: &EndpointId) {
        if let Some(pooled) = self.connections.lock().await.remove(id) {
            pooled.connection.close(CODE_DONE.into(), b"stalled");
        }
    }

    async fn forget(&self, id: EndpointId, connection: &Connection) {
        let mut connections = self.connections.lock().await;
        if connections
            .get(&id)
            .is_some_and(|pooled| pooled.connection.stable_id() == connection.stable_id())
        {
            connections.remove(&id);
        }
    }

    /// Closes every pooled connection and then the endpoint, waiting briefly so the
    /// peers learn the connections ended cleanly.
    pub async fn close(&self) {
        for (_, pooled) in self.connections.lock().await.drain() {
            pooled.connection.close(CODE_DONE.into(), b"done");
        }
        tokio::time::timeout(Duration::from_millis(500), self.endpoint.close())
            .await
            .ok();
    }
}

/// Why the listener closed the connection, where it refused this endpoint or
/// shut down: a redial would only be refused again (and counted again in the
/// listener's log).
fn closed_on_purpose(err: &ConnectionError) -> Option<PeerEnded> {
    PeerEnded::of_connection(err)
        .filter(|ended| matches!(ended, PeerEnded::NotAllowed | PeerEnded::ShuttingDown))
}

/// A failed handshake as an error: [`PeerEnded`] where the peer said why.
fn handshake_failed(err: ConnectingError) -> anyhow::Error {
    if let ConnectingError::ConnectionError { source, .. } = &err
        && let Some(ended) = PeerEnded::of_connection(source)
    {
        return ended.into();
    }
    err.into()
}

/// Whether a dial failed because the peer never answered.
fn timed_out(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<ConnectingError>(),
        Some(ConnectingError::ConnectionError {
            source: ConnectionError::TimedOut,
            ..
        })
    )
}

/// A failed dial as the requests that share it see it: typed where the peer
/// said why, else as text.
enum DialFailure {
    Ended(PeerEnded),
    Other(String),
}

impl DialFailure {
    fn of(err: &anyhow::Error) -> DialFailure {
        match err.downcast_ref::<PeerEnded>() {
            Some(ended) => DialFailure::Ended(*ended),
            None => DialFailure::Other(format!("{err:#}")),
        }
    }

    fn error(&self) -> anyhow::Error {
        match self {
            DialFailure::Ended(ended) => (*ended).into(),
            DialFailure::Other(text) => anyhow!("{text}"),
        }
    }
}

/// Sends our version on a connection that negotiated the neutral ALPN and
/// returns the peer's.
async fn exchange_versions(connection: &Connection, timeout: Duration) -> Result<u32> {
    let (send, recv) = connection.open_bi().await?;
    let liveness = Liveness::new(connection.clone(), timeout);
    let mut writer = FrameWriter::new(send, liveness.clone());
    let mut reader = FrameReader::new(recv, liveness);
    writer
        .message(&Message::Hello {
            version: PROTOCOL_VERSION,
        })
        .await?;
    writer.finish();
    match reader.message().await? {
        Message::Hello { version } => Ok(version),
        other => bail!("unexpected answer to hello: {other:?}"),
    }
}

/// Answers the listener's liveness pings for as long as the connection lives.
async fn answer_pings(connection: Connection) {
    while let Ok((send, recv)) = connection.accept_bi().await {
        // Ahead of the file data this side is sending, which would otherwise
        // hold the answer back until the listener gave up on us.
        send.set_priority(PING_PRIORITY).ok();
        let liveness = Liveness::new(connection.clone(), ping_timeout(&connection));
        tokio::spawn(async move {
            let mut writer = FrameWriter::new(send, liveness.clone());
            let mut reader = FrameReader::new(recv, liveness);
            if let Ok(Message::Ping) = reader.message().await {
                writer.message(&Message::Pong).await.ok();
                writer.finish();
            }
        });
    }
}

/// Above the default stream priority (0) of file data.
const PING_PRIORITY: i32 = 1;
/// What a peer busy sending on a loaded machine may need to answer a ping, on
/// top of the round trips.
const PING_SLACK: Duration = Duration::from_millis(250);
/// The longest a peer gets to answer, whatever its round-trip time.
const PING_TIMEOUT_MAX: Duration = Duration::from_secs(3);

/// How long the peer of `connection` has to answer a ping before it counts as
/// gone: a few of its round trips plus [`PING_SLACK`]. A rerun that resumes a
/// killed send waits this long, so it should not be a flat second on loopback.
fn ping_timeout(connection: &Connection) -> Duration {
    let rtt = round_trip(connection).unwrap_or(PING_TIMEOUT_MAX);
    (PING_SLACK + 4 * rtt).min(PING_TIMEOUT_MAX)
}

/// Whether the peer at the other end of `connection` still answers.
pub async fn peer_answers(connection: &Connection) -> bool {
    if connection.close_reason().is_some() {
        return false;
    }
    let timeout = ping_timeout(connection);
    let ping = async {
        let (send, recv) = connection.open_bi().await?;
        send.set_priority(PING_PRIORITY).ok();
        let liveness = Liveness::new(connection.clone(), timeout);
        let mut writer = FrameWriter::new(send, liveness.clone());
        let mut reader = FrameReader::new(recv, liveness);
        writer.message(&Message::Ping).await?;
        writer.finish();
        anyhow::Ok(matches!(reader.message().await?, Message::Pong))
    };
    // A peer on a machine too busy to answer within the timeout is still
    // there if its data kept arriving meanwhile.
    let (answered, moved) = with_progress(connection, tokio::time::timeout(timeout, ping)).await;
    moved || matches!(answered, Ok(Ok(true)))
}
