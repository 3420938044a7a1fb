//! `parlance serve` settings from the config file: its `[serve]` table takes any flag of
//! `parlance serve` by its long name (`max_output_tokens = 512`, `cors_origin = [...]`),
//! and `[local]` the four models-on-demand ones. Each setting is defined once, by its
//! clap flag (type, default, environment variable, doc): the file's values are handed
//! to the same parser as flags. A flag on the command line or its environment variable
//! wins over the file; relative paths are taken from the file's folder.

use crate::serve_args::{OnlyServe, ServeArgs};
use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches};
use std::path::{Path, PathBuf};

/// What `[local]` may set (the rest of `serve`'s flags go in `[serve]`).
const LOCAL: [&str; 4] = [
    "models_dir",
    "keep_alive",
    "max_loaded_models",
    "max_memory",
];

/// `args` with the config file's settings applied; `argv` is the whole command line
/// (normalized), which is parsed again with the file's settings in front of it.
pub(crate) fn apply(args: ServeArgs, argv: &[String]) -> anyhow::Result<ServeArgs> {
    let Some(file) = args.config.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    // Syntax errors are the full config parser's to report, with line numbers.
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(args);
    };
    let tail = serve_tail(argv);
    let cmd = OnlyServe::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(std::iter::once("serve".to_string()).chain(tail.iter().cloned()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut front: Vec<String> = Vec::new();
    let sections: [(&str, Option<&[&str]>); 2] = [("serve", None), ("local", Some(&LOCAL))];
    for (section, allowed) in sections {
        let Some(values) = table.get(section) else {
            continue;
        };
        let toml::Value::Table(values) = values else {
            bail!("{}: [{section}] must be a table", file.display());
        };
        for (key, value) in values {
            let id = key.replace('-', "_");
            if id == "config" {
                bail!("{}: a config file cannot name another one", file.display());
            }
            if allowed.is_some_and(|a| !a.contains(&id.as_str())) {
                bail!(
                    "{}: [local] takes {}; `{key}` goes in [serve]",
                    file.display(),
                    LOCAL.join(", ")
                );
            }
            let place = || format!("{}: [{section}] {key}", file.display());
            // First: an unknown id is an error (clap's matches would not look it up).
            let flags = as_flags(&cmd, &id, value, base).with_context(place)?;
            // A flag or an environment variable wins.
            if matches!(
                matches.value_source(&id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            // Each setting through its flag's parser alone, so an error names it.
            cmd.clone()
                .try_get_matches_from(
                    std::iter::once("serve").chain(flags.iter().map(String::as_str)),
                )
                .with_context(place)?;
            front.extend(flags);
        }
    }
    if front.is_empty() {
        return Ok(args);
    }
    let argv = std::iter::once("serve".to_string())
        .chain(front)
        .chain(tail.iter().cloned());
    let matches = cmd
        .try_get_matches_from(argv)
        .with_context(|| format!("{}: a setting is not valid", file.display()))?;
    Ok(OnlyServe::from_arg_matches(&matches)?.args)
}

/// The arguments after `serve`.
fn serve_tail(argv: &[String]) -> &[String] {
    match argv.iter().position(|a| a == "serve") {
        Some(i) => argv.get(i + 1..).unwrap_or_default(),
        None => &[],
    }
}

/// The flags that set `id` to `value`, as a person would type them.
fn as_flags(
    cmd: &clap::Command,
    id: &str,
    value: &toml::Value,
    base: &Path,
) -> anyhow::Result<Vec<String>> {
    let Some(arg) = cmd
        .get_arguments()
        .find(|a| a.get_id() == id && id != "config")
    else {
        bail!("not a setting of `parlance serve` (the settings are its flags' long names, e.g. max_output_tokens)");
    };
    let Some(long) = arg.get_long() else {
        bail!("not a setting of `parlance serve`");
    };
    let is_path = arg.get_value_parser().type_id() == std::any::TypeId::of::<PathBuf>();
    let text = |v: &toml::Value| -> anyhow::Result<String> {
        Ok(match v {
            toml::Value::String(s) if is_path && Path::new(s).is_relative() => {
                base.join(s).display().to_string()
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => bail!("takes a string, a number or a boolean"),
        })
    };
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, toml::Value::Boolean(true)) => Ok(vec![format!("--{long}")]),
        (ArgAction::SetTrue, toml::Value::Boolean(false)) => Ok(Vec::new()),
        (ArgAction::SetTrue, _) => bail!("takes true or false"),
        (ArgAction::Append, toml::Value::Array(items)) => items
            .iter()
            .map(|v| Ok(format!("--{long}={}", text(v)?)))
            .collect(),
        (_, toml::Value::Array(_)) => bail!("takes one value, not a list"),
        (_, v) => Ok(vec![format!("--{long}={}", text(v)?)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_with(file_text: &str, argv: &[&str]) -> anyhow::Result<ServeArgs> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("parlance.toml");
        std::fs::write(&file, file_text).unwrap();
        let mut full: Vec<String> = vec!["parlance".into(), "serve".into(), "--config".into()];
        full.push(file.display().to_string());
        full.extend(argv.iter().map(|s| s.to_string()));
        let args = OnlyServe::try_parse_from(full[1..].iter().cloned())?.args;
        let out = apply(args, &full);
        // Paths are checked against the folder before it goes.
        if let Ok(a) = &out {
            if let Some(d) = &a.models_dir {
                assert!(d.starts_with(dir.path()) || d.is_absolute());
            }
        }
        out
    }

    use clap::Parser;

    #[test]
    fn file_settings_fill_what_flags_leave_unset() {
        let a = serve_with(
            "[serve]\nmax_output_tokens = 7\nparallel = 2\ncors_origin = [\"https://a\", \"https://b\"]\ndeterministic = true\nmax-connections = 9\n[local]\nmax_memory = \"1GiB\"\nmodels_dir = \"m\"\n",
            &["--parallel", "3"],
        )
        .unwrap();
        assert_eq!(a.max_output_tokens, Some(7));
        assert_eq!(a.parallel, 3, "the flag wins");
        assert_eq!(a.cors_origin, vec!["https://a", "https://b"]);
        assert!(a.deterministic);
        assert_eq!(a.max_connections, 9);
        assert_eq!(
            a.max_memory,
            Some(1 << 30),
            "the flag's own parser reads it"
        );
        assert!(a.models_dir.unwrap().ends_with("m"));
    }

    #[test]
    fn unknown_or_misplaced_settings_and_bad_values_are_errors_naming_them() {
        let e = serve_with("[serve]\nmax_output_tokenz = 7\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("max_output_tokenz"), "{e:#}");
        let e = serve_with("[local]\nport = 9\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("goes in [serve]"), "{e:#}");
        let e = serve_with("[serve]\nport = \"high\"\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("port"), "{e:#}");
        let e = serve_with("[serve]\nconfig = \"other.toml\"\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("cannot name another"), "{e:#}");
        let e = serve_with("[serve]\nparallel = [1, 2]\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("not a list"), "{e:#}");
    }
}
