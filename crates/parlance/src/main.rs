//! The `parlance` command.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

mod client;
mod file_settings;
mod hub;
mod local;
mod logwriter;
mod models_dir;
mod serve;
mod serve_args;
mod teams_cli;
mod tenancy_cli;
mod users_cli;

// The gateway path allocates per request and per streamed chunk; glibc malloc was ~18%
// of its CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Args, Parser, Subcommand};

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

#[derive(Args)]
struct ModelsDirArg {
    /// The folder `serve --models-dir` serves.
    #[arg(
        long = "models-dir",
        env = "PARLANCE_MODELS_DIR",
        default_value = "models"
    )]
    models_dir: std::path::PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (OpenAI chat completions, /v1/models, /health).
    Serve(Box<serve::ServeArgs>),
    /// Chat in the terminal with a running server, or with a GGUF file (-m).
    Chat(client::ChatArgs),
    /// List the models a running server serves.
    Models(client::ServerArgs),
    /// Manage API keys in the store.
    #[command(subcommand)]
    Keys(tenancy_cli::KeysCommand),
    /// Manage accounts (people who sign in to the console) in the store.
    #[command(subcommand)]
    Users(users_cli::UsersCommand),
    /// Manage teams, their members and prepaid balances in the store.
    #[command(subcommand)]
    Teams(teams_cli::TeamsCommand),
    /// Make redemption codes (new-api's top-up codes).
    #[command(subcommand)]
    Codes(teams_cli::CodesCommand),
    /// Usage from the store, grouped by key, model or day.
    Usage(tenancy_cli::UsageArgs),
    /// Download a GGUF from the Hugging Face hub (owner/repo[:QUANT], or the hub at
    /// HF_ENDPOINT) into the models folder, resuming an interrupted download and
    /// checking the size and SHA-256 the hub lists.
    Pull {
        /// owner/repo or owner/repo:QUANT.
        spec: String,
        #[command(flatten)]
        dir: ModelsDirArg,
    },
    /// Delete a model (NAME.gguf and its projectors, or the folder NAME) from the models folder.
    Rm {
        name: String,
        #[command(flatten)]
        dir: ModelsDirArg,
    },
    /// Print the version.
    Version,
}

/// llama-server spells some flags with two or three letters after one dash (`-np`,
/// `-fa`, `-ngl`, `-hf`); clap's short flags are one letter (`-ngl` would read as
/// `-n gl`), so those are rewritten to their long form.
fn normalize_args(args: impl Iterator<Item = String>) -> Vec<String> {
    args.map(|a| match a.as_str() {
        "-np" => "--parallel".to_string(),
        "-fa" => "--flash-attn".to_string(),
        "-tb" => "--threads".to_string(),
        "-ngl" => "--n-gpu-layers".to_string(),
        "-hf" | "-hfr" => "--hf-repo".to_string(),
        _ => a,
    })
    .collect()
}

/// Serves one GGUF in-process on a loopback port for `parlance chat -m`; returns its API URL.
/// `chat -m`: serves the file in this process, on a loopback port the OS picks (bound
/// once and kept), and gives the API's base URL.
fn serve_local(file: std::path::PathBuf) -> anyhow::Result<String> {
    let mut args = serve::ServeArgs::defaults()?;
    args.model = vec![file];
    args.host = "127.0.0.1".into();
    args.port = 0;
    args.parallel = 1;
    serve::init_logging(args.verbose, args.log_format);
    let built = serve::build(args)?;
    let addr = built.local_addr()?;
    // Requests wait in the listen backlog until the accept loop runs.
    std::thread::Builder::new()
        .name("local-server".into())
        .spawn(move || {
            if let Err(e) = built.serve(std::future::pending()) {
                eprintln!("the local server stopped: {e:#}");
            }
        })?;
    Ok(format!("http://{addr}/v1"))
}

fn main() -> anyhow::Result<()> {
    let argv = normalize_args(std::env::args());
    let cli = Cli::parse_from(argv.iter().cloned());
    match cli.command {
        Command::Serve(args) => serve::run(file_settings::apply(*args, &argv)?),
        Command::Chat(args) => client::chat(args, serve_local),
        Command::Models(args) => client::models(args),
        Command::Keys(cmd) => tenancy_cli::keys(cmd),
        Command::Usage(args) => tenancy_cli::usage(args),
        Command::Users(cmd) => users_cli::users(cmd),
        Command::Pull { spec, dir } => {
            hub::pull(&spec, &dir.models_dir).map(|p| println!("{}", p.display()))
        }
        Command::Rm { name, dir } => hub::remove(&name, &dir.models_dir).map(|gone| {
            for p in gone {
                println!("deleted {}", p.display());
            }
        }),
        Command::Teams(cmd) => teams_cli::teams(cmd),
        Command::Codes(cmd) => teams_cli::codes(cmd),
        Command::Version => {
            println!("parlance {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
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
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.parallel, 8);
        assert_eq!(s.ctx, Some(2048));
        assert_eq!(s.api_key, vec!["k1", "k2"]);
    }

    #[test]
    fn llama_server_habits_parse() {
        let argv = [
            "parlance",
            "serve",
            "-ngl",
            "99",
            "--jinja",
            "-hf",
            "a/b:Q4_K_M",
            "-v",
            "--metrics",
            "-n",
            "64",
        ];
        let cli = Cli::parse_from(normalize_args(argv.iter().map(|s| s.to_string())));
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.n_gpu_layers, vec![99]);
        assert_eq!(s.n_predict, Some(64));
        assert_eq!(s.hf_repo, vec!["a/b:Q4_K_M"]);
        assert!(s.jinja && s.verbose && s.metrics);
        // Per model, in order; -1 (all) is a value, not a flag.
        let argv = ["parlance", "serve", "-ngl", "-1", "-ngl", "0"];
        let cli = Cli::parse_from(normalize_args(argv.iter().map(|s| s.to_string())));
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.n_gpu_layers, vec![-1, 0]);
        assert_eq!(serve::ngl_at(&s.n_gpu_layers, 1), Some(0));
        assert_eq!(serve::ngl_at(&[20], 3), Some(20));
        assert_eq!(serve::ngl_at(&[], 0), None);
        assert_eq!(serve::gpu_layers(Some(-1)), None);
        assert_eq!(serve::gpu_layers(Some(99)), Some(99));
    }
}
