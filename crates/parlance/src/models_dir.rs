//! `--models-dir`: every GGUF in a folder, listed at start and loaded on demand.

use crate::local::{load_local, peek_local};
use crate::serve::{ngl_for_all, ServeArgs};
use anyhow::Context;
use parlance_core::lazy::{Check, KeepAlive, LazyModel, Loader, ModelFolder, Shelf};
use parlance_core::{Backend, Capabilities, InlineImages, ModelInfo, Router};
use parlance_gateway::catalog::LocalSpec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// How long a request waits for a loaded model to finish its requests and make room.
const ROOM_WAIT: Duration = Duration::from_secs(30);

/// One model found in the folder.
#[derive(Debug, PartialEq)]
struct Found {
    name: String,
    /// The file loaded first, then a split model's other parts.
    files: Vec<PathBuf>,
    mmproj: Option<PathBuf>,
}

fn is_gguf(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        && p.is_file()
}

fn lower_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

fn is_projector(p: &Path) -> bool {
    lower_name(p).contains("mmproj")
}

/// `name-00002-of-00003.gguf` -> `Some(("name", 2))`: llama.cpp's split files, loaded
/// from their first part.
fn split_part(stem: &str) -> Option<(&str, u32)> {
    let (head, total) = stem.rsplit_once("-of-")?;
    let (base, part) = head.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    (digits(part) && digits(total)).then(|| (base, part.parse().unwrap_or(0)))
}

fn size_of(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// The models in `files` (one folder's GGUFs): each model file but projectors and
/// the later parts of split models, named `name` when the folder is a model's own.
fn models_in(files: &[PathBuf], folder_name: Option<&str>) -> Vec<Found> {
    let projectors: Vec<&PathBuf> = files.iter().filter(|p| is_projector(p)).collect();
    let mut found = Vec::new();
    for p in files.iter().filter(|p| !is_projector(p)) {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (base, parts) = match split_part(&stem) {
            Some((_, n)) if n != 1 => continue,
            Some((base, _)) => {
                // Sorted, so the first part comes first.
                let parts = files.iter().filter(|q| {
                    q.file_stem()
                        .and_then(|s| split_part(&s.to_string_lossy()).map(|(b, _)| b == base))
                        .unwrap_or(false)
                });
                (base.to_string(), parts.cloned().collect())
            }
            None => (stem.clone(), vec![p.clone()]),
        };
        found.push(Found {
            name: base,
            files: parts,
            mmproj: None,
        });
    }
    // A folder of one model: its name and its projector, whatever they are called.
    if let (Some(folder), [only]) = (folder_name, found.as_mut_slice()) {
        only.name = folder.to_string();
        only.mmproj = projectors.first().map(|p| (*p).clone());
        return found;
    }
    // Several: a projector whose name holds the model's.
    for f in &mut found {
        let stem = f.name.to_lowercase();
        f.mmproj = projectors
            .iter()
            .find(|p| lower_name(p).contains(&stem))
            .map(|p| (*p).clone());
    }
    found
}

fn gguf_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--models-dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_gguf(p))
        .collect();
    files.sort();
    Ok(files)
}

/// The folder's models, and those of its subfolders (one level, as a hub download
/// puts each repository in its own folder).
fn scan(dir: &Path) -> anyhow::Result<Vec<Found>> {
    let mut found = models_in(&gguf_files(dir)?, None);
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        let name = sub
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.extend(models_in(&gguf_files(&sub)?, Some(&name)));
    }
    Ok(found)
}

/// What `/v1/models` says of a model whose metadata could not be read: a chat model
/// that will answer with why it cannot load.
fn unreadable(name: &str) -> ModelInfo {
    ModelInfo {
        id: name.to_string(),
        owned_by: "parlance".into(),
        kind: "chat".into(),
        capabilities: Capabilities {
            chat: true,
            ..Capabilities::default()
        },
        ..ModelInfo::default()
    }
}

/// What loading a local model needs: the flags, the chat template, the image fetcher.
pub(crate) type Settings = Arc<(ServeArgs, Option<String>, Arc<dyn InlineImages>)>;

/// The shelf of every model loaded on demand (the folder's and the catalog's with a
/// `keep_alive`), under the flags' limits; its sweeper runs from now on.
pub(crate) fn shelf(args: &ServeArgs) -> Arc<Shelf> {
    purge_freed_memory_at_once();
    let shelf = Shelf::new(
        args.max_loaded_models.unwrap_or(0),
        args.max_memory.unwrap_or(0),
        ROOM_WAIT,
        args.queue.max(1),
    );
    shelf.start_sweeper();
    shelf
}

/// A local model listed now (what it serves read from its metadata) and loaded on its
/// first request; one that cannot be read is listed and answers why.
/// `files`: all of the model's (its size), `spec.path` the one loaded.
pub(crate) fn lazy_local(
    shelf: &Arc<Shelf>,
    settings: &Settings,
    name: &str,
    spec: LocalSpec,
    files: &[PathBuf],
    keep: KeepAlive,
    alias: Option<String>,
) -> (ModelInfo, LazyModel) {
    let (args, template, images) = &**settings;
    let size = files.iter().map(|f| size_of(f)).sum();
    let (info, memory, readable) = match peek_local(args, template, &spec, alias.clone(), images) {
        Ok((info, memory)) => (info, memory, true),
        Err(e) => {
            tracing::warn!(model = %name, error = %e, "listed, but it will not load");
            (unreadable(name), size, false)
        }
    };
    // A file unreadable when listed is read again before each load, so a broken file
    // never unloads a good model to make room for a load that cannot work.
    let check: Option<Check> = (!readable).then(|| {
        let (ctx, spec, alias) = (Arc::clone(settings), spec.clone(), alias.clone());
        Arc::new(move || {
            let (args, template, images) = &*ctx;
            peek_local(args, template, &spec, alias.clone(), images).map(|_| ())
        }) as Check
    });
    let ctx = Arc::clone(settings);
    let load: Loader = Arc::new(move |n_ctx| {
        let (args, template, images) = &*ctx;
        load_local(args, template, &spec, alias.clone(), images, n_ctx).map(|(_, backend)| backend)
    });
    (
        info,
        shelf.add_checked(name, size, memory, keep, load, check),
    )
}

/// The `--models-dir` folder as the server serves it: what it found at start and what
/// `/api/pull` adds.
pub(crate) struct Folder {
    dir: PathBuf,
    registry: String,
    shelf: Arc<Shelf>,
    keep: KeepAlive,
    settings: Settings,
    /// Each served model's files (all parts of a split model), for `/api/delete`.
    files: Mutex<HashMap<String, Vec<PathBuf>>>,
}

impl Folder {
    /// A model listed now and loaded on its first request.
    fn serve(&self, m: Found) -> (ModelInfo, Arc<dyn Backend>) {
        let spec = LocalSpec {
            path: m.files.first().cloned().unwrap_or_default(),
            n_gpu_layers: ngl_for_all(&self.settings.0.n_gpu_layers),
            mmproj: m.mmproj,
            keep_alive: None,
        };
        let alias = Some(m.name.clone());
        let (info, lazy) = lazy_local(
            &self.shelf,
            &self.settings,
            &m.name,
            spec,
            &m.files,
            self.keep,
            alias,
        );
        lock(&self.files).insert(m.name, m.files);
        (info, Arc::new(lazy))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A map updated in single steps: a panic elsewhere while it was held leaves it whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ModelFolder for Folder {
    fn path_for(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.gguf"))
    }

    fn registry(&self) -> &str {
        &self.registry
    }

    fn adopt(&self, name: &str, path: &Path) -> Result<(ModelInfo, Arc<dyn Backend>), String> {
        let found = Found {
            name: name.to_string(),
            files: vec![path.to_path_buf()],
            mmproj: None,
        };
        Ok(self.serve(found))
    }

    fn forget(&self, name: &str) -> Option<Vec<PathBuf>> {
        lock(&self.files).remove(name)
    }
}

/// Adds every model in `dir` to `router`, loaded on demand, and starts the sweeper
/// that unloads idle ones; the folder then takes pulled models.
pub(crate) fn serve(
    dir: &Path,
    shelf: &Arc<Shelf>,
    settings: &Settings,
    router: &mut Router,
) -> anyhow::Result<Arc<Folder>> {
    let args = &settings.0;
    let keep: KeepAlive = args
        .keep_alive
        .as_deref()
        .unwrap_or("5m")
        .parse()
        .map_err(|e| anyhow::anyhow!("--keep-alive: {e}"))?;
    let folder = Arc::new(Folder {
        dir: dir.to_path_buf(),
        registry: args.registry.clone(),
        shelf: Arc::clone(shelf),
        keep,
        settings: Arc::clone(settings),
        files: Mutex::new(HashMap::new()),
    });
    for m in scan(dir)? {
        let (name, mmproj) = (m.name.clone(), m.mmproj.clone());
        let path = m.files.first().cloned().unwrap_or_default();
        let (info, backend) = folder.serve(m);
        if let Err(e) = router.add(info, backend) {
            // Also given with -m or in the catalog: that one stays loaded.
            tracing::warn!(model = %name, "{e}; the --models-dir copy is left out");
            folder.forget(&name);
            continue;
        }
        println!(
            "on demand: `{name}` ({}{})",
            path.display(),
            mmproj
                .as_ref()
                .map(|p| format!(", images through {}", p.display()))
                .unwrap_or_default()
        );
    }
    Ok(folder)
}

/// `8GiB`, `512MiB`, `2G`, `1.5GB` (powers of two either way, as memory is counted), or bytes.
pub(crate) fn byte_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let at = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let n: f64 = v[..at]
        .parse()
        .map_err(|_| format!("`{v}` is not a size such as 8GiB or 512MiB"))?;
    let unit = match v[at..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit `{other}` (use KiB, MiB, GiB)")),
    };
    Ok((n * unit as f64) as u64)
}

/// mimalloc keeps freed pages for reuse and purges them only when the thread that owns
/// them allocates again; a model's tables are built on one blocking-pool thread and
/// freed on another, so an unloaded model would stay in RSS until the next load.
/// Measured here: Gemma 3 270M unloaded left 150 MB behind every other cycle, none
/// with this. Only with --models-dir: the gateway's hot path keeps its defaults.
fn purge_freed_memory_at_once() {
    // mimalloc 2.x's option numbers (mimalloc.h): abandoned_page_purge, purge_delay.
    const ABANDONED_PAGE_PURGE: libmimalloc_sys::mi_option_t = 12;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is a plain store mimalloc allows at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(ABANDONED_PAGE_PURGE, 1);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_read_as_people_write_them() {
        assert_eq!(byte_size("8GiB"), Ok(8 << 30));
        assert_eq!(byte_size("512 MiB"), Ok(512 << 20));
        assert_eq!(byte_size("1.5g"), Ok(3 << 29));
        assert_eq!(byte_size("4096"), Ok(4096));
        assert!(byte_size("lots").is_err());
        assert!(byte_size("5 parsecs").is_err());
    }

    #[test]
    fn projectors_and_later_split_parts_are_not_models() {
        let d = std::env::temp_dir().join(format!("parlance-models-dir-{}", std::process::id()));
        // Left over from an earlier run, or not there at all.
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        let touch = |name: &str| {
            let p = d.join(name);
            std::fs::write(&p, b"GGUF").unwrap();
            p
        };
        let qwen = touch("qwen-00001-of-00002.gguf");
        touch("qwen-00002-of-00002.gguf");
        let gemma = touch("gemma3.gguf");
        let proj = touch("mmproj-gemma3-f16.gguf");
        touch("notes.txt");
        std::fs::create_dir(d.join("llava")).unwrap();
        let llava = d.join("llava/model-q4.gguf");
        let llava_proj = d.join("llava/mmproj.gguf");
        std::fs::write(&llava, b"GGUF").unwrap();
        std::fs::write(&llava_proj, b"GGUF").unwrap();
        let found = scan(&d).unwrap();
        let got: Vec<(&str, &Path, Option<&Path>, u64)> = found
            .iter()
            .map(|f| {
                (
                    f.name.as_str(),
                    f.files[0].as_path(),
                    f.mmproj.as_deref(),
                    f.files.iter().map(|p| size_of(p)).sum(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("gemma3", gemma.as_path(), Some(proj.as_path()), 4),
                ("qwen", qwen.as_path(), None, 8),
                ("llava", llava.as_path(), Some(llava_proj.as_path()), 4),
            ]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
