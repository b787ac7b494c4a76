//! `docs/configuration.md` documents exactly the keys in `porter_config::keys`, with the
//! same defaults: one reference table per section, checked both ways (as `control`'s
//! OpenAPI test ties `docs/openapi.yaml` to the router).

use std::collections::BTreeMap;

use porter_config::keys::{self, KeyDefault};

/// Section heading (`udp`, ..., `routes`) → rows (key → default column, when there is one).
fn documented() -> BTreeMap<String, BTreeMap<String, Option<String>>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let text = std::fs::read_to_string(path).expect("docs/configuration.md is readable");
    let mut sections = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut default_column = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            // `## \`udp\`: the public listener` → udp; other headings end a section.
            current = heading
                .strip_prefix('`')
                .and_then(|h| h.split_once('`'))
                .map(|(name, _)| name.to_owned());
            default_column = None;
            continue;
        }
        let Some(section) = &current else { continue };
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        // `\|` inside a cell (`human` \| `json`) is not a column break.
        let row = row.replace("\\|", "\u{0}");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.first() == Some(&"key") {
            default_column = cells.iter().position(|c| *c == "default");
            continue;
        }
        let Some(key) = cells
            .first()
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue; // the `| --- |` line
        };
        let default = default_column
            .and_then(|i| cells.get(i))
            .map(|c| (*c).to_owned());
        let rows: &mut BTreeMap<String, Option<String>> =
            sections.entry(section.clone()).or_default();
        assert!(
            rows.insert(key.to_owned(), default).is_none(),
            "docs/configuration.md lists `{section}.{key}` twice"
        );
    }
    sections
}

#[test]
fn every_key_is_documented_and_every_documented_key_exists() {
    let docs = documented();
    let mut problems = Vec::new();
    for section in keys::SECTIONS {
        let Some(rows) = docs.get(section.name) else {
            problems.push(format!("no table for section `{}`", section.name));
            continue;
        };
        for key in section.keys {
            match rows.get(key.name) {
                None => problems.push(format!(
                    "`{}.{}` is in keys::{} but not documented",
                    section.name,
                    key.name,
                    section.name.to_uppercase()
                )),
                Some(Some(doc)) if key.default != KeyDefault::Required => {
                    let ours = key.default.doc_text();
                    if *doc != ours {
                        problems.push(format!(
                            "`{}.{}`: the docs give the default {doc}, the table {ours}",
                            section.name, key.name
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        for name in rows.keys() {
            if section.key(name).is_none() {
                problems.push(format!(
                    "`{}.{name}` is documented but no such key exists",
                    section.name
                ));
            }
        }
    }
    for name in docs.keys() {
        if !keys::SECTIONS.iter().any(|s| s.name == name) {
            problems.push(format!(
                "the docs have a table for `{name}`, which is no section"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md and porter_config::keys differ:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_section_is_a_top_level_key() {
    for section in keys::SECTIONS {
        assert!(keys::ROOT.key(section.name).is_some(), "{}", section.name);
    }
}

/// The example of `porter check`'s output at the top of the reference lists the known keys
/// of `udp`: it is the checker's own message for that mistake, key list included.
#[test]
fn the_unknown_key_example_is_what_the_checker_prints() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let text = std::fs::read_to_string(path).expect("docs/configuration.md is readable");
    let file = "log: {level: info}\nudp:\n  bnd: 0.0.0.0\n";
    let errors = porter_config::from_str_with_env(file, "config.yaml", &|_| None)
        .expect_err("`bnd` is no key of `udp`");
    let line = errors.to_string();
    assert!(line.starts_with("config.yaml:3:3: udp.bnd: "), "{line}");
    assert!(
        text.lines().any(|l| l == line),
        "docs/configuration.md should show the checker's line\n{line}"
    );
}
