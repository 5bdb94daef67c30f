//! `tensor-iroh bench`: latency and throughput against a listener.

use anyhow::Result;
use clap::Args;

use super::{NetArgs, TimeoutArgs};
use crate::ui::Ui;

/// Measure latency and throughput
#[derive(Debug, Args)]
pub struct BenchArgs {
    pub ticket: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub timeout: TimeoutArgs,
}

pub async fn run(_args: BenchArgs, _ui: Ui) -> Result<()> {
    anyhow::bail!("not yet")
}
