//! The command line: one module per subcommand, each with its arguments and its
//! `run` function, in the manner of cargo's `src/bin/cargo/commands`.

pub mod bench;
pub mod completions;
pub mod id;
pub mod listen;
pub mod pull;
pub mod send;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use iroh::{Endpoint, EndpointAddr, EndpointId};

use crate::protocol::coding::{Coding, Compress};
use crate::protocol::endpoint::{self, EndpointOptions, KeySource, Relay};
use crate::protocol::path::PeerPath;
use crate::protocol::pool::Pool;
use crate::protocol::transport::{Congestion, Transport};
use crate::ui::{ColorChoice, Tally, Totals, Ui};

const ABOUT: &str = "Move .npy and .safetensors tensors between machines over iroh";
const LONG_ABOUT: &str = "Move .npy and .safetensors tensors between machines over iroh: \
QUIC with TLS 1.3, dialed by public key, through NATs and relays.

Exit status: 0 on success, 1 on a runtime error, 2 on a usage error.";
const EXAMPLES: &str = "Examples:
  box-a$ tensor-iroh listen --out ./incoming
  box-b$ tensor-iroh send <TICKET> weights.safetensors
  box-b$ tensor-iroh pull <TICKET> 'layers.0.*' --out ./w
  $ tensor-iroh bench";

#[derive(Debug, Parser)]
#[command(name = "tensor-iroh", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More log output on stderr (-v: info, -vv: debug, including iroh's)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors and warnings on stderr; no progress bars
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// When to colour stderr (NO_COLOR turns `auto` off)
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub color: ColorChoice,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Listen(listen::ListenArgs),
    Send(send::SendArgs),
    Pull(pull::PullArgs),
    Bench(bench::BenchArgs),
    Id(id::IdArgs),
    Completions(completions::CompletionsArgs),
}

/// How to reach the network: relays and identity.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// Relay servers: `default` (iroh's public relays), `disabled`, or a relay URL
    #[arg(long, default_value = "default", value_name = "default|disabled|URL")]
    pub relay: Relay,
    /// Secret key file (64 hex characters), created with mode 0600 when missing;
    /// without it, IROH_SECRET or a fresh key
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Congestion controller: `auto` is BBR on paths of 4 ms or more (it holds
    /// its rate through random loss) and CUBIC on shorter ones; `bbr` or
    /// `cubic` everywhere
    #[arg(long, default_value = "auto", value_name = "auto|bbr|cubic")]
    pub congestion: Congestion,
}

/// Whether data is compressed on the way.
#[derive(Debug, Clone, Args)]
pub struct CompressArgs {
    /// Compress tensor data on the way, losslessly (floats by byte planes):
    /// `auto` does while the link is slower than this machine compresses, `on`
    /// always, `off` never
    #[arg(long, default_value = "auto", value_name = "auto|on|off")]
    pub compress: Compress,
}

impl CompressArgs {
    /// The coding stage for this command's transfers.
    pub fn coding(&self) -> Coding {
        Coding::new(self.compress, Arc::default())
    }
}

/// Bounds on a dialer's waits.
#[derive(Debug, Clone, Args)]
pub struct TimeoutArgs {
    /// Give up connecting, or on a peer that stalls, after this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
}

impl TimeoutArgs {
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

impl NetArgs {
    pub fn key_source(&self) -> KeySource<'_> {
        match &self.key {
            Some(path) => KeySource::File(path),
            None => KeySource::EnvOrFresh,
        }
    }

    /// The transport of this command's connections; `patience` is how long it
    /// waits on a silent peer.
    pub fn transport(&self, patience: Duration) -> Transport {
        Transport {
            congestion: self.congestion,
            patience,
        }
    }

    /// An endpoint for dialing out.
    pub async fn dialer(&self, timeout: &TimeoutArgs) -> Result<Endpoint> {
        endpoint::bind(EndpointOptions {
            secret_key: endpoint::secret_key(self.key_source())?,
            relay: self.relay.clone(),
            transport: self.transport(timeout.duration()),
            bind: None,
            port_from_key: false,
            accept: false,
            allow: None,
        })
        .await
    }

    /// A connection pool on a fresh dialing endpoint.
    pub async fn pool(&self, timeout: &TimeoutArgs) -> Result<Pool> {
        Ok(Pool::new(self.dialer(timeout).await?, timeout.duration()))
    }
}

/// Parses every ticket before anything else happens, so a typo fails at once.
pub fn parse_tickets<'a>(
    tickets: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<EndpointAddr>> {
    tickets
        .into_iter()
        .map(|t| endpoint::parse_ticket(t))
        .collect()
}

/// A pull's sources and patterns: `first` is a ticket, and so is each of
/// `rest` up to the first that does not read as one (a pattern never does);
/// the others are patterns. Only `first` must parse: `pull T PATTERN` is as
/// it always was. A listener named twice is one source.
pub fn split_sources(first: &str, rest: &[String]) -> Result<(Vec<EndpointAddr>, Vec<String>)> {
    let mut sources = vec![endpoint::parse_ticket(first)?];
    let mut rest = rest.iter().peekable();
    while let Some(addr) = rest.peek().and_then(|arg| endpoint::parse_ticket(arg).ok()) {
        if sources.iter().all(|known| known.id != addr.id) {
            sources.push(addr);
        }
        rest.next();
    }
    Ok((sources, rest.cloned().collect()))
}

/// The listeners a `send` or `pull` dialed and its pool, once the endpoint is
/// up: for the paths in its summary, also of a command a signal stopped.
pub type Reached = OnceLock<(Vec<EndpointId>, Arc<Pool>)>;

/// Runs a send's or pull's `work` until it ends or a signal stops it, then
/// prints its summary (`verb`: "sent", "pulled") with the path to each peer
/// `reached`. Stopped, it still closes with a summary of the files stored so
/// far; the other side keeps what arrived of the rest for a rerun.
pub async fn until_done_or_stopped(
    verb: &str,
    ui: &Ui,
    tally: &Tally,
    reached: &Reached,
    work: impl Future<Output = (Totals, Result<()>)>,
) -> Result<()> {
    let started = Instant::now();
    let ((totals, result), stopped) = tokio::select! {
        done = work => (done, false),
        signal = interrupted() => ((tally.stopped(), Err(signal.into())), true),
    };
    let paths = paths_then_close(reached, stopped).await;
    let error = result.as_ref().err();
    ui.summary(verb, &totals, started.elapsed(), error, &paths);
    result
}

/// The path to each listener `reached`, for the summary; then closes the pool,
/// unless a signal `stopped` the command: its connections are then left as a
/// killed process's would be.
pub async fn paths_then_close(reached: &Reached, stopped: bool) -> Vec<PeerPath> {
    let Some((peers, pool)) = reached.get() else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    for peer in peers {
        paths.push(PeerPath::of(pool, *peer).await);
    }
    if !stopped {
        pool.close().await;
    }
    paths
}

/// Succeeds when nothing failed; otherwise the first failure, saying how many
/// there were.
pub fn first_failure(mut failures: Vec<anyhow::Error>) -> Result<()> {
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        n => Err(failures
            .remove(0)
            .context(format!("{n} files failed; the first"))),
    }
}

/// A command stopped by Ctrl-C (SIGINT) or SIGTERM; the process exits with
/// 128 plus the signal's number, as shells expect.
#[derive(Debug, Clone, Copy)]
pub struct Interrupted(pub i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.0 == libc::SIGTERM {
            "SIGTERM"
        } else {
            "Ctrl-C"
        };
        write!(f, "interrupted by {name}")
    }
}

impl std::error::Error for Interrupted {}

/// Resolves on Ctrl-C or SIGTERM, saying which.
pub async fn interrupted() -> Interrupted {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => Interrupted(libc::SIGINT),
            _ = term.recv() => Interrupted(libc::SIGTERM),
        },
        Err(_) => {
            tokio::signal::ctrl_c().await.ok();
            Interrupted(libc::SIGINT)
        }
    }
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "tensor_iroh=warn,off",
        1 => "tensor_iroh=info,iroh=warn,warn",
        _ => "tensor_iroh=debug,iroh=debug,info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TENSOR_IROH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(console::colors_enabled_stderr())
        .init();
}

impl Cli {
    /// Async worker threads for this command, where the default (one per core)
    /// is not the best. A listener's work per connection is one noq driver
    /// feeding one receiving task; on separate workers every datagram crosses
    /// cores (the receiving task's first touch of each one was a quarter of its
    /// profile), and hashing and disk writes run on blocking threads anyway.
    /// Half the cores: on two, a 1 GiB send took a median 2.17 s instead of
    /// 2.63 s over 16 interleaved runs; serving a pull was unchanged.
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.command {
            Command::Listen(_) => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                Some((cores / 2).max(1))
            }
            _ => None,
        }
    }

    /// Usage rules beyond what clap checks while parsing.
    pub fn check_usage(&self) -> Result<(), String> {
        match &self.command {
            Command::Send(args) => args.check_usage(),
            Command::Pull(args) => args.check_usage(),
            _ => Ok(()),
        }
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    let global = cli.global;
    let json = match &cli.command {
        Command::Listen(args) => args.json,
        Command::Send(args) => args.json,
        Command::Pull(args) => args.json,
        Command::Bench(args) => args.json,
        Command::Id(_) | Command::Completions(_) => false,
    };
    let ui = Ui::new(json, global.quiet, global.color).with_verbose(global.verbose);
    match cli.command {
        Command::Listen(args) => listen::run(args, ui).await,
        Command::Send(args) => send::run(args, ui).await,
        Command::Pull(args) => pull::run(args, ui).await,
        Command::Bench(args) => bench::run(args, ui).await,
        Command::Id(args) => id::run(args, ui),
        Command::Completions(args) => completions::run(args),
    }
}
