//! Architecture invariants, checked on the dependency graph itself.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

/// Every package a package depends on at run time (normal edges, transitively).
fn runtime_deps(root: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|n| (n["id"].as_str().expect("id"), n))
        .collect();
    let start = names.iter().find(|(_, n)| **n == root).map(|(id, _)| *id).expect("package exists");
    let (mut seen, mut stack) = (BTreeSet::new(), vec![start]);
    while let Some(id) = stack.pop() {
        for dep in nodes[id]["deps"].as_array().expect("deps") {
            let normal = dep["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"].is_null());
            let pkg = dep["pkg"].as_str().expect("pkg");
            if normal && seen.insert(names[pkg].to_string()) {
                stack.push(pkg);
            }
        }
    }
    seen
}

fn assert_free_of(krate: &str, forbidden: &[&str]) {
    let deps = runtime_deps(krate);
    assert!(deps.len() > 1, "{krate}: the graph walk found no dependencies, the check is broken");
    let found: Vec<_> = forbidden.iter().filter(|f| deps.contains(**f)).collect();
    assert!(found.is_empty(), "{krate} must not depend on {found:?}");
}

const IO: &[&str] = &[
    "tokio-postgres",
    "postgres",
    "deadpool-postgres",
    "reqwest",
    "hyper",
    "hyper-util",
    "axum",
    "object_store",
];

#[test]
fn the_domain_depends_on_no_io_crate_and_no_runtime() {
    assert_free_of("terrace-domain", IO);
    assert_free_of("terrace-domain", &["tokio", "futures"]);
}

#[test]
fn ports_and_engine_depend_on_no_io_crate() {
    assert_free_of("terrace-ports", IO);
    assert_free_of("terrace-engine", IO);
    assert_free_of("terrace-memory", IO);
}

#[test]
fn the_check_sees_io_crates_where_they_are() {
    // Guards the walk itself: a graph reader that found nothing would pass the
    // checks above vacuously.
    let deps = runtime_deps("xtask");
    assert!(deps.contains("serde_json") && deps.contains("anyhow"), "{deps:?}");
}

/// The workspace's packages and, for each, its direct normal dependencies
/// on other workspace packages.
fn workspace_arrows() -> HashMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--no-deps"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let members: BTreeSet<String> =
        packages.iter().map(|p| p["name"].as_str().expect("name").to_owned()).collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().expect("name").to_owned())
                .filter(|n| members.contains(n))
                .collect();
            (p["name"].as_str().expect("name").to_owned(), deps)
        })
        .collect()
}

/// The table between `<!-- arrows -->` and `<!-- /arrows -->` in ARCHITECTURE.md.
fn documented_arrows() -> HashMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md exists");
    let start = doc.find("<!-- arrows -->").expect("ARCHITECTURE.md has an arrows table");
    let end = doc.find("<!-- /arrows -->").expect("the arrows table ends");
    doc[start..end]
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split('|').map(str::trim).collect();
            let [krate, deps] = cells[..] else { return None };
            if !krate.starts_with("terrace") && krate != "xtask" {
                return None;
            }
            let deps = deps.split(',').map(str::trim).filter(|d| d.starts_with("terrace")).map(String::from);
            Some((krate.to_owned(), deps.collect()))
        })
        .collect()
}

#[test]
fn every_crate_depends_only_on_what_architecture_md_allows() {
    let (actual, allowed) = (workspace_arrows(), documented_arrows());
    assert!(actual.len() > 5 && allowed.len() > 5, "the check found too little: {actual:?} {allowed:?}");
    let mut wrong = Vec::new();
    for (krate, deps) in &actual {
        match allowed.get(krate) {
            None => wrong.push(format!("{krate} is not in ARCHITECTURE.md's arrows table")),
            Some(ok) => {
                for d in deps.difference(ok) {
                    wrong.push(format!("{krate} → {d} is not an arrow of ARCHITECTURE.md"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The check sees real edges.
    assert!(actual["terrace-api"].contains("terrace-ports"), "{actual:?}");
}

/// Every `.rs` file under `dir`.
fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The library and binary sources of the workspace (not tests, not xtask),
/// without their comment lines, with the crate each belongs to.
fn product_sources() -> Vec<(String, std::path::PathBuf, String)> {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut out = Vec::new();
    for base in ["crates", "bins"] {
        for krate in std::fs::read_dir(root.join(base)).into_iter().flatten().flatten() {
            let mut files = Vec::new();
            sources(&krate.path().join("src"), &mut files);
            let name = krate.file_name().to_string_lossy().into_owned();
            for f in files {
                let text = std::fs::read_to_string(&f).expect("a readable source file");
                // Code only: comments may name what they are about.
                let code: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
                out.push((name.clone(), f, code.join("\n")));
            }
        }
    }
    out
}

#[test]
fn sql_and_googles_wire_format_stay_in_their_adapters() {
    let files = product_sources();
    assert!(files.len() > 30, "found only {} source files", files.len());
    let mut wrong = Vec::new();
    let (mut saw_sql, mut saw_google) = (false, false);
    for (krate, path, text) in &files {
        let sql = ["SELECT ", "INSERT INTO", "DELETE FROM", "FOR UPDATE"].iter().any(|w| text.contains(w));
        saw_sql |= sql && krate == "terrace-postgres";
        if sql && krate != "terrace-postgres" {
            wrong.push(format!("SQL outside terrace-postgres: {}", path.display()));
        }
        let google = ["streamGenerateContent", "inlineData", "x-goog-api-key", "/maps/api/"];
        let google = google.iter().any(|w| text.contains(w));
        saw_google |= google && krate == "terrace-google";
        if google && !matches!(krate.as_str(), "terrace-google" | "terrace-simulator") {
            wrong.push(format!("Google's wire format outside its adapters: {}", path.display()));
        }
    }
    assert!(saw_sql && saw_google, "the scan saw no SQL or Google wire format where they live");
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Files that may call `tokio::spawn`, and why.
const SPAWN_ALLOWED: &[(&str, &str)] = &[
    ("terrace-postgres/src/migrate.rs", "the migration connection's driver, aborted when the migration ends"),
    ("terrace/src/main.rs", "the signal watcher and the server, owned by serve until it returns"),
    ("terrace-conformance/src", "a test library: cases race store calls against each other"),
];

#[test]
fn no_library_spawns_a_detached_task() {
    let files = product_sources();
    let mut wrong = Vec::new();
    for (_, path, text) in &files {
        let p = path.to_string_lossy().replace('\\', "/");
        let allowed = SPAWN_ALLOWED.iter().any(|(f, _)| p.contains(f));
        if !allowed && (text.contains("tokio::spawn(") || text.contains("tokio::task::spawn(")) {
            wrong.push(p);
        }
    }
    assert!(
        wrong.is_empty(),
        "detached tasks: spawn them into a Supervisor, TaskTracker or JoinSet: {wrong:#?}"
    );
}

/// Files of the crates that speak the API's JSON that may still derive
/// serde, and why.
const SERDE_ALLOWED: &[(&str, &str)] =
    &[("terrace-api/src/auth.rs", "a JWT's claims: the token's JSON, not the API's")];

#[test]
fn the_api_s_json_is_declared_in_terrace_wire_alone() {
    let files = product_sources();
    let mut wrong = Vec::new();
    let mut saw_wire = false;
    for (krate, path, text) in &files {
        let p = path.to_string_lossy().replace('\\', "/");
        let derives = text
            .lines()
            .any(|l| l.contains("derive(") && (l.contains("Serialize") || l.contains("Deserialize")));
        saw_wire |= krate == "terrace-wire" && derives;
        let speaks_the_api = matches!(krate.as_str(), "terrace-api" | "terrace-client");
        if speaks_the_api && derives && !SERDE_ALLOWED.iter().any(|(f, _)| p.contains(f)) {
            wrong.push(format!("a serde type outside terrace-wire: {p}"));
        }
        // A body's mark: the domain describes no HTTP body.
        if krate == "terrace-domain" && text.contains("deny_unknown_fields") {
            wrong.push(format!("the domain describes a request body: {p}"));
        }
    }
    assert!(saw_wire, "the scan saw no serde type in terrace-wire");
    assert!(wrong.is_empty(), "{wrong:#?}");
}
