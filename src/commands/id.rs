//! `tensor-iroh id`: print this machine's endpoint id.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::protocol::endpoint::{self, KeySource};
use crate::ui::Ui;

const EXAMPLES: &str = "Examples:
  tensor-iroh id --key ~/.tensor-iroh.key      # give this to a listener's --allow
  IROH_SECRET=<64 hex> tensor-iroh id";

/// Print the endpoint id of a key (creating the key file when missing)
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct IdArgs {
    /// Secret key file, created with mode 0600 when missing; without it, IROH_SECRET
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

pub fn run(args: IdArgs, ui: Ui) -> Result<()> {
    let source = match &args.key {
        Some(path) => KeySource::File(path),
        None if std::env::var_os(endpoint::SECRET_ENV).is_some() => KeySource::EnvOrFresh,
        None => anyhow::bail!(
            "give --key FILE or set {}: a fresh key's id would be of no use",
            endpoint::SECRET_ENV
        ),
    };
    let key = endpoint::secret_key(source)?;
    ui.out(key.public().to_string());
    Ok(())
}
