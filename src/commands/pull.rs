//! `tensor-iroh pull`: fetch served files, or the tensors you name.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{NetArgs, TimeoutArgs};
use crate::ui::Ui;

/// Fetch files or tensors from a listener started with --serve
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Ticket printed by `tensor-iroh listen --serve`
    pub ticket: String,
    /// Globs over tensor names
    pub patterns: Vec<String>,
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub stdout: bool,
    #[arg(long)]
    pub list: bool,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub timeout: TimeoutArgs,
}

pub async fn run(_args: PullArgs, _ui: Ui) -> Result<()> {
    anyhow::bail!("not yet")
}
