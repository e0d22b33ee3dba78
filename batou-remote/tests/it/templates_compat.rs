//! A batou template (line statements with `@@`, Python's methods) on a loopback host: the
//! agent renders it again with the environment's syntax, to the bytes Jinja2 renders.

use crate::harness::{Cluster, Project};

/// A template written for batou: Jinja2 with `line_statement_prefix="@@"`.
const TEMPLATE: &str = r#"# {{ component.name }} on {{ host.name }}
@@ for name, port in ports.items()
[{{ name.upper() }}]
listen = {{ "{}:{}".format(address, port) }}
@@ if name.startswith("web")
workers = {{ workers }}
@@ else
workers = 1
@@ endif

@@ endfor
@@ if not flags
# no flags
@@ endif
  @@ for f in flags|sort
flag = {{ f.strip().lower() }}
  @@ endfor
keys = {{ ports.keys()|list|join(",") }}
names = {{ " ".join(["a", "b"]) }}
title = {{ "hello world".title() }} / {{ "x-y".replace("-", "_") }} / {{ "a,b".split(",")|length }}
count = {{ [1, 1, 2].count(1) }} / {{ ports.get("missing", "none") }}
"#;

/// What Jinja2 3.1.6 renders from [`TEMPLATE`] with the `vars` of [`ENV`] on host `HOST`.
const JINJA2: &str = r#"# app on HOST
[ADMIN]
listen = 127.0.0.1:9090
workers = 1
[WEB]
listen = 127.0.0.1:8080
workers = 4
flag = debug
flag = trace
keys = admin,web
names = a b
title = Hello World / x_y / 2
count = 2 / none
"#;

const ENV: &str = r#"
[environment]
base_dir = "srv"

[environment.templates]
line_statement_prefix = "@@"

[hosts.web1]
components = ["app"]

[components.app]
type = "file"
path = "app.cfg"
template = "templates/app.cfg.j2"

[components.app.vars]
ports = { admin = 9090, web = 8080 }
address = "127.0.0.1"
workers = 4
flags = [" Debug", "TRACE "]
"#;

#[test]
fn a_batou_template_renders_on_the_host_as_jinja2_renders_it() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.file("templates/app.cfg.j2", TEMPLATE);
    p.env("prod", ENV);
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    let home = &cluster.host("web1").home;
    assert_eq!(
        std::fs::read_to_string(home.join("srv/work/app/app.cfg")).unwrap(),
        JINJA2.replace("HOST", "web1")
    );
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}
