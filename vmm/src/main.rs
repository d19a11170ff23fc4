//! `vmm`: composes the workspace's crates into a virtual machine monitor.
//!
//! Parse the command line, map RAM, load the image, create the VM, put the
//! devices on the bus, start the vCPU on its thread, wait for the outcome and
//! turn it into the process exit status. Everything else lives in the crates.

mod api;
mod cli;
mod config;
mod devices;
mod event_loop;
mod flag_hints;
mod machine;
mod snapshot;

use std::process::ExitCode;

use clap::Parser;
use vmm_dispatch::EXIT_VMM_ERROR;

use cli::Cli;

/// The error and its causes on one line, leaving out causes whose text the
/// message already includes (crate errors quote their source).
fn one_line(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

fn init_logging(level: Option<&str>) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    if let Some(level) = level {
        builder.parse_filters(level);
    }
    builder.init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    // A panic must not leave the user's terminal in raw mode.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        vmm_devices::console::restore_terminal();
        default_hook(info);
    }));
    match machine::run(&cli) {
        Ok(outcome) => {
            if outcome.is_clean() {
                log::info!("{outcome}");
            } else {
                eprintln!("vmm: {outcome}");
            }
            ExitCode::from(outcome.exit_status())
        }
        Err(err) => {
            eprintln!("vmm: error: {}", one_line(&err));
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}
