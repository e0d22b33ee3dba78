//! The small building blocks on a loopback host: `presence`, `purge`, a `file` of data,
//! `directory` with `exclude`, and `command` with accepted exit codes, predicted by a dry
//! run, deployed, and deployed again with no change.

use crate::harness::{Cluster, Project};

const ENV: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["log", "settings", "site", "clean", "reindex"]
data = { role = "web" }

[components.log]
type = "presence"
path = "var/app.log"
mode = 0o640
create_parents = true

[components.settings]
type = "file"
path = "settings.toml"

[components.settings.data]
name = "{{ host.name }}"
role = "{{ host.data.role }}"
db = { port = 5432 }

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
"#;

fn roots(changed: Vec<String>) -> Vec<String> {
    let roots: std::collections::BTreeSet<String> = changed
        .into_iter()
        .map(|c| c.split(" > ").next().unwrap().to_string())
        .collect();
    roots.into_iter().collect()
}

#[test]
fn every_building_block_deploys_to_a_host_and_stays() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.file("site/index.html", "<h1>shop</h1>\n");
    p.file("site/app.pyc", "bytecode");
    p.file("site/cache/entry", "cached\n");
    p.env("prod", ENV);
    let home = cluster.host("web1").home.clone();
    let htdocs = home.join("srv/work/site/htdocs");
    std::fs::create_dir_all(htdocs.join("cache")).unwrap();
    std::fs::write(htdocs.join("cache/local"), "mine").unwrap();
    std::fs::write(htdocs.join("old.bak"), "old").unwrap();

    let dry = cluster.run(p.root(), &["prod", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stderr, dry.stdout);
    let predicted = roots(dry.changed());
    assert_eq!(
        predicted,
        ["clean", "log", "reindex", "settings", "site"],
        "{}",
        dry.stdout
    );
    assert!(htdocs.join("old.bak").exists(), "a dry run removes nothing");

    let run = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, run.stdout);
    assert_eq!(roots(run.changed()), predicted);
    assert_eq!(
        std::fs::read_to_string(home.join("srv/work/settings/settings.toml")).unwrap(),
        "name = \"web1\"\nrole = \"web\"\n\n[db]\nport = 5432\n"
    );
    assert_eq!(
        std::fs::read(home.join("srv/work/log/var/app.log")).unwrap(),
        b""
    );
    assert!(htdocs.join("index.html").is_file());
    assert!(!htdocs.join("app.pyc").exists());
    assert_eq!(
        std::fs::read_to_string(htdocs.join("cache/local")).unwrap(),
        "mine"
    );
    assert!(!htdocs.join("old.bak").exists());
    assert!(home.join("srv/work/reindex/done").exists());

    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}
