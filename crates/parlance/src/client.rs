//! `parlance models` and `parlance chat`: a terminal client for a running server, or
//! (`chat -m model.gguf`) for a local model served in-process on a loopback port.

use anyhow::{bail, Context};
use clap::Args;
use parlance_protocol::json::Fields;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// Base URL of the server's API.
    #[arg(long, env = "PARLANCE_URL", default_value = "http://127.0.0.1:8080/v1")]
    pub url: String,

    /// API key, when the server needs one.
    #[arg(long = "api-key", env = "PARLANCE_API_KEY")]
    pub api_key: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Model to talk to (default: the server's first).
    #[arg(long = "model")]
    pub model: Option<String>,

    /// Chat with this GGUF file, loaded in-process, instead of a running server.
    #[arg(short = 'm', long = "model-file")]
    pub model_file: Option<PathBuf>,

    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,

    /// Sampling temperature.
    #[arg(long)]
    pub temperature: Option<f32>,

    /// Most tokens per answer.
    #[arg(long = "max-tokens")]
    pub max_tokens: Option<u32>,
}

fn http() -> anyhow::Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(None)
        .build()?)
}

fn get_models(server: &ServerArgs) -> anyhow::Result<Vec<Value>> {
    let url = format!("{}/models", server.url.trim_end_matches('/'));
    let mut req = http()?.get(&url);
    if let Some(k) = &server.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .with_context(|| format!("cannot reach {url}: is `parlance serve` running?"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .with_context(|| format!("{url}: not a JSON answer"))?;
    if !status.is_success() {
        bail!(
            "{url}: HTTP {status}: {}",
            body.field("error")
                .field("message")
                .as_str()
                .unwrap_or("error")
        );
    }
    Ok(body.field("data").as_array().cloned().unwrap_or_default())
}

pub(crate) fn models(server: ServerArgs) -> anyhow::Result<()> {
    let models = get_models(&server)?;
    println!(
        "{:<40} {:>10} {:>12}  OWNED BY",
        "MODEL", "CONTEXT", "MAX OUTPUT"
    );
    for m in models {
        let num = |k: &str| {
            m.field(k)
                .as_u64()
                .map_or("-".to_string(), |n| n.to_string())
        };
        println!(
            "{:<40} {:>10} {:>12}  {}",
            m.field("id").as_str().unwrap_or("?"),
            num("context_length"),
            num("max_output_tokens"),
            m.field("owned_by").as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Sends one streamed turn; prints the answer as it arrives and returns it.
fn turn(
    client: &reqwest::blocking::Client,
    args: &ChatArgs,
    model: &str,
    messages: &[Value],
) -> anyhow::Result<String> {
    let url = format!("{}/chat/completions", args.server.url.trim_end_matches('/'));
    let mut body = json!({"model": model, "messages": messages, "stream": true});
    if let Some(t) = args.temperature {
        body.set("temperature", json!(t));
    }
    if let Some(m) = args.max_tokens {
        body.set("max_tokens", json!(m));
    }
    let mut req = client.post(&url).json(&body);
    if let Some(k) = &args.server.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().with_context(|| format!("cannot reach {url}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let v: Value = resp.json().unwrap_or_default();
        bail!(
            "HTTP {status}: {}",
            v.field("error")
                .field("message")
                .as_str()
                .unwrap_or("error")
        );
    }
    let mut answer = String::new();
    let mut out = std::io::stdout();
    for line in BufReader::new(resp).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data).unwrap_or_default();
        if let Some(msg) = v.field("error").field("message").as_str() {
            bail!("{msg}");
        }
        let first = v.field("choices").get(0).unwrap_or_default();
        if let Some(text) = first.field("delta").field("content").as_str() {
            answer.push_str(text);
            print!("{text}");
            out.flush()?;
        }
    }
    println!();
    Ok(answer)
}

pub(crate) fn chat(
    mut args: ChatArgs,
    serve_local: impl FnOnce(PathBuf) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    if let Some(file) = args.model_file.take() {
        args.server.url = serve_local(file)?;
        args.server.api_key = None;
    }
    let model = match &args.model {
        Some(m) => m.clone(),
        None => get_models(&args.server)?
            .first()
            .and_then(|m| m["id"].as_str().map(str::to_string))
            .context("the server serves no models")?,
    };
    let client = http()?;
    let mut messages: Vec<Value> = Vec::new();
    if let Some(s) = &args.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    let keep = messages.len();
    eprintln!("chatting with `{model}`: /reset starts over, /exit or Ctrl-D leaves");
    let stdin = std::io::stdin();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                messages.truncate(keep);
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": line}));
        match turn(&client, &args, &model, &messages) {
            Ok(answer) => messages.push(json!({"role": "assistant", "content": answer})),
            Err(e) => {
                eprintln!("error: {e:#}");
                messages.pop();
            }
        }
    }
}
