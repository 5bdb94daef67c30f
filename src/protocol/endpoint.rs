//! Endpoint setup: secret keys, relays, binding, and tickets.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use iroh::endpoint::{AfterHandshakeOutcome, BindOpts, Connection, EndpointHooks, VarInt, presets};
use iroh::{
    Endpoint, EndpointAddr, EndpointId, RelayConfig, RelayMap, RelayMode, RelayUrl, SecretKey,
};
use iroh_tickets::endpoint::EndpointTicket;

use super::transport::Transport;
use super::{ALPN, CODE_REFUSED, HELLO_ALPN};

/// The environment variable other iroh tools read a secret key from.
pub const SECRET_ENV: &str = "IROH_SECRET";
/// How long a listener waits for its home relay before printing a ticket without it.
pub const RELAY_WAIT: Duration = Duration::from_millis(1500);

/// Which relay servers an endpoint uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// iroh's public relays.
    Default,
    Disabled,
    Custom(RelayUrl),
}

impl FromStr for Relay {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Relay> {
        match text {
            "default" => Ok(Relay::Default),
            "disabled" => Ok(Relay::Disabled),
            url => {
                let url = RelayUrl::from_str(url)
                    .map_err(|err| anyhow!("not default, disabled or a relay URL: {err}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    bail!("a relay URL starts with https:// (or http:// for a local relay)");
                }
                Ok(Relay::Custom(url))
            }
        }
    }
}

/// Where the secret key comes from.
pub enum KeySource<'a> {
    /// A key file, created with mode 0600 when missing.
    File(&'a Path),
    /// `IROH_SECRET` if set, else a fresh key.
    EnvOrFresh,
}

impl KeySource<'_> {
    /// Whether the key outlives this run (a key file or `IROH_SECRET`).
    pub fn is_lasting(&self) -> bool {
        match self {
            KeySource::File(_) => true,
            KeySource::EnvOrFresh => std::env::var_os(SECRET_ENV).is_some(),
        }
    }
}

pub fn secret_key(source: KeySource) -> Result<SecretKey> {
    match source {
        KeySource::File(path) => load_or_create_key(path),
        KeySource::EnvOrFresh => match std::env::var(SECRET_ENV) {
            Ok(text) => parse_key(text.trim()).with_context(|| format!("{SECRET_ENV} is invalid")),
            Err(_) => Ok(SecretKey::generate()),
        },
    }
}

fn parse_key(text: &str) -> Result<SecretKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes)
        .map_err(|_| anyhow!("a secret key is 64 hexadecimal characters"))?;
    Ok(SecretKey::from_bytes(&bytes))
}

fn load_or_create_key(path: &Path) -> Result<SecretKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_key(text.trim())
            .with_context(|| format!("{} does not hold a secret key", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = SecretKey::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create key file {}", path.display()))?;
            writeln!(file, "{}", hex::encode(key.to_bytes()))
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write key file {}", path.display()))?;
            Ok(key)
        }
        Err(err) => Err(err).with_context(|| format!("cannot read key file {}", path.display())),
    }
}

/// Parses an endpoint id as iroh prints it, in either case.
pub fn parse_endpoint_id(text: &str) -> Result<EndpointId> {
    EndpointId::from_str(&text.trim().to_ascii_lowercase())
        .map_err(|err| anyhow!("not an endpoint id ({err}); `tensor-iroh id` prints one"))
}

/// The peers a listener admits; the others are refused when their TLS handshake
/// completes, before they can open a stream.
#[derive(Clone)]
pub struct AllowList {
    pub ids: HashSet<EndpointId>,
    /// Peers admitted for a while besides `ids`: the parents of relays.
    pub admitted: Arc<Admitted>,
    /// Told about every refused peer, for the listener to report.
    pub on_refused: Arc<dyn Fn(EndpointId) + Send + Sync>,
}

impl std::fmt::Debug for AllowList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllowList").field("ids", &self.ids).finish()
    }
}

impl EndpointHooks for AllowList {
    async fn after_handshake<'a>(&'a self, connection: &'a Connection) -> AfterHandshakeOutcome {
        let peer = connection.remote_id();
        if self.ids.contains(&peer)
            || self.admitted.contains(&peer)
            || connection.side().is_client()
        {
            AfterHandshakeOutcome::Accept
        } else {
            (self.on_refused)(peer);
            AfterHandshakeOutcome::Reject {
                error_code: VarInt::from_u32(CODE_REFUSED),
                reason: b"not on the allow list".to_vec(),
            }
        }
    }
}

/// Peers a listener admits besides its allow-list while a relay needs them,
/// counted, since one peer may be the parent in several relays at once.
#[derive(Debug, Default)]
pub struct Admitted(Mutex<HashMap<EndpointId, usize>>);

impl Admitted {
    fn lock(&self) -> MutexGuard<'_, HashMap<EndpointId, usize>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn admit(&self, peer: EndpointId) {
        *self.lock().entry(peer).or_default() += 1;
    }

    pub fn release(&self, peer: &EndpointId) {
        let mut admitted = self.lock();
        if let Some(count) = admitted.get_mut(peer) {
            *count -= 1;
            if *count == 0 {
                admitted.remove(peer);
            }
        }
    }

    pub fn contains(&self, peer: &EndpointId) -> bool {
        self.lock().contains_key(peer)
    }
}

pub struct EndpointOptions {
    pub secret_key: SecretKey,
    pub relay: Relay,
    pub transport: Transport,
    pub bind: Option<SocketAddr>,
    /// Without `bind`, prefer a UDP port derived from the key, so a listener with
    /// a lasting key keeps its ticket across restarts.
    pub port_from_key: bool,
    /// Accept tensor-iroh connections (listeners); dialers leave this off.
    pub accept: bool,
    pub allow: Option<AllowList>,
}

/// Binds an endpoint without DNS or address publishing: peers find each other
/// through the addresses in tickets, so nothing waits on the internet.
pub async fn bind(options: EndpointOptions) -> Result<Endpoint> {
    let port = port_for(&options.secret_key.public());
    let explicit = options.bind.is_some();
    let builder = |addrs: &[SocketAddr]| -> Result<iroh::endpoint::Builder> {
        let mut builder = base_builder(&options);
        if !addrs.is_empty() {
            builder = builder.clear_ip_transports();
        }
        for addr in addrs {
            // IPv6 may be missing on a host; only IPv4, or the address the
            // user asked for, is required.
            let opts = BindOpts::default().set_is_required(explicit || addr.is_ipv4());
            builder = builder
                .bind_addr_with_opts(*addr, opts)
                .with_context(|| format!("cannot bind to {addr}"))?;
        }
        Ok(builder)
    };
    let failed =
        |err: iroh::endpoint::BindError| anyhow!("cannot start the iroh endpoint: {err:#}");
    match options.bind {
        Some(addr) => {
            if addr.ip().is_multicast() || addr.ip() == Ipv4Addr::BROADCAST {
                bail!(
                    "cannot bind to {addr}: a multicast or broadcast address receives no connections"
                );
            }
            // The IPv6 wildcard as the dual-stack "any" it is on Linux: iroh puts
            // no address of a bare [::] socket in tickets, so IPv4 is bound beside it.
            let addrs = if addr.ip() == Ipv6Addr::UNSPECIFIED {
                vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())), addr]
            } else {
                vec![addr]
            };
            builder(&addrs)?
                .bind()
                .await
                .map_err(|err| anyhow!("cannot bind to {addr}: {err:#}"))
        }
        None if options.port_from_key => {
            let stable = [
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            ];
            // A taken port falls back to any: see [`holds_key_port`].
            match builder(&stable)?.bind().await {
                Ok(endpoint) => Ok(endpoint),
                Err(_) => builder(&[])?.bind().await.map_err(failed),
            }
        }
        None => builder(&[])?.bind().await.map_err(failed),
    }
}

/// A UDP port in the dynamic range, fixed by the endpoint id.
pub fn port_for(id: &EndpointId) -> u16 {
    let bytes = id.as_bytes();
    49152 + u16::from_le_bytes([bytes[0], bytes[1]]) % 16384
}

/// Whether `endpoint` got the port its key gives, so its ticket is the one of
/// earlier runs with the same key.
pub fn holds_key_port(endpoint: &Endpoint) -> bool {
    let port = port_for(&endpoint.id());
    endpoint
        .bound_sockets()
        .iter()
        .any(|addr| addr.port() == port)
}

fn base_builder(options: &EndpointOptions) -> iroh::endpoint::Builder {
    let relay_mode = match &options.relay {
        Relay::Default => RelayMode::Default,
        Relay::Disabled => RelayMode::Disabled,
        // A plain-HTTP relay (a self-hosted or test one) offers no QUIC address
        // discovery; probing for it would hold the ticket back for seconds.
        Relay::Custom(url) if url.scheme() == "http" => {
            RelayMode::Custom(RelayMap::from(RelayConfig::new(url.clone(), None)))
        }
        Relay::Custom(url) => RelayMode::custom([url.clone()]),
    };
    let mut builder = Endpoint::builder(presets::Minimal)
        .secret_key(options.secret_key.clone())
        .relay_mode(relay_mode)
        .transport_config(options.transport.config());
    if options.accept {
        builder = builder.alpns(vec![ALPN.to_vec(), HELLO_ALPN.to_vec()]);
    }
    if let Some(allow) = options.allow.clone() {
        builder = builder.hooks(allow);
    }
    builder
}

/// The endpoint's ticket: its direct addresses at once, and its home relay when
/// one is configured and answers within [`RELAY_WAIT`].
pub async fn ticket(endpoint: &Endpoint, relay: &Relay) -> Result<EndpointTicket> {
    if *relay != Relay::Disabled {
        tokio::time::timeout(RELAY_WAIT, endpoint.online())
            .await
            .ok();
    }
    let addr = endpoint.addr();
    // A ticket without addresses would only fail later, on every sender.
    if addr.is_empty() {
        bail!(
            "no address to put in the ticket: the endpoint found no reachable address where it is bound, and has no relay"
        );
    }
    Ok(EndpointTicket::new(addr))
}

pub fn parse_ticket(text: &str) -> Result<EndpointAddr> {
    let ticket = EndpointTicket::from_str(text.trim()).map_err(|err| {
        anyhow!("invalid ticket: {err} (a ticket is the line `tensor-iroh listen` prints, starting with \"endpoint\")")
    })?;
    let addr = ticket.endpoint_addr().clone();
    if addr.is_empty() {
        bail!("invalid ticket: it holds no address to reach the listener");
    }
    Ok(addr)
}
