//! One module per verb; [`run`] dispatches the parsed command line. What
//! every verb shares (the connection context, writing output) is in
//! `context`, so no verb imports this dispatcher.

mod apikey;
mod apply;
mod breaker;
mod cache;
mod context;
mod diff;
mod drain;
mod get;
mod register;
mod token;
mod topology;

pub use diff::Differs;

use crate::cli::{Cli, Command};
use context::{emit, Context, TlsFiles};

/// Runs the verb of `cli`.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Context {
        control_plane: cli.control_plane,
        tls: TlsFiles {
            ca_file: cli.ca_file,
            client_cert: cli.client_cert,
            client_key: cli.client_key,
        },
        format: cli.output,
    };
    match cli.command {
        Command::Apply(args) => apply::run(&ctx, args).await,
        Command::Get(args) => get::run(&ctx, args).await,
        Command::Register(args) => register::run(&ctx, args).await,
        Command::Deregister(args) => register::deregister(&ctx, args).await,
        Command::Drain(args) => drain::drain(&ctx, args).await,
        Command::Undrain(args) => drain::undrain(&ctx, args).await,
        Command::Topology(args) => topology::run(&ctx, args).await,
        Command::Breaker(args) => breaker::run(&ctx, args).await,
        Command::Cache(args) => cache::run(&ctx, args).await,
        Command::Apikey(args) => apikey::run(&ctx, args).await,
        Command::Token(args) => token::run(&ctx, args),
        Command::Dev(args) => crate::dev::run(args).await,
        Command::Diff(args) => diff::run(&ctx, args).await,
        Command::Completion(args) => completion(args.shell),
    }
}

/// Prints the completion script of `shell`: every verb, flag and value.
fn completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "gwctl",
        &mut script,
    );
    emit(&String::from_utf8(script)?)
}
