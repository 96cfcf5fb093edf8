//! The library's modules depend on one another in one direction only: every `crate::` path in
//! src/ is read, and the graph they make must have no cycle (image -> disk -> dirtimes -> image
//! was one).

use std::collections::{BTreeMap, BTreeSet};

/// The modules `text` refers to as `crate::NAME`, including each name in `crate::{a, b::c}`.
fn references(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        if text[..at].ends_with('$') {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        out.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

#[test]
fn module_imports_form_no_cycle() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_none_or(|e| e != "rs") || name == "main" || name == "lib" {
            continue;
        }
        let mut refs = references(&std::fs::read_to_string(&path).unwrap());
        refs.remove(&name);
        graph.insert(name, refs);
    }
    for (m, deps) in &graph {
        for d in deps {
            assert!(
                graph.contains_key(d),
                "{m} refers to crate::{d}, not a module file"
            );
        }
    }
    // Kahn's algorithm: whatever cannot be ordered lies on a cycle.
    let mut left = graph.clone();
    while let Some(free) = left
        .iter()
        .find(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
        .map(|(m, _)| m.clone())
    {
        left.remove(&free);
    }
    assert!(left.is_empty(), "modules on an import cycle: {left:?}");
}

#[test]
fn references_are_read_from_paths_and_groups() {
    let refs = references("use crate::a::X;\nuse crate::{b::Y, c};\nlet z = crate::d::f();");
    assert_eq!(refs, ["a", "b", "c", "d"].map(String::from).into());
}
