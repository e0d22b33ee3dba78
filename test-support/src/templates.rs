//! A template written for batou and the bytes Jinja2 renders from it, shared by the local
//! and the remote test of template compatibility.

/// A template written for batou: Jinja2 with `line_statement_prefix="@@"`.
pub const BATOU_TEMPLATE: &str = r#"# {{ component.name }} on {{ host.name }}
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

/// What Jinja2 3.1.6 renders from [`BATOU_TEMPLATE`] with the `vars` of [`batou_template_env`] on host `HOST`.
pub const BATOU_TEMPLATE_JINJA2: &str = r#"# app on HOST
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

/// An environment rendering [`BATOU_TEMPLATE`] on host `host`.
pub fn batou_template_env(host: &str) -> String {
    r#"
[environment]
base_dir = "srv"

[environment.templates]
line_statement_prefix = "@@"

[hosts.HOST]
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
"#
    .replace("HOST", host)
}
