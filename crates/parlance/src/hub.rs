//! `-hf owner/repo[:QUANT]`: downloads a GGUF from the Hugging Face hub (or the hub at
//! `HF_ENDPOINT`) into the cache once, with a progress bar, as llama-server does.

use anyhow::{bail, Context};
use parlance_protocol::json::Fields;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// `$PARLANCE_CACHE`, else `~/.cache/parlance`: downloads and derived model files.
pub(crate) fn cache_root() -> PathBuf {
    if let Ok(dir) = std::env::var("PARLANCE_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/parlance")
}

fn cache_dir() -> PathBuf {
    cache_root().join("hf")
}

/// The GGUF file of a repository listing that `quant` asks for: the one whose name
/// contains it, else Q4_K_M, else the first. Projector files (mmproj) never count.
pub(crate) fn pick_file(files: &[String], quant: Option<&str>) -> Option<String> {
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

/// `owner/repo[:QUANT]` split and checked.
fn parse_spec(spec: &str) -> anyhow::Result<(&str, Option<&str>)> {
    let (repo, quant) = match spec.split_once(':') {
        Some((r, q)) => (r, Some(q)),
        None => (spec, None),
    };
    if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
        bail!("{spec:?}: expected owner/repo or owner/repo:QUANT (e.g. bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M)");
    }
    Ok((repo, quant))
}

/// The file of a repository that `quant` asks for, with the size and SHA-256 the hub
/// lists for it (`?blobs=true`), when it does.
struct Chosen {
    file: String,
    size: Option<u64>,
    sha256: Option<String>,
}

fn choose(
    client: &reqwest::blocking::Client,
    endpoint: &str,
    spec: &str,
) -> anyhow::Result<Chosen> {
    let (repo, quant) = parse_spec(spec)?;
    let listing_url = format!("{endpoint}/api/models/{repo}?blobs=true");
    let listing: serde_json::Value = authed(client.get(&listing_url))
        .send()
        .and_then(reqwest::blocking::Response::error_for_status)
        .with_context(|| format!("{spec}: cannot list the repository at {listing_url}"))?
        .json()
        .with_context(|| format!("{spec}: unexpected answer from {listing_url}"))?;
    let siblings = listing
        .field("siblings")
        .as_array()
        .cloned()
        .unwrap_or_default();
    let files: Vec<String> = siblings
        .iter()
        .filter_map(|f| f["rfilename"].as_str().map(str::to_string))
        .collect();
    let Some(file) = pick_file(&files, quant) else {
        bail!(
            "{spec}: no GGUF file{} in {repo} (files: {})",
            quant
                .map(|q| format!(" matching {q:?}"))
                .unwrap_or_default(),
            files.join(", ")
        );
    };
    let entry = siblings
        .iter()
        .find(|f| f["rfilename"].as_str() == Some(file.as_str()));
    let lfs = entry.map(|e| &e["lfs"]);
    Ok(Chosen {
        size: lfs
            .and_then(|l| l["size"].as_u64())
            .or_else(|| entry.and_then(|e| e["size"].as_u64())),
        sha256: lfs
            .and_then(|l| l["sha256"].as_str())
            .map(str::to_ascii_lowercase),
        file,
    })
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .unwrap_or_else(|_| DEFAULT_ENDPOINT.into())
        .trim_end_matches('/')
        .to_string()
}

/// Downloads (once) the GGUF `spec` names into the cache and returns its path (`-hf`).
pub(crate) fn download(spec: &str) -> anyhow::Result<PathBuf> {
    let (repo, _) = parse_spec(spec)?;
    fetch(spec, &cache_dir().join(repo))
}

/// `parlance pull`: the GGUF `spec` names, into `dir` under its own file name.
pub(crate) fn pull(spec: &str, dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    fetch(spec, dir)
}

fn fetch(spec: &str, dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let (repo, _) = parse_spec(spec)?;
    let endpoint = endpoint();
    let client = client()?;
    let chosen = choose(&client, &endpoint, spec)?;
    let dest = dir.join(&chosen.file);
    if dest.is_file() && chosen.size.is_none_or(|n| size_of(&dest) == n) {
        eprintln!("using {} (already here)", dest.display());
        return Ok(dest);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let url = format!("{endpoint}/{repo}/resolve/main/{}", chosen.file);
    let partial = dest.with_extension("gguf.partial");
    receive(&client, spec, &url, &partial, chosen.size)?;
    if let Err(e) = check(&partial, &chosen) {
        if let Err(rm) = std::fs::remove_file(&partial) {
            bail!(
                "{spec}: {e}; the download could not be removed ({}): {rm}",
                partial.display()
            );
        }
        bail!("{spec}: {e}; the download was removed");
    }
    std::fs::rename(&partial, &dest)?;
    eprintln!("saved {}", dest.display());
    Ok(dest)
}

fn size_of(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Streams `url` into `partial`, going on from what an interrupted download left there.
fn receive(
    client: &reqwest::blocking::Client,
    spec: &str,
    url: &str,
    partial: &std::path::Path,
    size: Option<u64>,
) -> anyhow::Result<()> {
    let have = size_of(partial);
    let mut req = authed(client.get(url)).timeout(Duration::from_secs(24 * 3600));
    if have > 0 && size.is_none_or(|n| have < n) {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    eprintln!("downloading {url}");
    let mut resp = req
        .send()
        .and_then(reqwest::blocking::Response::error_for_status)
        .with_context(|| format!("{spec}: download of {url} failed"))?;
    // 206: the server goes on where the partial file stops; 200: from the start.
    let resumed = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let start = if resumed { have } else { 0 };
    if resumed {
        eprintln!("resuming after {have} bytes");
    }
    let bar = indicatif::ProgressBar::new(
        size.or(resp.content_length().map(|n| n + start))
            .unwrap_or(0),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bytes}/{total_bytes} [{bar:40}] {bytes_per_sec}, {eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_position(start);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = resp
            .read(&mut buf)
            .with_context(|| format!("{spec}: download interrupted (run it again to resume)"))?;
        if n == 0 {
            break;
        }
        out.write_all(buf.get(..n).unwrap_or_default())?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.flush()?;
    Ok(())
}

/// The size and SHA-256 the hub listed, when it did.
fn check(path: &std::path::Path, chosen: &Chosen) -> anyhow::Result<()> {
    use sha2::Digest;
    if let Some(n) = chosen.size {
        let got = size_of(path);
        if got != n {
            bail!("the file is {got} bytes, the hub says {n}");
        }
    }
    if let Some(want) = &chosen.sha256 {
        let mut f = std::fs::File::open(path)?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(buf.get(..n).unwrap_or_default());
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if &got != want {
            bail!("sha256 {got} is not the hub's {want}");
        }
    }
    Ok(())
}

/// `parlance rm`: a model's file(s) in `dir`: `NAME.gguf` (and the projectors named
/// after it), or the folder `NAME`.
pub(crate) fn remove(name: &str, dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("{name:?} is not a model name");
    }
    let folder = dir.join(name);
    if folder.is_dir() {
        std::fs::remove_dir_all(&folder)?;
        return Ok(vec![folder]);
    }
    let file = dir.join(format!("{name}.gguf"));
    if !file.is_file() {
        bail!("no model {name} in {}", dir.display());
    }
    let mut gone = vec![file.clone()];
    std::fs::remove_file(&file)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with("mmproj") && n.contains(name) && n.ends_with(".gguf") {
            std::fs::remove_file(e.path())?;
            gone.push(e.path());
        }
    }
    Ok(gone)
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
