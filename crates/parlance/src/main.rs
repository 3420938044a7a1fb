//! The `parlance` command.

mod serve;

// The gateway path allocates per request and per streamed chunk; glibc malloc was ~18%
// of its CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "parlance",
    version,
    about = "Self-hosted LLM API server: OpenAI-compatible chat completions from local llama.cpp models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (OpenAI chat completions, /v1/models, /health).
    Serve(serve::ServeArgs),
}

/// llama-server spells some flags with two letters after one dash (`-np`, `-fa`);
/// clap's short flags are one letter, so those are rewritten to their long form.
fn normalize_args(args: impl Iterator<Item = String>) -> Vec<String> {
    args.map(|a| match a.as_str() {
        "-np" => "--parallel".to_string(),
        "-fa" => "--flash-attn".to_string(),
        "-tb" => "--threads".to_string(),
        _ => a,
    })
    .collect()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(normalize_args(std::env::args()));
    match cli.command {
        Command::Serve(args) => serve::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn llama_server_style_flags_parse() {
        let argv = [
            "parlance",
            "serve",
            "-m",
            "a.gguf",
            "-np",
            "8",
            "-c",
            "2048",
            "-t",
            "2",
            "--api-key",
            "k1",
            "--api-key",
            "k2",
        ];
        let cli = Cli::parse_from(normalize_args(argv.iter().map(|s| s.to_string())));
        let Command::Serve(s) = cli.command;
        assert_eq!(s.parallel, 8);
        assert_eq!(s.ctx, Some(2048));
        assert_eq!(s.api_key, vec!["k1", "k2"]);
    }
}
