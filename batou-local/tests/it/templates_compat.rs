//! Templates that batou projects bring: line statements with the prefix `@@` and Python's
//! methods render the bytes Jinja2 renders.

use crate::harness::Project;
use batou_test_support::{BATOU_TEMPLATE, BATOU_TEMPLATE_JINJA2, batou_template_env};

#[test]
fn a_batou_template_renders_the_bytes_jinja2_renders() {
    let p = Project::new();
    p.file("templates/app.cfg.j2", BATOU_TEMPLATE);
    p.env("dev", &batou_template_env("localhost"));
    let dry = p.converge(&["dev", "--dry-run"]);
    assert!(
        dry.stderr.contains("+listen = 127.0.0.1:9090"),
        "{}",
        dry.stderr
    );
    p.converge_twice(&["dev"]);
    assert_eq!(
        std::fs::read_to_string(p.path("srv/work/app/app.cfg")).unwrap(),
        BATOU_TEMPLATE_JINJA2.replace("HOST", "localhost")
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
