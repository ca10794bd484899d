//! The manual stays true to the code and to itself: every configuration key
//! and every long flag is documented in docs/reference.md, every relative
//! link of the README and of docs/ resolves, and the README stays a front
//! door (short, with the set-up commands and the own-images section near
//! its top).

use std::fs;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// The crate's root folder.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The text of a file under the crate's root; a missing file fails the test
/// naming it.
fn read(relative: &str) -> String {
    let path = root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every `.md` file under `dir`, recursively, in sorted order.
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable folder entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "md") {
            out.push(path);
        }
    }
}

/// The targets of the inline links and images `[text](target)` of a
/// Markdown text, outside fenced code blocks, with any ` "title"` removed.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else {
                break;
            };
            let inside = after[..end].trim();
            // `target "title"`: the target is what comes before the space.
            let target = inside.split_whitespace().next().unwrap_or("");
            targets.push(target.to_string());
            rest = &after[end + 1..];
        }
    }
    targets
}

/// Whether a link target points outside the repository or within its own page.
fn is_external_or_anchor(target: &str) -> bool {
    target.is_empty()
        || target.starts_with('#')
        || target.starts_with("http://")
        || target.starts_with("https://")
        || target.starts_with("mailto:")
}

/// Every long flag (without its `--`) of `command` and of its subcommands,
/// recursively, with the command path that has it; clap's own `help` and
/// `version` are left out.
fn long_flags(command: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
    for arg in command.get_arguments() {
        if let Some(long) = arg.get_long() {
            if long != "help" && long != "version" {
                out.push((path.to_string(), long.to_string()));
            }
        }
    }
    for sub in command.get_subcommands() {
        let sub_path = format!("{path} {}", sub.get_name());
        long_flags(sub, &sub_path, out);
    }
}

/// Every configuration key of `eqco pretrain` (every flat TOML key that a
/// preset, a file or `--set` accepts) appears in docs/reference.md as
/// `` `key` ``.
#[test]
fn every_configuration_key_is_in_the_reference() {
    let reference = read("docs/reference.md");
    let keys = eqco::run::PretrainConfig::keys();
    assert!(!keys.is_empty(), "PretrainConfig::keys() returned no key");
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|key| !reference.contains(&format!("`{key}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md does not document these configuration keys (as `key`): {missing:?}"
    );
}

/// Every long flag of every command and subcommand of `eqco` (as clap
/// defines them) appears in docs/reference.md as `` `--flag` ``.
#[test]
fn every_long_flag_is_in_the_reference() {
    let reference = read("docs/reference.md");
    let command = <eqco::cli::Cli as CommandFactory>::command();
    let mut flags = Vec::new();
    long_flags(&command, "eqco", &mut flags);
    assert!(!flags.is_empty(), "the command line has no long flag");
    let missing: Vec<String> = flags
        .iter()
        .filter(|(_, long)| !reference.contains(&format!("`--{long}`")))
        .map(|(path, long)| format!("{path} --{long}"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md does not document these flags (as `--flag`): {missing:?}"
    );
}

/// Every relative link and image of README.md and of every Markdown file
/// under docs/ (recursively) names a file that exists, relative to the
/// folder of the page that holds it (a `#fragment` is ignored, and so are
/// web, mail and in-page links).
#[test]
fn every_relative_link_resolves() {
    let mut pages = vec![root().join("README.md")];
    markdown_files(&root().join("docs"), &mut pages);
    let mut broken = Vec::new();
    for page in &pages {
        let text = fs::read_to_string(page)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
        let folder = page.parent().expect("a page has a folder");
        for target in link_targets(&text) {
            if is_external_or_anchor(&target) {
                continue;
            }
            let file = target.split('#').next().unwrap_or("");
            if !folder.join(file).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken relative links: {broken:#?}");
}

/// The README is a front door: at most 400 lines, the two set-up commands
/// (`bash scripts/main.sh`, `bash scripts/test.sh`) within its first 40
/// lines, and a heading about training on your own images within its first
/// 150.
#[test]
fn the_readme_is_a_front_door() {
    let readme = read("README.md");
    let lines: Vec<&str> = readme.lines().collect();
    assert!(
        lines.len() <= 400,
        "README.md has {} lines; keep it to 400 and move detail into docs/",
        lines.len()
    );
    let top: Vec<&str> = lines.iter().copied().take(40).collect();
    for command in ["bash scripts/main.sh", "bash scripts/test.sh"] {
        assert!(
            top.iter().any(|line| line.contains(command)),
            "README.md does not show `{command}` within its first 40 lines"
        );
    }
    let own_images = lines
        .iter()
        .take(150)
        .any(|line| line.starts_with('#') && line.to_lowercase().contains("own images"));
    assert!(
        own_images,
        "README.md has no heading about your own images within its first 150 lines"
    );
}
