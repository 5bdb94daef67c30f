use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tensor_iroh::commands::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = cli.check_usage() {
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    commands::init_logging(cli.global.verbose);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = cli.worker_threads() {
        builder.worker_threads(workers);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tensor_iroh::ui::to_stderr(&tensor_iroh::ui::error_line(&format!(
                "cannot start the async runtime: {err}"
            )));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(commands::run(cli));
    // Background tasks (relay probes, idle timers) must not delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = tensor_iroh::ui::errors::describe(&err);
            tensor_iroh::ui::to_stderr(&tensor_iroh::ui::error_line(&message));
            match err.downcast_ref::<commands::Interrupted>() {
                Some(commands::Interrupted(signal)) => ExitCode::from((128 + signal) as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}
