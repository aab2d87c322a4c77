//! The library's layering, checked from the source: every `crate::...` and `super::...` path in
//! src/ (tests and chatload excepted) is an arrow between modules, and an arrow may only point
//! down. ARCHITECTURE.md ("Layers") states the same table; change both together.
//!
//! Two checks: between top-level modules, an arrow goes from a higher layer to a strictly lower
//! one (so no circle can form there); between files, the import graph has no circle (a folder's
//! `mod.rs` and its direct children excepted: they are one module's inside).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Each top-level module's layer: a module may use only modules of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    // 0: leaves, each about one thing (a format, a queue, a clock, a socket to Redis, the
    // event log).
    ("flags", 0),
    ("rlimit", 0),
    ("timers", 0),
    ("http", 0),
    ("redis", 0),
    ("outbox", 0),
    ("ws", 0),
    ("protocol", 0),
    ("events", 0),
    // 1: what nodes tell each other over Redis; the page's files; signed tokens.
    ("cluster", 1),
    ("assets", 1),
    ("auth", 1),
    // 2: the chat (users, rooms, history, resume) and HTTP routing.
    ("chat", 2),
    ("router", 2),
    // 3: counters and their /metrics text, read from chat and cluster; the backend API.
    ("metrics", 3),
    ("api", 3),
    // 4: one connection's state; the flags.
    ("conn", 4),
    ("config", 4),
    // 5: the loop: the only code that owns sockets.
    ("server", 5),
];

/// Module path of a file under src/ (`chat/rooms.rs` → ["chat", "rooms"]; `mod.rs` is its folder).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.push(p.clone());
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every file's module and the modules its code (before its first `#[cfg(test)]`) names.
fn imports() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    let files: Vec<_> = paths
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| (module_of(p.strip_prefix(&src).unwrap()), p))
        .filter(|(m, _)| m.first().is_none_or(|t| t != "bin"))
        .collect();
    let mods: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let resolve = |mut path: Vec<String>| {
        while !path.is_empty() && !mods.contains(&path) {
            path.pop();
        }
        path
    };
    let mut edges = BTreeMap::new();
    for (m, p) in &files {
        let text = fs::read_to_string(p).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let is_mod = p.file_name().is_some_and(|f| f == "mod.rs");
        let mut to = BTreeSet::new();
        for (at, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
            if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &code[at..];
            let segs: Vec<&str> = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap()
                .split("::")
                .filter(|s| !s.is_empty())
                .collect();
            let mut base: Vec<String> = Vec::new();
            let mut segs = segs.into_iter().peekable();
            match segs.next() {
                Some("crate") => {}
                _ => {
                    // `super` of a mod.rs is its folder's parent; of a file, its folder.
                    base = m.clone();
                    base.pop();
                    if is_mod {
                        // m is the folder itself: its parent is one up, already popped.
                    }
                    while segs.peek() == Some(&"super") {
                        segs.next();
                        base.pop();
                    }
                }
            }
            base.extend(segs.map(str::to_string));
            let t = resolve(base);
            if !t.is_empty() && t != *m {
                to.insert(t);
            }
        }
        edges.insert(m.clone(), to);
    }
    edges
}

#[test]
fn arrows_point_only_down_the_layers() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, tos) in imports() {
        let Some(f) = from.first() else { continue };
        let lf = *layer.get(f.as_str()).unwrap_or_else(|| panic!("module {f} has no layer in LAYERS"));
        for to in tos {
            let t = &to[0];
            if t == f {
                continue;
            }
            let lt = *layer.get(t.as_str()).unwrap_or_else(|| panic!("module {t} has no layer in LAYERS"));
            if lt >= lf {
                wrong.push(format!("{} (layer {lf}) uses {} (layer {lt})", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "arrows up or across the layers:\n{}", wrong.join("\n"));
}

#[test]
fn files_import_each_other_without_a_circle() {
    let edges = imports();
    // A folder's mod.rs and its direct children are one module's inside: not counted.
    let inside = |a: &Vec<String>, b: &Vec<String>| {
        b.len() + 1 == a.len() && a.starts_with(b) || a.len() + 1 == b.len() && b.starts_with(a)
    };
    let graph: BTreeMap<&Vec<String>, Vec<&Vec<String>>> =
        edges.iter().map(|(a, bs)| (a, bs.iter().filter(|b| !inside(a, b)).collect())).collect();
    // Depth-first search with colours: grey on the stack, black done; a grey target is a circle.
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let mut colour: BTreeMap<&Vec<String>, Colour> = graph.keys().map(|k| (*k, Colour::White)).collect();
    fn visit<'a>(
        v: &'a Vec<String>,
        graph: &BTreeMap<&'a Vec<String>, Vec<&'a Vec<String>>>,
        colour: &mut BTreeMap<&'a Vec<String>, Colour>,
        stack: &mut Vec<&'a Vec<String>>,
    ) -> Option<String> {
        colour.insert(v, Colour::Grey);
        stack.push(v);
        for w in graph.get(v).into_iter().flatten() {
            match colour.get(w).copied().unwrap_or(Colour::Black) {
                Colour::Grey => {
                    let at = stack.iter().position(|s| s == w).unwrap();
                    let names: Vec<String> = stack[at..].iter().map(|s| s.join("::")).collect();
                    return Some(format!("{} -> {}", names.join(" -> "), w.join("::")));
                }
                Colour::White => {
                    if let Some(c) = visit(w, graph, colour, stack) {
                        return Some(c);
                    }
                }
                Colour::Black => {}
            }
        }
        stack.pop();
        colour.insert(v, Colour::Black);
        None
    }
    for v in graph.keys() {
        if colour[v] == Colour::White
            && let Some(circle) = visit(v, &graph, &mut colour, &mut Vec::new())
        {
            panic!("an import circle among files: {circle}");
        }
    }
}

#[test]
fn the_table_names_every_module_once() {
    let names: BTreeSet<&str> = LAYERS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), LAYERS.len());
    let tops: BTreeSet<String> = imports().keys().filter_map(|m| m.first().cloned()).collect();
    let missing: Vec<&String> = tops.iter().filter(|t| !names.contains(t.as_str())).collect();
    assert!(missing.is_empty(), "modules without a layer: {missing:?}");
}
