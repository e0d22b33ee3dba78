//! The operator's verbs of `batou-local` on this machine's `base_dir`: `status` (freeze,
//! services, releases, drift) and `lock acquire|release|status` (a freeze that refuses
//! converges until it is released); `history` and `exec` are `batou-remote`'s. Every
//! `--json` stream is checked against `docs/json-events.md`.

use batou_test_support::assert_documented_events;

use crate::harness::Project;

const ENV: &str = "[hosts.localhost]\ncomponents = [\"motd\", \"banner\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hi\\n\"\n\n[components.banner]\ntype = \"file\"\npath = \"banner\"\ncontent = \"welcome\\n\"\n";

fn run(p: &Project, args: &[&str]) -> batou_test_support::Outcome {
    let out = p.run(args);
    if args.contains(&"--json") {
        assert_documented_events(&out.stdout);
    }
    out
}

#[test]
fn status_reports_drift_without_changing_anything() {
    let p = Project::new();
    p.env("dev", ENV);
    p.converge(&["dev"]);
    std::fs::write(p.path("work/motd/motd"), "by hand\n").unwrap();
    let out = run(&p, &["dev", "status", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let state = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "host_state")
        .expect("a host_state event");
    assert_eq!(state["host"], "localhost");
    assert_eq!(state["drift"]["roots"], serde_json::json!(["motd"]));
    assert_eq!(state["drift"]["of"], 2);
    assert_eq!(state["freeze"], serde_json::Value::Null);
    // A local converge keeps no journal.
    assert_eq!(state["last_deploy"], serde_json::Value::Null);
    assert_eq!(
        std::fs::read_to_string(p.path("work/motd/motd")).unwrap(),
        "by hand\n"
    );
    let out = run(&p, &["dev", "status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("localhost: drift: 1 of 2 root components would change (motd; 1 components)"),
        "{}",
        out.stderr
    );
    p.converge(&["dev"]);
    p.assert_idempotent(&["dev"]);
}

#[test]
fn a_local_freeze_refuses_converges_until_released() {
    let p = Project::new();
    p.env("dev", ENV);
    p.converge(&["dev"]);
    let out = run(&p, &["dev", "lock", "acquire", "-m", "hands off", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(p.path(".batou/freeze").is_file());
    std::fs::write(p.path("work/motd/motd"), "by hand\n").unwrap();

    let out = run(&p, &["dev", "--json"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("is frozen by ") && out.stderr.contains(": hands off"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(p.path("work/motd/motd")).unwrap(),
        "by hand\n",
        "nothing converged"
    );
    // A dry run only reads: it is not refused.
    let out = run(&p, &["dev", "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    let out = run(&p, &["dev", "lock", "status", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lock = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "lock")
        .unwrap();
    assert_eq!(lock["freeze"]["reason"], "hands off");
    let out = run(&p, &["dev", "status", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(&p, &["dev", "lock", "release", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!p.path(".batou/freeze").exists());

    // `history` and `exec` belong to `batou-remote`.
    for verb in [&["history"][..], &["exec", "--", "true"]] {
        let mut args = vec!["dev"];
        args.extend(verb);
        let out = p.run(&args);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(out.stderr.contains("batou-remote"), "{}", out.stderr);
    }
    p.converge(&["dev"]);
    p.assert_idempotent(&["dev"]);
}

/// `status` with a release and the service that runs it (a real runsvdir and HTTP server):
/// the service's status and the current release, next to the drift.
#[test]
fn status_shows_services_and_the_current_release() {
    let runsvdir = batou_test_support::Runsvdir::start();
    let port = batou_test_support::free_port();
    let sd = runsvdir.service_dir().to_string_lossy().into_owned();
    let p = Project::new();
    p.file("site/index.html", "one").file("site/ok.txt", "ok\n");
    p.env(
        "dev",
        &format!(
            r#"[environment]
allow_paths = ["{sd}"]

[hosts.localhost]
data = {{ service_dir = "{sd}" }}
components = ["app", "web"]

[components.app]
type = "release"
files = ["site/"]

[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
cwd = "{{{{ release.current }}}}/site"
restart_on = ["app"]
health = {{ http = "http://127.0.0.1:{port}/ok.txt", within = "10s", stable = "300ms" }}
"#
        ),
    );
    p.converge(&["dev"]);
    let out = run(&p, &["dev", "status", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let state = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "host_state")
        .expect("a host_state event");
    let services = state["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{state}");
    assert_eq!(services[0]["root"], "web");
    assert_eq!(services[0]["status"]["running"], true);
    let releases = state["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 1, "{state}");
    assert_eq!(releases[0]["root"], "app");
    assert_eq!(releases[0]["releases"], 1);
    assert!(releases[0]["current"].is_string(), "{state}");
    assert_eq!(state["drift"]["roots"], serde_json::json!([]), "{state}");
    let out = run(&p, &["dev", "status"]);
    assert!(
        out.stderr.contains("localhost: release app: current "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("localhost: service web > Service('web'): running (runit, pid ")
            || out
                .stderr
                .contains("localhost: service web: running (runit, pid "),
        "{}",
        out.stderr
    );
    p.assert_idempotent(&["dev"]);
}
