//! Pulling a model from an Ollama-style registry (the OCI distribution API Ollama's
//! registry speaks): the manifest names the model layer by its sha256 digest, and the
//! blob is downloaded beside its destination, resumed from where an interrupted pull
//! stopped, checked against the digest, and only then moved into place.

use futures::StreamExt;
use parlance_core::{Error, ErrorKind};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where Ollama's own `pull` goes.
pub const OLLAMA_REGISTRY: &str = "https://registry.ollama.ai";

const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// `[host/][namespace/]model[:tag]`, as `ollama pull` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// Base URL with its scheme.
    pub registry: String,
    pub namespace: String,
    pub repo: String,
    pub tag: String,
}

impl ModelRef {
    /// A host in front (anything with a dot or a port) replaces `default_registry`;
    /// `insecure` reaches it over plain http, as Ollama's flag does.
    pub fn parse(name: &str, default_registry: &str, insecure: bool) -> Result<ModelRef, String> {
        let bad =
            || format!("`{name}` is not a model name such as `smollm2` or `library/smollm2:135m`");
        let (path, tag) = match name.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, t),
            _ => (name, "latest"),
        };
        let mut parts: Vec<&str> = path.split('/').collect();
        let registry = match parts.first() {
            Some(h) if parts.len() > 1 && (h.contains('.') || h.contains(':')) => {
                let scheme = if insecure { "http" } else { "https" };
                let host = parts.remove(0);
                let host_ok = host.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
                if !host_ok {
                    return Err(bad());
                }
                format!("{scheme}://{host}")
            }
            _ => default_registry.trim_end_matches('/').to_string(),
        };
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !s.starts_with('.')
        };
        let (namespace, repo) = match parts.as_slice() {
            [repo] => ("library", *repo),
            [ns, repo] => (*ns, *repo),
            _ => return Err(bad()),
        };
        if !(ok(namespace) && ok(repo) && ok(tag)) {
            return Err(bad());
        }
        Ok(ModelRef {
            registry,
            namespace: namespace.to_string(),
            repo: repo.to_string(),
            tag: tag.to_string(),
        })
    }

    /// The name it is served under: the model, with its tag unless `latest`.
    pub fn id(&self) -> String {
        if self.tag == "latest" {
            self.repo.clone()
        } else {
            format!("{}:{}", self.repo, self.tag)
        }
    }

    fn url(&self, what: &str) -> String {
        format!(
            "{}/v2/{}/{}/{what}",
            self.registry, self.namespace, self.repo
        )
    }
}

/// What a pull reports as it goes (Ollama's progress lines).
#[derive(Debug, Clone, PartialEq)]
pub enum PullEvent {
    Status(String),
    Progress {
        digest: String,
        total: u64,
        completed: u64,
    },
}

#[derive(serde::Deserialize)]
struct Manifest {
    layers: Vec<Layer>,
}

#[derive(serde::Deserialize)]
struct Layer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
}

fn failed(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::Upstream, what.into())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::new(ErrorKind::Internal, format!("{}: {e}", path.display()))
}

/// Downloads `model`'s weights to `dest` (a `.partial` file beside it until checked).
pub async fn pull(
    model: &ModelRef,
    dest: &Path,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<(), Error> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| failed(format!("cannot start an HTTP client: {e}")))?;
    on(PullEvent::Status("pulling manifest".into()));
    let resp = client
        .get(model.url(&format!("manifests/{}", model.tag)))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .map_err(|e| failed(format!("cannot reach {}: {e}", model.registry)))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("pull model manifest: file does not exist: {}", model.id()),
        ));
    }
    if !resp.status().is_success() {
        return Err(failed(format!(
            "pull model manifest: the registry answered {}",
            resp.status()
        )));
    }
    let manifest: Manifest = resp
        .json()
        .await
        .map_err(|e| failed(format!("pull model manifest: {e}")))?;
    let layer = manifest
        .layers
        .into_iter()
        .find(|l| l.media_type == MODEL_LAYER)
        .ok_or_else(|| failed("the manifest has no model layer"))?;
    let want = layer
        .digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| failed(format!("unsupported digest {}", layer.digest)))?
        .to_ascii_lowercase();
    let partial = partial_of(dest);
    let got = download(&client, model, &layer, &partial, on).await?;
    on(PullEvent::Status("verifying sha256 digest".into()));
    if got != want {
        let removed = match tokio::fs::remove_file(&partial).await {
            Ok(()) => "the partial file was removed".to_string(),
            Err(e) => format!(
                "the partial file {} could not be removed: {e}",
                partial.display()
            ),
        };
        return Err(failed(format!(
            "digest mismatch: the download is sha256:{got}, the manifest says sha256:{want}; {removed}"
        )));
    }
    tokio::fs::rename(&partial, dest).await.map_err(io(dest))?;
    Ok(())
}

/// `dest` + `.partial`.
pub fn partial_of(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Appends the blob to `partial` from where it ends, returning the whole file's sha256.
async fn download(
    client: &reqwest::Client,
    model: &ModelRef,
    layer: &Layer,
    partial: &Path,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<String, Error> {
    let mut hasher = Sha256::new();
    let mut have = match tokio::fs::metadata(partial).await {
        Ok(m) if m.len() <= layer.size => m.len(),
        _ => 0,
    };
    if have > 0 {
        // What an interrupted pull left is hashed again, not trusted.
        let mut f = tokio::fs::File::open(partial).await.map_err(io(partial))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await.map_err(io(partial))?;
            if n == 0 {
                break;
            }
            hasher.update(buf.get(..n).unwrap_or(&buf));
        }
    }
    let mut req = client.get(model.url(&format!("blobs/{}", layer.digest)));
    if have > 0 {
        req = req.header("range", format!("bytes={have}-"));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| failed(format!("cannot reach {}: {e}", model.registry)))?;
    if !resp.status().is_success() {
        return Err(failed(format!(
            "pull {}: the registry answered {}",
            layer.digest,
            resp.status()
        )));
    }
    if have > 0 && resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
        // The registry sends the whole blob again: start over.
        have = 0;
        hasher = Sha256::new();
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(have > 0)
        .truncate(have == 0)
        .open(partial)
        .await
        .map_err(io(partial))?;
    let mut body = resp.bytes_stream();
    let mut last = Instant::now();
    on(progress(layer, have));
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| failed(format!("the download broke off at {have} bytes: {e}")))?;
        file.write_all(&chunk).await.map_err(io(partial))?;
        hasher.update(&chunk);
        have += chunk.len() as u64;
        if last.elapsed() >= Duration::from_millis(200) {
            last = Instant::now();
            on(progress(layer, have));
        }
    }
    file.flush().await.map_err(io(partial))?;
    on(progress(layer, have));
    if have != layer.size {
        return Err(failed(format!(
            "the download broke off at {have} of {} bytes; pull again to resume",
            layer.size
        )));
    }
    Ok(hex::encode(hasher.finalize()))
}

fn progress(layer: &Layer, completed: u64) -> PullEvent {
    PullEvent::Progress {
        digest: layer.digest.clone(),
        total: layer.size,
        completed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_ollama_reads_them() {
        let r = |n: &str, insecure| ModelRef::parse(n, OLLAMA_REGISTRY, insecure);
        let m = r("smollm2", false).unwrap();
        assert_eq!(
            (
                m.registry.as_str(),
                m.namespace.as_str(),
                m.repo.as_str(),
                m.tag.as_str()
            ),
            (OLLAMA_REGISTRY, "library", "smollm2", "latest")
        );
        assert_eq!(m.id(), "smollm2");
        let m = r("127.0.0.1:9000/me/tiny:q4", true).unwrap();
        assert_eq!(m.registry, "http://127.0.0.1:9000");
        assert_eq!(
            (m.namespace.as_str(), m.id()),
            ("me", "tiny:q4".to_string())
        );
        assert_eq!(m.url("blobs/x"), "http://127.0.0.1:9000/v2/me/tiny/blobs/x");
        for bad in ["", "a/b/c", "../x", "x:", "x y", "me/"] {
            assert!(r(bad, false).is_err(), "{bad}");
        }
    }
}
