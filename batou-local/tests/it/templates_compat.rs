//! Templates that batou projects bring: line statements with the prefix `@@` and Python's
//! methods render the bytes Jinja2 renders.

use crate::harness::Project;

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

[hosts.localhost]
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
fn a_batou_template_renders_the_bytes_jinja2_renders() {
    let p = Project::new();
    p.file("templates/app.cfg.j2", TEMPLATE);
    p.env("dev", ENV);
    let dry = p.converge(&["dev", "--dry-run"]);
    assert!(
        dry.stderr.contains("+listen = 127.0.0.1:9090"),
        "{}",
        dry.stderr
    );
    p.converge_twice(&["dev"]);
    assert_eq!(
        std::fs::read_to_string(p.path("srv/work/app/app.cfg")).unwrap(),
        JINJA2.replace("HOST", "localhost")
    );
}

#[test]
fn without_the_prefix_line_statements_are_text_and_a_bad_prefix_is_placed() {
    let p = Project::new();
    p.file("templates/app.cfg.j2", "@@ if true\nx\n@@ endif\n");
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"file\"\npath = \"app.cfg\"\ntemplate = \"templates/app.cfg.j2\"\n",
    );
    p.converge_twice(&["dev"]);
    assert_eq!(
        std::fs::read_to_string(p.path("work/app/app.cfg")).unwrap(),
        "@@ if true\nx\n@@ endif\n"
    );
    p.env(
        "dev",
        "[environment.templates]\nline_statement_prefix = \"\"\n\n[hosts.localhost]\ncomponents = []\n",
    );
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "the template syntax of `[environment.templates]` is not usable: `line_statement_prefix` must not be empty or blank in environments/dev.toml:2:25"
        ),
        "{}",
        out.stderr
    );
}
