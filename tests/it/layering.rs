//! The module layering docs/ARCHITECTURE.md states, kept by reading every `crate::` path in
//! `src/`: a module uses only modules of lower tiers, so there is no cycle to grow.

use std::collections::BTreeMap;

/// The tiers, lowest first (docs/ARCHITECTURE.md, "Layering").
const TIERS: [&[&str]; 14] = [
    &[
        "body",
        "query",
        "routes",
        "cookies",
        "log_sink",
        "rfc3339",
        "request_id",
    ],
    &["hints"],
    &["config", "error", "quota", "burst"],
    &[
        "server", "cluster", "upstream", "caller", "csrf", "links", "metrics",
    ],
    &["forward", "limit", "status_page"],
    &["coding"],
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
        let code: String = text
            .lines()
            .map(|line| line.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let mut named = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let items = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap()].to_owned(),
                None => rest.to_owned(),
            };
            for item in items.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    named.push(name);
                }
                if rest.starts_with('{') {
                    continue;
                }
                break;
            }
        }
        uses.entry(module).or_default().extend(named);
    }
    uses
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

#[test]
fn the_architecture_document_draws_these_tiers() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ARCHITECTURE.md"))
            .unwrap();
    let drawing = text
        .split("## Layering")
        .nth(1)
        .and_then(|section| section.split("```text\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("a text drawing under \"## Layering\"");
    let mut drawn: Vec<(usize, Vec<&str>)> = Vec::new();
    for line in drawing.lines() {
        // `NN name  name     what they do`: the names end where the description starts.
        let Some((number, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(number) = number.parse::<usize>() else {
            continue; // a description's second line
        };
        let names = rest.split("   ").next().unwrap_or_default();
        drawn.push((number, names.split_whitespace().collect()));
    }
    drawn.sort();
    let expected: Vec<(usize, Vec<&str>)> = TIERS
        .iter()
        .enumerate()
        .map(|(n, tier)| {
            let mut names = tier.to_vec();
            names.sort_unstable();
            (n, names)
        })
        .collect();
    let drawn: Vec<(usize, Vec<&str>)> = drawn
        .into_iter()
        .map(|(n, mut names)| {
            names.sort_unstable();
            (n, names)
        })
        .collect();
    assert_eq!(drawn, expected, "docs/ARCHITECTURE.md's layering drawing");
}
