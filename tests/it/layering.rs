//! The module layering docs/ARCHITECTURE.md states, kept by reading every `crate::` path in
//! `src/` (and every `super::` path inside `cache/` and `gateway/`): a module uses only modules
//! of lower tiers, so there is no cycle to grow.

use std::collections::BTreeMap;

/// The tiers, lowest first (docs/ARCHITECTURE.md, "Layering").
const TIERS: [&[&str]; 14] = [
    &[
        "body",
        "query",
        "cookies",
        "log_sink",
        "rfc3339",
        "request_id",
    ],
    &["hints", "routes"],
    &["config", "error", "quota", "burst"],
    &["server", "cluster", "upstream", "caller", "csrf", "links"],
    &["forward", "limit", "metrics"],
    &["coding", "status_page"],
    &["cache", "fake"],
    &["parts", "access_log"],
    &["telemetry"],
    &["gateway", "admin"],
    &["lifecycle"],
    &["shutdown"],
    &["demo"],
    &["cli"],
];

/// Every top-level module of `src/` and the other top-level modules it names.
fn uses() -> BTreeMap<String, Vec<String>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut uses: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut files = vec![std::path::PathBuf::from(root)];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let module = relative
            .trim_end_matches(".rs")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut named = named_after(&text, "crate::");
        named.retain(|name| *name != module);
        uses.entry(module).or_default().extend(named);
    }
    uses
}

/// The first name of every path that starts with `prefix` (`crate::`, `super::`) in `text`,
/// comments left out; each name of a `prefix{a, b::c}` group.
fn named_after(text: &str, prefix: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut named = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let rest = &code[i + prefix.len()..];
        let items = match rest.strip_prefix('{') {
            Some(group) => &group[..group.find('}').unwrap()],
            None => rest,
        };
        for item in items.split(',') {
            let name: String = item
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                named.push(name);
            }
            if !rest.starts_with('{') {
                break;
            }
        }
    }
    named
}

#[test]
fn modules_use_only_lower_tiers() {
    let tier = |module: &str| TIERS.iter().position(|tier| tier.contains(&module));
    let uses = uses();
    for (module, named) in &uses {
        let own = tier(module).unwrap_or_else(|| panic!("{module} is in no tier"));
        for used in named {
            let theirs =
                tier(used).unwrap_or_else(|| panic!("{used} (used by {module}) is in no tier"));
            assert!(
                theirs < own,
                "{module} (tier {own}) uses {used} (tier {theirs}): a module uses lower tiers only"
            );
        }
    }
    assert!(uses.contains_key("gateway") && uses["gateway"].contains(&"cache".to_owned()));
}

/// The tiers drawn in the first text block after `heading` in docs/ARCHITECTURE.md, each
/// line `NN name  name     what they do`, sorted.
fn drawn(heading: &str) -> Vec<(usize, Vec<String>)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ARCHITECTURE.md"))
            .unwrap();
    let drawing = text
        .split(heading)
        .nth(1)
        .and_then(|section| section.split("```text\n").nth(1))
        .and_then(|block| block.split("```").next())
        .unwrap_or_else(|| panic!("a text drawing under {heading:?}"));
    let mut drawn: Vec<(usize, Vec<String>)> = Vec::new();
    for line in drawing.lines() {
        // The names end where the description starts.
        let Some((number, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(number) = number.parse::<usize>() else {
            continue; // a description's second line
        };
        let names = rest.split("   ").next().unwrap_or_default();
        let mut names: Vec<String> = names.split_whitespace().map(str::to_owned).collect();
        names.sort_unstable();
        drawn.push((number, names));
    }
    drawn.sort();
    drawn
}

fn sorted(tiers: &[&[&str]]) -> Vec<(usize, Vec<String>)> {
    tiers
        .iter()
        .enumerate()
        .map(|(n, tier)| {
            let mut names: Vec<String> = tier.iter().map(|name| (*name).to_owned()).collect();
            names.sort_unstable();
            (n, names)
        })
        .collect()
}

#[test]
fn the_architecture_document_draws_these_tiers() {
    assert_eq!(
        drawn("## Layering"),
        sorted(&TIERS),
        "docs/ARCHITECTURE.md's layering drawing"
    );
    for (directory, tiers) in INSIDE {
        let heading = format!("### Inside `{directory}/`");
        assert_eq!(
            drawn(&heading),
            sorted(tiers),
            "the drawing of {directory}/"
        );
    }
}

/// The tiers inside the modules that are directories, lowest first. The top tier of `cache/`
/// is the `Cache` type itself, in parts (`impl Cache` in each file): they may name each other.
const INSIDE: [(&str, &[&[&str]]); 2] = [
    (
        "cache",
        &[
            &["key", "etag", "generations", "flights", "merge", "shapes"],
            &["outcome"],
            &["heads"],
            &["entry"],
            &["storage"],
            &[
                "mod",
                "read",
                "invalidation",
                "bulk",
                "single",
                "refresh",
                "tests",
            ],
        ],
    ),
    (
        "gateway",
        &[&["bounds", "admission", "record"], &["fetch"], &["mod"]],
    ),
];

/// What each file of `src/{directory}/` names of its siblings through `super::` (an item of
/// `mod.rs` counts as `mod`), outside its inline tests.
fn inside_uses(directory: &str) -> BTreeMap<String, Vec<String>> {
    let root = format!("{}/src/{directory}", env!("CARGO_MANIFEST_DIR"));
    let files: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|name| name.strip_suffix(".rs").map(str::to_owned))
        .collect();
    let mut uses = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(format!("{root}/{file}.rs")).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
        let named = named_after(text, "super::")
            .into_iter()
            .map(|name| match files.contains(&name) && name != "mod" {
                true => name,
                false => "mod".to_owned(), // an item of mod.rs
            })
            .collect();
        uses.insert(file.clone(), named);
    }
    uses
}

#[test]
fn the_parts_of_cache_and_gateway_use_only_lower_tiers() {
    for (directory, tiers) in INSIDE {
        let tier = |file: &str| tiers.iter().position(|tier| tier.contains(&file));
        let top = tiers.len() - 1;
        let uses = inside_uses(directory);
        for (file, named) in &uses {
            let own = tier(file).unwrap_or_else(|| panic!("{directory}/{file} is in no tier"));
            for used in named {
                let theirs = tier(used).unwrap();
                assert!(
                    theirs < own || (own == top && theirs == top),
                    "{directory}/{file} (tier {own}) uses {used} (tier {theirs})"
                );
            }
        }
        assert!(
            uses.values().any(|named| !named.is_empty()),
            "{directory}/ read"
        );
    }
}
