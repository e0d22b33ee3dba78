//! Platform facts in local runs: a template reads this machine's facts; a plan that reads
//! none is built once.

use crate::harness::Project;

/// `ID` and `VERSION_ID` of this machine's os-release, as the facts read them.
pub(crate) fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    };
    (get("ID"), get("VERSION_ID"))
}

#[test]
fn templates_and_attributes_see_this_machines_facts() {
    let p = Project::new();
    p.file(
        "platform.j2",
        "{{ host.facts.os }} {{ host.facts.distribution }} {{ host.facts.version }} {{ host.facts.architecture }}\n",
    );
    p.env(
        "dev",
        r#"
[hosts.localhost]
components = ["platform", "by-name"]

[components.platform]
type = "file"
path = "platform"
template = "platform.j2"

[components.by-name]
type = "file"
path = "{{ host.facts.os }}.txt"
content = "ok\n"
"#,
    );
    p.converge_twice(&["dev"]);
    let (id, version) = os_release();
    let arch = std::env::consts::ARCH;
    assert_eq!(
        std::fs::read_to_string(p.path("work/platform/platform")).unwrap(),
        format!("linux {id} {version} {arch}\n")
    );
    assert!(p.path("work/by-name/linux.txt").is_file());
}

#[test]
fn an_unknown_fact_is_an_error_naming_the_expression() {
    let p = Project::new();
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"f\"]\n\n[components.f]\ntype = \"file\"\npath = \"f\"\ncontent = \"{{ host.facts.distro }}\"\n",
    );
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("undefined value"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("(did you mean `host.facts.distribution`?)"),
        "{}",
        out.stderr
    );
}
