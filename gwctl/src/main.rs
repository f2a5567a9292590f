//! gwctl: the operator CLI of the gateway.
//!
//! Every verb talks to the control plane over gRPC (Admin or Registry API),
//! except `token issue` (local signing) and `dev` (a whole gateway in this
//! process). Failures print one `error: <reason>` line and exit non-zero.

mod cli;
mod client;
mod commands;
mod dev;
mod echo;
mod jwt;
mod output;
mod signal;
mod views;

use clap::error::ErrorKind;
use clap::Parser;
use std::process::ExitCode;

/// Exit code of a failed command.
const EXIT_FAILURE: u8 = 1;
/// Exit code of a command line that could not be parsed.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    // `diff` answers as `kubectl diff` does: 1 for a difference, 2 for an error.
    let diff = matches!(cli.command, cli::Command::Diff(_));
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<commands::Differs>() => ExitCode::from(EXIT_FAILURE),
        Err(error) if diff => {
            fail(&format!("{error:#}"));
            ExitCode::from(EXIT_USAGE)
        }
        Err(error) => fail(&format!("{error:#}")),
    }
}

fn fail(reason: &str) -> ExitCode {
    eprintln!("error: {}", client::one_line(reason));
    ExitCode::from(EXIT_FAILURE)
}

/// Help and version go to stdout with exit 0; anything else is one line.
fn usage_error(error: clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            eprintln!("error: {}", usage_reason(&error.render().to_string()));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// clap's multi-line message reduced to its reason, on one line.
fn usage_reason(rendered: &str) -> String {
    let reason: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let joined = reason.join(" ");
    let reason = joined.strip_prefix("error: ").unwrap_or(&joined);
    format!("{reason} (see --help)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let error =
            cli::Cli::try_parse_from(["gwctl", "register", "--address", "x:1"]).unwrap_err();
        let reason = usage_reason(&error.render().to_string());
        assert!(!reason.contains('\n'));
        assert!(reason.contains("--service"), "{reason}");
    }
}
