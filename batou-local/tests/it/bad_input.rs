//! The bad-input corpus: each case is refused with its message and place, touching nothing.

use crate::harness::Project;

struct Case {
    name: &'static str,
    env: &'static str,
    files: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    message: &'static str,
    place: &'static str,
}

const MOTD: &str = r#"[hosts.localhost]
components = ["motd"]

[components.motd]
type = "file"
"#;

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "toml syntax error",
            env: "[hosts.localhost\ncomponents = []\n",
            files: &[],
            args: &[],
            message: "error: unclosed table, expected `]`",
            place: "environments/dev.toml:1:17",
        },
        Case {
            name: "unknown key in [environment]",
            env: "[environment]\njbos = 3\n[hosts.localhost]\n",
            files: &[],
            args: &[],
            message: "unknown field `jbos`, expected one of",
            place: "environments/dev.toml:2:1",
        },
        Case {
            name: "unknown attribute of a component",
            env: concat!(
                "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\n",
                "type = \"file\"\npath = \"motd\"\ncontnet = \"hi\"\n"
            ),
            files: &[],
            args: &[],
            message: "component `motd`: unknown field `contnet`",
            place: "environments/dev.toml:7:1",
        },
        Case {
            name: "wrong type of a setting",
            env: "[environment]\njobs = \"many\"\n[hosts.localhost]\n",
            files: &[],
            args: &[],
            message: "invalid type: string \"many\", expected usize",
            place: "environments/dev.toml:2:8",
        },
        Case {
            name: "wrong type of an attribute",
            env: concat!(
                "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\n",
                "type = \"file\"\npath = \"motd\"\ncreate_parents = \"yes\"\n"
            ),
            files: &[],
            args: &[],
            message: "component `motd`: invalid type: string \"yes\", expected a boolean",
            place: "environments/dev.toml:7:18",
        },
        Case {
            name: "missing required attribute",
            env: MOTD,
            files: &[],
            args: &[],
            message: "component `motd`: missing field `path`",
            place: "environments/dev.toml:4:1",
        },
        Case {
            name: "unknown component name",
            env: "[hosts.localhost]\ncomponents = [\"mtod\"]\n\n[components.motd]\ntype = \"file\"\npath = \"m\"\n",
            files: &[],
            args: &[],
            message: "unknown component `mtod` in environments/dev.toml:2:15 (did you mean `motd`?)",
            place: "environments/dev.toml:2:15",
        },
        Case {
            name: "unknown component type",
            env: "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"fiel\"\n",
            files: &[],
            args: &[],
            message: "unknown component type `fiel` in environments/dev.toml:5:8 (did you mean `file`?)",
            place: "environments/dev.toml:5:8",
        },
        Case {
            name: "unknown host",
            env: "[hosts.localhost]\n[hosts.web1]\n",
            files: &[],
            args: &["--host", "web2"],
            message: "unknown host `web2` in environment `dev` in environments/dev.toml (did you mean `web1`?)",
            place: "hint: hosts: localhost, web1",
        },
        Case {
            name: "component assigned twice",
            env: "[hosts.localhost]\ncomponents = [\"motd\", \"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"m\"\n",
            files: &[],
            args: &[],
            message: "component `motd` is assigned twice to host `localhost`",
            place: "environments/dev.toml:2:23",
        },
        Case {
            name: "template syntax error",
            env: "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ntemplate = \"motd.j2\"\n",
            files: &[("motd.j2", "Hello\n{% if %}\n")],
            args: &[],
            message: "caused by: template `motd.j2` line 2: syntax error",
            place: "cannot configure `motd` in host `localhost`, component `motd`",
        },
        Case {
            name: "undefined template variable",
            env: "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ntemplate = \"motd.j2\"\n",
            files: &[("motd.j2", "Hello\n{{ host.nmae }}\n")],
            args: &[],
            message: "caused by: template `motd.j2` line 2: undefined value at `host.nmae`",
            place: "in host `localhost`, component `motd`",
        },
        Case {
            name: "undefined variable in an attribute template",
            env: "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"{{ hots.name }}\"\n",
            files: &[],
            args: &[],
            message: "cannot render attribute of `motd` for host `localhost` in environments/dev.toml:7:11",
            place: "caused by: template `components.motd` line 1: undefined value at `hots.name`",
        },
        Case {
            name: "missing source file",
            env: "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\nsource = \"files/motd\"\n",
            files: &[],
            args: &[],
            message: "caused by: cannot read project file `files/motd`",
            place: "in host `localhost`, component `motd`",
        },
        Case {
            name: "path outside what the component may touch",
            env: "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"/etc/batou-test-motd\"\ncontent = \"x\"\n",
            files: &[],
            args: &[],
            message: "caused by: path `/etc/batou-test-motd` is outside what this deployment may change",
            place: "in host `localhost`, component `motd`",
        },
        Case {
            name: "relative path escaping the base directory",
            env: "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"../../../outside\"\ncontent = \"x\"\n",
            files: &[],
            args: &[],
            message: "caused by: path `../../../outside` is outside what this deployment may change",
            place: "in host `localhost`, component `motd`",
        },
        Case {
            name: "command without guard",
            env: "[hosts.localhost]\ncomponents = [\"build\"]\n\n[components.build]\ntype = \"command\"\nargv = [\"true\"]\n",
            files: &[],
            args: &[],
            message: "caused by: command `true` has no guard: set `creates` or `unless`",
            place: "in host `localhost`, component `build`",
        },
        Case {
            name: "unknown environment",
            env: "[hosts.localhost]\n",
            files: &[],
            args: &["--", "prod"],
            message: "environment `prod` not found: `environments/prod.toml` does not exist",
            place: "hint: environments here: dev",
        },
        Case {
            name: "relative allow_paths entry",
            env: "[environment]\nallow_paths = [\"etc\"]\n[hosts.localhost]\n",
            files: &[],
            args: &[],
            message: "`allow_paths` entry `etc` must be an absolute path",
            place: "environments/dev.toml:2:16",
        },
    ]
}

#[test]
fn bad_input_is_refused_with_its_place_and_touches_nothing() {
    let mut failures = Vec::new();
    for case in cases() {
        let p = Project::new();
        p.env("dev", case.env);
        for (path, text) in case.files {
            p.file(path, text);
        }
        let mut args: Vec<&str> = Vec::new();
        if case.args.first() != Some(&"--") {
            args.push("dev");
            args.extend(case.args);
        } else {
            args.extend(&case.args[1..]);
        }
        let out = p.run(&args);
        let ok = out.code == 3
            && out.stderr.contains(case.message)
            && out.stderr.contains(case.place)
            && !p.path("work").exists();
        if !ok {
            failures.push(format!(
                "case `{}`: exit {} (want 3), work exists: {}\n--- stderr ---\n{}",
                case.name,
                out.code,
                p.path("work").exists(),
                out.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn invalid_configuration_in_json_mode_is_an_error_event() {
    let p = Project::new();
    p.env("dev", MOTD);
    let out = p.run(&["dev", "--json"]);
    assert_eq!(out.code, 3);
    let events = out.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["kind"], "invalid_configuration");
}

#[test]
fn several_hosts_need_a_choice() {
    let p = Project::new();
    p.env("dev", "[hosts.web1]\n[hosts.web2]\n");
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("hint: choose one with `--host`: web1, web2"),
        "{}",
        out.stderr
    );
}

#[test]
fn no_project_is_an_error_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::harness::run_binary(env!("CARGO_BIN_EXE_batou-local"), dir.path(), &["dev"]);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("no deployment repository here"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("hint: run in a deployment repository or pass `--project DIR`")
    );
}
