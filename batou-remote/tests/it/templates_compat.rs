//! A batou template (line statements with `@@`, Python's methods) on a loopback host: the
//! agent renders it again with the environment's syntax, to the bytes Jinja2 renders.

use crate::harness::{Cluster, Project};
use batou_test_support::{BATOU_TEMPLATE, BATOU_TEMPLATE_JINJA2, batou_template_env};

#[test]
fn a_batou_template_renders_on_the_host_as_jinja2_renders_it() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.file("templates/app.cfg.j2", BATOU_TEMPLATE);
    p.env("prod", &batou_template_env("web1"));
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    let home = &cluster.host("web1").home;
    assert_eq!(
        std::fs::read_to_string(home.join("srv/work/app/app.cfg")).unwrap(),
        BATOU_TEMPLATE_JINJA2.replace("HOST", "web1")
    );
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}
