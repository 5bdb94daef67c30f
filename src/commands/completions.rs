//! `tensor-iroh completions`: shell completion scripts.

use anyhow::Result;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

const EXAMPLES: &str = "Examples:
  tensor-iroh completions bash > ~/.local/share/bash-completion/completions/tensor-iroh
  tensor-iroh completions zsh > ~/.zfunc/_tensor-iroh
  tensor-iroh completions fish > ~/.config/fish/completions/tensor-iroh.fish";

/// Print a completion script for a shell
#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: CompletionsArgs) -> Result<()> {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "tensor-iroh",
        &mut std::io::stdout(),
    );
    Ok(())
}
