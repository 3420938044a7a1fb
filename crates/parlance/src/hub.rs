//! `-hf owner/repo[:QUANT]`: downloads a GGUF from the Hugging Face hub (or the hub at
//! `HF_ENDPOINT`) into the cache once, with a progress bar, as llama-server does.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PARLANCE_CACHE") {
        return PathBuf::from(dir).join("hf");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/parlance/hf")
}

/// The GGUF file of a repository listing that `quant` asks for: the one whose name
/// contains it, else Q4_K_M, else the first. Projector files (mmproj) never count.
pub fn pick_file(files: &[String], quant: Option<&str>) -> Option<String> {
    let ggufs: Vec<&String> = files
        .iter()
        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
        .filter(|f| !f.to_ascii_lowercase().contains("mmproj"))
        .collect();
    let has = |f: &&String, q: &str| f.to_ascii_lowercase().contains(&q.to_ascii_lowercase());
    match quant {
        Some(q) => ggufs.into_iter().find(|f| has(f, q)).cloned(),
        None => ggufs
            .iter()
            .find(|f| has(f, "q4_k_m"))
            .or_else(|| ggufs.first())
            .map(|f| (*f).clone()),
    }
}

fn client() -> anyhow::Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("parlance/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

fn authed(req: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
    match std::env::var("HF_TOKEN") {
        Ok(t) if !t.is_empty() => req.bearer_auth(t),
        _ => req,
    }
}

/// Downloads (once) the GGUF `spec` names and returns its path.
pub fn download(spec: &str) -> anyhow::Result<PathBuf> {
    let (repo, quant) = match spec.split_once(':') {
        Some((r, q)) => (r, Some(q)),
        None => (spec, None),
    };
    if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
        bail!("-hf {spec:?}: expected owner/repo or owner/repo:QUANT (e.g. bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M)");
    }
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into());
    let endpoint = endpoint.trim_end_matches('/');
    let client = client()?;
    let listing_url = format!("{endpoint}/api/models/{repo}");
    let listing: serde_json::Value = authed(client.get(&listing_url))
        .send()
        .and_then(reqwest::blocking::Response::error_for_status)
        .with_context(|| format!("-hf {spec}: cannot list the repository at {listing_url}"))?
        .json()
        .with_context(|| format!("-hf {spec}: unexpected answer from {listing_url}"))?;
    let files: Vec<String> = listing["siblings"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|f| f["rfilename"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let Some(file) = pick_file(&files, quant) else {
        bail!(
            "-hf {spec}: no GGUF file{} in {repo} (files: {})",
            quant
                .map(|q| format!(" matching {q:?}"))
                .unwrap_or_default(),
            files.join(", ")
        );
    };
    let dest = cache_dir().join(repo).join(&file);
    if dest.is_file() {
        eprintln!("using {} (cached)", dest.display());
        return Ok(dest);
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let url = format!("{endpoint}/{repo}/resolve/main/{file}");
    eprintln!("downloading {url}");
    let mut resp = authed(client.get(&url))
        .timeout(Duration::from_secs(24 * 3600))
        .send()
        .and_then(reqwest::blocking::Response::error_for_status)
        .with_context(|| format!("-hf {spec}: download of {url} failed"))?;
    let total = resp.content_length();
    let partial = dest.with_extension("gguf.partial");
    let mut out = std::fs::File::create(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bytes}/{total_bytes} [{bar:40}] {bytes_per_sec}, {eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = resp
            .read(&mut buf)
            .with_context(|| format!("-hf {spec}: download interrupted"))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.flush()?;
    drop(out);
    std::fs::rename(&partial, &dest)?;
    eprintln!("saved {}", dest.display());
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_quant_asked_for_and_never_a_projector() {
        let files: Vec<String> = [
            "README.md",
            "model-Q8_0.gguf",
            "model-Q4_K_M.gguf",
            "mmproj-model-f16.gguf",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            pick_file(&files, Some("q8_0")).as_deref(),
            Some("model-Q8_0.gguf")
        );
        assert_eq!(
            pick_file(&files, None).as_deref(),
            Some("model-Q4_K_M.gguf")
        );
        assert_eq!(pick_file(&files, Some("F16")), None);
        assert_eq!(
            pick_file(&files[..2], None).as_deref(),
            Some("model-Q8_0.gguf")
        );
    }
}
