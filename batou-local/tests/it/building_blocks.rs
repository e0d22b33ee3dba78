//! The small building blocks through `batou-local`: `presence`, `purge`, a `file` of data,
//! `directory` with `exclude`, and `command` with accepted exit codes. Each is predicted by a
//! dry run, converges, and converges again with no change.

use crate::harness::Project;

/// An environment using every building block, and the project files it reads.
pub(crate) fn project() -> Project {
    let p = Project::new();
    p.file("site/index.html", "<h1>shop</h1>\n");
    p.file("site/app.pyc", "bytecode");
    p.file("site/cache/entry", "cached\n");
    p.env(
        "dev",
        r#"
[environment]
base_dir = "srv"

[hosts.localhost]
components = ["log", "settings", "config", "site", "clean", "reindex"]
data = { role = "web" }

[components.log]
type = "presence"
path = "var/app.log"
mode = 0o640
create_parents = true

[components.settings]
type = "file"
path = "settings.yaml"

[components.settings.data]
name = "{{ host.name }}"
role = "{{ host.data.role }}"
workers = 4
answer = "no"
listen = ["127.0.0.1:8080"]

[components.config]
type = "file"
path = "app.json"
data = { debug = false, db = { port = 5432 } }

[components.site]
type = "directory"
path = "htdocs"
source = "site"
purge = true
exclude = ["*.pyc", "cache"]

[components.clean]
type = "purge"
pattern = "../site/htdocs/*.bak"

[components.reindex]
type = "command"
argv = ["sh", "-c", "touch done; exit 1"]
creates = "done"
returncodes = [0, 1]
"#,
    );
    p
}

#[test]
fn every_building_block_is_predicted_converges_and_stays() {
    let p = project();
    // Left by an earlier deploy: a backup to purge, a local cache and bytecode to keep.
    let htdocs = p.path("srv/work/site/htdocs");
    std::fs::create_dir_all(htdocs.join("cache")).unwrap();
    std::fs::write(htdocs.join("cache/local"), "mine").unwrap();
    std::fs::write(htdocs.join("old.bak"), "old").unwrap();
    std::fs::write(htdocs.join("local.pyc"), "mine").unwrap();

    let dry = p.converge(&["dev", "--dry-run", "--json"]);
    let predicted = roots(dry.changed());
    assert_eq!(
        predicted,
        ["clean", "config", "log", "reindex", "settings", "site"],
        "{}",
        dry.stdout
    );
    assert!(htdocs.join("old.bak").exists(), "a dry run removes nothing");
    assert!(!p.path("srv/work/log").exists());

    let run = p.converge(&["dev", "--json"]);
    assert_eq!(roots(run.changed()), predicted);
    assert_eq!(
        std::fs::read_to_string(p.path("srv/work/settings/settings.yaml")).unwrap(),
        "answer: \"no\"\nlisten:\n  - \"127.0.0.1:8080\"\nname: \"localhost\"\nrole: \"web\"\nworkers: 4\n"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("srv/work/config/app.json")).unwrap(),
        "{\n  \"db\": {\n    \"port\": 5432\n  },\n  \"debug\": false\n}\n"
    );
    assert_eq!(
        std::fs::read(p.path("srv/work/log/var/app.log")).unwrap(),
        b""
    );
    assert!(htdocs.join("index.html").is_file());
    assert!(!htdocs.join("app.pyc").exists());
    assert!(!htdocs.join("cache/entry").exists());
    assert_eq!(
        std::fs::read_to_string(htdocs.join("cache/local")).unwrap(),
        "mine"
    );
    assert!(htdocs.join("local.pyc").is_file());
    assert!(!htdocs.join("old.bak").exists());
    p.assert_idempotent(&["dev"]);

    // The application writes its log: the presence does not notice.
    std::fs::write(p.path("srv/work/log/var/app.log"), "started\n").unwrap();
    p.assert_idempotent(&["dev"]);
    assert_eq!(
        std::fs::read_to_string(p.path("srv/work/log/var/app.log")).unwrap(),
        "started\n"
    );
}

/// The root components of changed component paths, sorted, each once.
pub(crate) fn roots(changed: Vec<String>) -> Vec<String> {
    let roots: std::collections::BTreeSet<String> = changed
        .into_iter()
        .map(|c| c.split(" > ").next().unwrap().to_string())
        .collect();
    roots.into_iter().collect()
}

#[test]
fn bad_building_blocks_are_refused_at_configure_with_their_place() {
    let p = Project::new();
    p.env(
        "dev",
        r#"
[hosts.localhost]
components = ["settings"]

[components.settings]
type = "file"
path = "settings.json"
format = "jsn"
data = { a = 1 }
"#,
    );
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "unknown value `jsn`, expected one of `json`, `yaml`, `toml` in environments/dev.toml:8:10 (did you mean `json`?)"
        ),
        "{}",
        out.stderr
    );

    p.env(
        "dev",
        r#"
[hosts.localhost]
components = ["clean", "check"]

[components.clean]
type = "purge"
pattern = "/etc/*.conf"

[components.check]
type = "command"
argv = ["true"]
creates = "x"
returncodes = []
"#,
    );
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("error: cannot configure `clean` in host `localhost`, component `clean`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("path `/etc` is outside what this deployment may change"),
        "{}",
        out.stderr
    );
}
