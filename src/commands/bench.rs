//! `tensor-iroh bench`: connect time, per-size round trips and throughput, and the
//! small-tensor rate, against a running listener or one inside this process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use clap::Args;
use iroh::EndpointAddr;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{NetArgs, TimeoutArgs, parse_tickets};
use crate::codec::{Kind, Layout};
use crate::protocol::client;
use crate::protocol::coding::{Coding, Compress};
use crate::protocol::endpoint::{self, EndpointOptions, Relay};
use crate::protocol::path::{PathReport, PeerPath};
use crate::protocol::pool::Pool;
use crate::protocol::stripes::Striping;
use crate::protocol::transfer::{Progress, Segment, Source, Traffic};
use crate::protocol::transport::{Congestion, Transport};
use crate::service::{STALL_TIMEOUT, Service, Uploads};
use crate::ui::{Ui, events, human_bytes, mb_per_s};

const EXAMPLES: &str = "Examples:
  tensor-iroh bench                                   # against a listener in this process
  tensor-iroh bench <TICKET> --json | jq .mb_per_s    # against a running listener
  tensor-iroh bench --raw --sizes 1M,64M              # the bare iroh stream, for comparison";

/// Bench data is this block repeated, so a large size costs no large buffer.
const BLOCK: usize = 8 << 20;
/// The largest size a run takes: hours of transfer, and a list of pieces that
/// still fits in a few megabytes.
const MAX_SIZE: u64 = 1 << 40;
/// Data moved per size when --iters is not given, so every size takes similar time.
const BYTES_PER_SIZE: u64 = 768 << 20;
/// Tensors in the small-tensor rate measurement.
const SMALL_TENSORS: usize = 2000;
const SMALL_TENSOR_BYTES: usize = 4096;

/// Measure latency and throughput against a listener (or one in this process)
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct BenchArgs {
    /// Ticket of a running `tensor-iroh listen`; without it, a listener starts in
    /// this process on loopback with relays off
    pub ticket: Option<String>,
    /// Sizes to measure, with K, M, G or T suffixes (binary; 1.5M is fine)
    #[arg(long, value_delimiter = ',', default_value = "4K,64K,1M,16M,256M", value_parser = parse_size)]
    pub sizes: Vec<u64>,
    /// Round trips per size [default: enough to move 768 MiB, between 3 and 200]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: Option<u32>,
    /// Small tensors in flight at once for the tensors-per-second figure
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Measure a bare iroh stream: no files, no hashing, no acknowledgement per chunk
    #[arg(long)]
    pub raw: bool,
    /// One JSON object per size on stdout and nothing else
    #[arg(long)]
    pub json: bool,
    /// Compress on the way (the data is then synthetic bf16 weights, not random
    /// bytes): `on` measures the codec, `auto` the default of send and pull;
    /// `off` measures the transport alone
    #[arg(long, default_value = "off", value_name = "auto|on|off")]
    pub compress: Compress,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub timeout: TimeoutArgs,
}

fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let invalid = || anyhow::anyhow!("{text:?} is not a size like 4K, 1.5M or 1G");
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(invalid()),
    };
    let size = match number.split_once('.') {
        None => number
            .parse::<u64>()
            .ok()
            .and_then(|v| v.checked_mul(1 << shift)),
        Some((whole, fraction)) => exact_bytes(whole, fraction, shift),
    };
    match size {
        Some(size @ 1..=MAX_SIZE) => Ok(size),
        _ => bail!("{text:?} is not a whole number of bytes between 1 and 1 TiB"),
    }
}

/// `whole.fraction` units of `1 << shift` bytes, when that is a whole number
/// of bytes: 1.5K is 1536, 0.3K (307.2) is none. Exact, where a float would
/// round 1.0000000000000000001K to 1024.
fn exact_bytes(whole: &str, fraction: &str, shift: u32) -> Option<u64> {
    // More digits than this could overflow below; no size needs them.
    const MAX_DIGITS: usize = 24;
    if fraction.is_empty()
        || fraction.len() > MAX_DIGITS
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let part = fraction.parse::<u128>().ok()? << shift;
    if !part.is_multiple_of(scale) {
        return None;
    }
    u64::try_from(whole.checked_mul(1 << shift)? + part / scale).ok()
}

/// One size's measurement.
struct Row {
    size: u64,
    iters: usize,
    p50: Duration,
    p99: Duration,
    mb_per_s: f64,
    /// File bytes per wire byte.
    compression: f64,
    /// The path to the listener after this size: counters cover the run so far.
    path: Option<PathReport>,
}

pub async fn run(args: BenchArgs, ui: Ui) -> Result<()> {
    let local = match &args.ticket {
        Some(_) => None,
        None => Some(LocalListener::start(args.net.congestion).await?),
    };
    let (addr, pool) = match (&args.ticket, &local) {
        (Some(ticket), _) => (
            parse_tickets([ticket])?.remove(0),
            Arc::new(args.net.pool(&args.timeout).await?),
        ),
        (None, Some(local)) => {
            let net = NetArgs {
                relay: Relay::Disabled,
                ..args.net.clone()
            };
            (local.addr.clone(), Arc::new(net.pool(&args.timeout).await?))
        }
        (None, None) => unreachable!("a local listener starts without a ticket"),
    };
    if !ui.json_mode() {
        let target = match &args.ticket {
            Some(_) => format!("listener {}", addr.id.fmt_short()),
            None => "a listener in this process (loopback, relays off)".to_string(),
        };
        let path = if args.raw {
            "bare streams"
        } else {
            "checked file transfers"
        };
        ui.say(format!("benchmarking {path} against {target}"));
    }
    let result = measure(&args, &ui, &pool, &addr).await;
    ui.paths(&[PeerPath::of(&pool, addr.id).await]);
    pool.close().await;
    if let Some(local) = local {
        local.stop().await;
    }
    result
}

async fn measure(args: &BenchArgs, ui: &Ui, pool: &Arc<Pool>, addr: &EndpointAddr) -> Result<()> {
    let started = Instant::now();
    pool.connection(addr).await?;
    let connect = started.elapsed();
    let coding = Coding::new(args.compress, Arc::default());
    let block = if coding.in_blocks() {
        weights_block()
    } else {
        random_block()
    };
    let how = How {
        raw: args.raw,
        coding,
    };
    let tensors_per_s =
        small_tensor_rate(pool, addr, &block, args.concurrency as usize, &how).await?;
    // Each size is reported as soon as it is measured: a run that fails later
    // keeps what it measured.
    report_header(ui, connect, tensors_per_s);
    for &size in &args.sizes {
        let iters = args.iters.map_or_else(
            || (BYTES_PER_SIZE / size).clamp(3, 200) as usize,
            |n| n as usize,
        );
        let pieces = pieces_of(&block, size);
        let mut times = Vec::with_capacity(iters);
        let mut traffic = Traffic::default();
        for _ in 0..iters {
            let started = Instant::now();
            let sent = one_transfer(pool, addr, &pieces, &how).await?;
            times.push(started.elapsed());
            traffic.data_bytes += sent.data_bytes;
            traffic.wire_bytes += sent.wire_bytes;
        }
        let total: Duration = times.iter().sum();
        times.sort();
        let row = Row {
            size,
            iters,
            p50: percentile(&times, 50),
            p99: percentile(&times, 99),
            mb_per_s: mb_per_s(size * iters as u64, total),
            compression: traffic.compression(),
            path: PathReport::to_peer(pool, &addr.id).await,
        };
        report_row(ui, args.raw, connect, tensors_per_s, &row);
    }
    Ok(())
}

/// How each transfer goes: on a bare stream, or as a file coded by `coding`.
#[derive(Clone)]
struct How {
    raw: bool,
    coding: Coding,
}

/// Sends one file of `pieces` (checked and acknowledged), or one bare stream;
/// returns what crossed the network.
async fn one_transfer(
    pool: &Pool,
    addr: &EndpointAddr,
    pieces: &[Bytes],
    how: &How,
) -> Result<Traffic> {
    let size = pieces.iter().map(|piece| piece.len() as u64).sum();
    if how.raw {
        client::raw_upload(pool, addr, pieces).await?;
        return Ok(Traffic {
            data_bytes: size,
            wire_bytes: size,
        });
    }
    let segments = pieces.iter().cloned().map(Segment::Bytes).collect();
    let mut layout = Layout::default();
    layout.push(0, size, Kind::Float { width: 2 });
    let mut source = Source::new(
        "bench.safetensors".into(),
        "safetensors",
        1,
        b"bench",
        segments,
    )
    .with_layout(layout)
    .coded_by(how.coding.clone());
    source.offer.discard = true;
    // Timed one at a time, so each takes the streams a lone file gets.
    let sent = client::upload(
        pool,
        addr,
        &source,
        Striping::SharedAmong(1),
        &Progress::default(),
    )
    .await?;
    Ok(sent.traffic)
}

/// Tensors per second for many small files, `concurrency` of them in flight.
async fn small_tensor_rate(
    pool: &Arc<Pool>,
    addr: &EndpointAddr,
    block: &Bytes,
    concurrency: usize,
    how: &How,
) -> Result<f64> {
    let pieces = Arc::new(pieces_of(block, SMALL_TENSOR_BYTES as u64));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (pool, addr, pieces, next, how) = (
            pool.clone(),
            addr.clone(),
            pieces.clone(),
            next.clone(),
            how.clone(),
        );
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < SMALL_TENSORS {
                one_transfer(&pool, &addr, &pieces, &how).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker??;
    }
    Ok(SMALL_TENSORS as f64 / started.elapsed().as_secs_f64())
}

fn pieces_of(block: &Bytes, size: u64) -> Vec<Bytes> {
    let mut pieces = Vec::new();
    let mut left = size;
    while left > 0 {
        let take = left.min(BLOCK as u64) as usize;
        pieces.push(block.slice(..take));
        left -= take as u64;
    }
    pieces
}

/// Bench data that compresses like trained weights: bf16 values spread around
/// zero as a normal distribution of deviation 0.02 (an initialised layer).
fn weights_block() -> Bytes {
    let mut state = 0x2545_f491_4f6c_dd1du64 ^ std::process::id() as u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut block = Vec::with_capacity(BLOCK);
    while block.len() < BLOCK {
        // Box-Muller: two uniforms make a normal sample.
        let (u, v) = (uniform().max(f64::MIN_POSITIVE), uniform());
        let normal = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        let bits = ((normal * 0.02) as f32).to_bits();
        block.extend_from_slice(&((bits >> 16) as u16).to_le_bytes());
    }
    Bytes::from(block)
}

fn random_block() -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    let mut block = Vec::with_capacity(BLOCK);
    while block.len() < BLOCK {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        block.extend_from_slice(&state.to_le_bytes());
    }
    Bytes::from(block)
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    let index = ((sorted.len() * percent).div_ceil(100)).saturating_sub(1);
    sorted[index.min(sorted.len() - 1)]
}

/// The run-wide figures and the table's head; JSON has them on every row.
fn report_header(ui: &Ui, connect: Duration, tensors_per_s: f64) {
    if ui.json_mode() {
        return;
    }
    ui.out(format!(
        "connect        {:.1} ms",
        connect.as_secs_f64() * 1e3
    ));
    ui.out(format!(
        "small tensors  {tensors_per_s:.0} per second ({} each)",
        human_bytes(SMALL_TENSOR_BYTES as u64)
    ));
    ui.out(format!(
        "{:>10}  {:>6}  {:>11}  {:>11}  {:>9}",
        "size", "iters", "p50", "p99", "MB/s"
    ));
}

fn report_row(ui: &Ui, raw: bool, connect: Duration, tensors_per_s: f64, row: &Row) {
    if ui.json_mode() {
        ui.event(events::BenchSize {
            size_bytes: row.size,
            iters: row.iters,
            p50_us: row.p50.as_secs_f64() * 1e6,
            p99_us: row.p99.as_secs_f64() * 1e6,
            mb_per_s: row.mb_per_s,
            connect_ms: connect.as_secs_f64() * 1e3,
            tensors_per_s,
            raw,
            compression: row.compression,
            path: row.path.clone(),
        });
        return;
    }
    ui.out(format!(
        "{:>10}  {:>6}  {:>11}  {:>11}  {:>9.1}",
        human_bytes(row.size),
        row.iters,
        format_duration(row.p50),
        format_duration(row.p99),
        row.mb_per_s
    ));
}

fn format_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0} us")
    } else if micros < 1e6 {
        format!("{:.2} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

/// A listener inside this process, on loopback with relays off, that checks
/// bench data and discards it.
struct LocalListener {
    addr: EndpointAddr,
    shutdown: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl LocalListener {
    async fn start(congestion: Congestion) -> Result<LocalListener> {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let endpoint = endpoint::bind(EndpointOptions {
            secret_key: iroh::SecretKey::generate(),
            relay: Relay::Disabled,
            transport: Transport {
                congestion,
                patience: STALL_TIMEOUT,
            },
            bind: Some(loopback),
            port_from_key: false,
            accept: true,
            allow: None,
        })
        .await?;
        let addr = endpoint.addr();
        let (events, _) = mpsc::unbounded_channel();
        let service = Service::new(Uploads::Refused, None, events, None, Arc::default());
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(service.run(endpoint, shutdown.clone()));
        Ok(LocalListener {
            addr,
            shutdown,
            serving,
        })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.serving)
            .await
            .ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse_size("0.5k").unwrap(), 512);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert!(parse_size("0").is_err());
        assert!(parse_size("0.3K").is_err(), "not whole bytes");
        assert!(parse_size("2T").is_err(), "more than 1 TiB");
        assert!(parse_size("1.2.3M").is_err());
        assert!(
            parse_size("1.0000000000000000001K").is_err(),
            "not whole bytes"
        );
        assert_eq!(parse_size("1.00000000000000000000K").unwrap(), 1024);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
    }
}
