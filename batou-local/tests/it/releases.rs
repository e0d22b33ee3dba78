//! The `release` component with real parts: a real runsvdir per test and a real HTTP server
//! (python's `http.server`) run from `{{ release.current }}`, through the built
//! `batou-local`. First release, a second one beside it, an unchanged re-deploy, an
//! unhealthy release rolled back by itself, retention. Every scenario ends with a converge
//! that changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use batou_test_support::{Runsvdir, procs};

use crate::harness::{Outcome, Project};

use batou_test_support::free_port;

struct Scenario {
    project: Project,
    runsvdir: Runsvdir,
    port: u16,
}

impl Scenario {
    fn new() -> Scenario {
        Scenario {
            project: Project::new(),
            runsvdir: Runsvdir::start(),
            port: free_port(),
        }
    }

    /// `app` (a release of `site/`) and `web` serving `{{ release.current }}/site`,
    /// restarted when `app` changes; healthy when `/ok.txt` answers.
    fn env(&self, keep: usize) {
        let sd = self.runsvdir.service_dir().to_string_lossy().into_owned();
        let port = self.port;
        self.project.env(
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
keep = {keep}

[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
cwd = "{{{{ release.current }}}}/site"
restart_on = ["app"]
health = {{ http = "http://127.0.0.1:{port}/ok.txt", within = "3s", stable = "300ms" }}
"#
            ),
        );
    }

    /// The release's files: `index.html` says `version`; `ok.txt` only when `healthy`.
    fn site(&self, version: &str, healthy: bool) {
        self.project.file("site/index.html", version);
        let ok = self.project.path("site/ok.txt");
        if healthy {
            self.project.file("site/ok.txt", "ok\n");
        } else {
            let _ = std::fs::remove_file(ok);
        }
    }

    fn run(&self, args: &[&str]) -> Outcome {
        let mut all = vec!["dev", "--json"];
        all.extend(args);
        self.project.run(&all)
    }

    fn converge(&self) -> Outcome {
        let out = self.run(&[]);
        assert_eq!(
            out.code, 0,
            "deploy failed:\n{}\n{}",
            out.stdout, out.stderr
        );
        out
    }

    fn releases_dir(&self) -> std::path::PathBuf {
        self.project.path("releases/app")
    }

    fn current(&self) -> String {
        std::fs::read_link(self.releases_dir().join("current"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.releases_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && n != "current")
            .collect();
        ids.sort();
        ids
    }

    fn pid(&self) -> Option<u32> {
        let dir = self.project.path("work/web/.service/web/supervise");
        if std::fs::read_to_string(dir.join("stat")).ok()?.trim() != "run" {
            return None;
        }
        std::fs::read_to_string(dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `GET /` once the server answers.
    fn get(&self) -> String {
        procs::wait_until("web to answer", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        http_get(self.port)
    }
}

fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

fn reasons(out: &Outcome) -> Vec<(String, String)> {
    out.events()
        .into_iter()
        .filter(|e| e["event"] == "changed")
        .map(|e| {
            (
                e["component"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_release_activates_a_second_one_stays_beside_it_and_an_unchanged_deploy_does_nothing() {
    let s = Scenario::new();
    s.env(5);
    s.site("v1", true);
    let first = s.converge();
    let ids = s.ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let one = ids[0].clone();
    assert_eq!(s.current(), one);
    assert!(
        reasons(&first).contains(&(
            "app".to_string(),
            format!("unpacked and activated release {one}")
        )),
        "{:?}",
        reasons(&first)
    );
    assert_eq!(s.get(), "v1");
    // Writable by the owner only, and the store holds the bundle by its digest.
    let mode = std::fs::metadata(s.releases_dir().join(&one).join("site/index.html"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o022, 0, "{mode:o}");
    let store: Vec<_> = std::fs::read_dir(s.project.path("releases/.store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(store.len(), 1);
    assert!(one.ends_with(&store[0][..12]), "{one} {store:?}");
    let pid = s.pid().expect("web runs");

    // Unchanged: nothing is unpacked, switched or restarted.
    let again = s.converge();
    assert_eq!(again.changed(), Vec::<String>::new());
    assert_eq!(s.pid(), Some(pid));

    // A second release: unpacked beside the first, activated, the service restarted on it.
    s.site("v2", true);
    let second = s.converge();
    let ids = s.ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], one);
    let two = ids[1].clone();
    assert_eq!(s.current(), two);
    assert!(
        reasons(&second).contains(&("web".to_string(), "restarted (app changed)".to_string())),
        "{:?}",
        reasons(&second)
    );
    assert_eq!(s.get(), "v2");
    assert_ne!(s.pid(), Some(pid));
    s.project.assert_idempotent(&["dev"]);

    // Going back to the first files is the first release again (same digest, same id).
    s.site("v1", true);
    s.converge();
    assert_eq!(s.current(), one);
    assert_eq!(s.ids().len(), 2);
    assert_eq!(s.get(), "v1");
    s.project.assert_idempotent(&["dev"]);
}

#[test]
fn an_unhealthy_release_is_rolled_back_by_itself_and_the_previous_one_serves_again() {
    let s = Scenario::new();
    s.env(5);
    s.site("v1", true);
    s.converge();
    let good = s.current();
    assert_eq!(s.get(), "v1");

    s.site("v2 broken", false);
    let out = s.run(&[]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let failed: Vec<String> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "failed")
        .map(|e| e["error"].to_string())
        .collect();
    assert!(
        failed
            .iter()
            .any(|e| e.contains(&format!("not healthy; rolled back to {good}"))),
        "{failed:?}"
    );
    assert_eq!(s.current(), good);
    assert_eq!(s.get(), "v1");
    assert_eq!(s.ids().len(), 2, "the broken release stays unpacked");
    let history = std::fs::read_to_string(s.releases_dir().join(".history.jsonl")).unwrap();
    assert!(history.contains("\"rolled_back\""), "{history}");

    // Back to the good files: the release that is current, nothing to change.
    s.site("v1", true);
    s.project.assert_idempotent(&["dev"]);
    assert_eq!(s.current(), good);
}

#[test]
fn a_first_release_that_is_not_healthy_says_there_is_nothing_to_roll_back_to() {
    let s = Scenario::new();
    s.env(5);
    s.site("v1 broken", false);
    let out = s.run(&[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("not healthy; not rolled back: there is no previous release to roll back to"),
        "{}",
        out.stdout
    );
    s.site("v1", true);
    let fixed = s.converge();
    assert!(!fixed.changed().is_empty());
    s.project.assert_idempotent(&["dev"]);
    assert_eq!(s.get(), "v1");
}

#[test]
fn retention_keeps_current_and_the_one_before_it() {
    let s = Scenario::new();
    s.env(2);
    let mut seen = Vec::new();
    for v in ["v1", "v2", "v3", "v4"] {
        s.site(v, true);
        s.converge();
        seen.push(s.current());
    }
    assert_eq!(s.ids(), seen[2..].to_vec());
    assert_eq!(s.get(), "v4");
    s.project.assert_idempotent(&["dev"]);

    // keep = 1 still keeps the one before current.
    s.env(1);
    s.project.assert_idempotent(&["dev"]);
    assert_eq!(s.ids(), seen[2..].to_vec());
}

#[test]
fn rollback_and_roll_forward_in_one_step_and_the_releases_verb_lists_them() {
    let s = Scenario::new();
    s.env(5);
    s.site("v1", true);
    s.converge();
    let one = s.current();
    s.site("v2", true);
    s.converge();
    let two = s.current();
    let bundles = std::fs::read_dir(s.project.path(".batou/bundles"))
        .unwrap()
        .count();

    let listed = s.run(&["releases"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let lines: Vec<String> = listed
        .events()
        .into_iter()
        .filter(|e| e["event"] == "log")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("release {one}, activated ")),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(&format!("release {two} (current), activated ")),
        "{lines:?}"
    );

    // Back to the release before the current one: no build, the service restarted on it.
    let back = s.run(&["rollback"]);
    assert_eq!(back.code, 0, "{}\n{}", back.stdout, back.stderr);
    assert_eq!(s.current(), one);
    assert_eq!(s.get(), "v1");
    assert!(
        back.stdout
            .contains(&format!("app: rolled back {two} -> {one}")),
        "{}",
        back.stdout
    );
    assert_eq!(
        std::fs::read_dir(s.project.path(".batou/bundles"))
            .unwrap()
            .count(),
        bundles,
        "a rollback builds nothing"
    );

    // Forward again by id, and an unknown id is refused with the ones there are.
    let wrong = s.run(&["rollback", "--to", "nope"]);
    assert_eq!(wrong.code, 1);
    assert!(
        wrong
            .stdout
            .contains("release `nope` is not on host `localhost`"),
        "{}",
        wrong.stdout
    );
    assert_eq!(s.current(), one);
    let forward = s.run(&["rollback", "--to", &two]);
    assert_eq!(forward.code, 0, "{}", forward.stdout);
    assert_eq!(s.current(), two);
    assert_eq!(s.get(), "v2");

    // Usage: `--to` belongs to `rollback`; an unknown root is named with a suggestion.
    let usage = s.project.run(&["dev", "releases", "--to", &one]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(
        usage
            .stderr
            .contains("`--to` applies to the `rollback` verb only")
    );
    let unknown = s.run(&["rollback", "ap"]);
    assert_eq!(unknown.code, 3, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("(did you mean `app`?)"),
        "{}",
        unknown.stderr
    );
    let not_release = s.run(&["releases", "web"]);
    assert_eq!(not_release.code, 3);
    assert!(
        not_release
            .stderr
            .contains("root component `web` is not a release")
    );

    s.project.assert_idempotent(&["dev"]);
}

/// `examples/releases`, copied into a temporary directory (the build writes `.batou/` into
/// the project): converged with a runsvdir, the server says the release it runs from, a
/// second release and a rollback, then converged again with no change.
#[test]
fn the_releases_example_serves_its_release_id_and_rolls_back() {
    let base = Project::new();
    let example = base.path("example");
    let source = crate::harness::workspace_root().join("examples/releases");
    for file in ["environments/dev.toml", "app/server.py", "app/VERSION"] {
        let to = example.join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(source.join(file), &to).unwrap();
    }
    let runsvdir = Runsvdir::on(&example.join("service"));
    let args = ["-C", example.to_str().unwrap(), "dev", "--json"];
    let get = || {
        procs::wait_until("the example to answer", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", 8492)).is_ok()
        });
        http_get(8492)
    };
    let current = || {
        std::fs::read_link(example.join("releases/app/current"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    base.converge(&args);
    let one = current();
    assert_eq!(get(), format!("release {one} version 1.0\n"));
    base.assert_idempotent(&args);

    std::fs::write(example.join("app/VERSION"), "1.1\n").unwrap();
    base.converge(&args);
    let two = current();
    assert_eq!(get(), format!("release {two} version 1.1\n"));
    let back = base.run(&["-C", example.to_str().unwrap(), "dev", "rollback"]);
    assert_eq!(back.code, 0, "{}", back.stderr);
    assert_eq!(get(), format!("release {one} version 1.0\n"));
    let forward = base.run(&[
        "-C",
        example.to_str().unwrap(),
        "dev",
        "rollback",
        "--to",
        &two,
    ]);
    assert_eq!(forward.code, 0, "{}", forward.stderr);
    assert_eq!(get(), format!("release {two} version 1.1\n"));
    base.assert_idempotent(&args);
    drop(runsvdir);
}

#[test]
fn a_failing_build_runs_once_shows_its_output_and_touches_nothing() {
    let s = Scenario::new();
    s.env(5);
    s.site("v1", true);
    let text = std::fs::read_to_string(s.project.path("environments/dev.toml"))
        .unwrap()
        .replace(
            "files = [\"site/\"]",
            "build = [\"sh\", \"-c\", \"echo compiling the site; exit 4\"]\nfiles = [\"site/\"]",
        );
    s.project.env("dev", &text);
    let out = s.project.run(&["dev"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(
        out.stderr.matches("build | compiling the site").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("the build `sh -c echo compiling the site; exit 4` failed"),
        "{}",
        out.stderr
    );
    assert!(!s.project.path("releases").exists());
    assert!(!s.project.path("work").exists());
    // A service verb builds nothing either.
    let status = s.project.run(&["dev", "service", "status"]);
    assert!(!status.stderr.contains("build |"), "{}", status.stderr);
    s.env(5);
    s.converge();
    s.project.assert_idempotent(&["dev"]);
}

#[test]
fn no_verb_takes_an_environment_name() {
    let p = Project::new();
    for name in ["releases", "rollback"] {
        p.env(
            name,
            &format!(
                "[environment]\nbase_dir = \"{name}\"\n\n[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"{name}.txt\"\ncontent = \"hi\"\n"
            ),
        );
        // Each environment has a base directory of its own: one belongs to one environment.
        let out = p.run(&[name, "--json"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(p.path(&format!("{name}/work/motd/{name}.txt")).exists());
        p.assert_idempotent(&[name]);
    }
}
