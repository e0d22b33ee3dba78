//! The library's components for real deployments, end to end with `batou-local` and the
//! real tools they drive: `curl` against a loopback HTTP server, `git` with a local bare
//! repository, `python3 -m venv` and pip with a local wheel directory, `crontab` for a user
//! created by the test, and nginx run by the test. Every scenario predicts, converges,
//! compares, and converges again to no change.

use batou_test_support::{
    CronUser, GitRepo, HttpServer, Nginx, Outcome, PYTHON, require_venv, sha256_hex, tar_gz, wheel,
};

use crate::harness::Project;

/// Predicts with `--dry-run`, checks that nothing in the project changed, converges,
/// checks that exactly the predicted component paths changed, and converges again to no
/// change. Returns the real run.
fn predict_then_converge(p: &Project) -> Outcome {
    let before = batou_test_support::snapshot(p.root());
    let dry = p.converge(&["dev", "--dry-run", "--json"]);
    assert_eq!(
        batou_test_support::snapshot(p.root()),
        before,
        "a dry run changed the project"
    );
    let real = p.converge(&["dev", "--json"]);
    assert_eq!(
        dry.changed(),
        real.changed(),
        "prediction (left) and run (right) differ\nprediction: {}\nrun: {}",
        dry.stdout,
        real.stdout
    );
    p.assert_idempotent(&["dev"]);
    real
}

/// A download of a release tarball from `server` and its unpacked tree.
fn release_env(server: &HttpServer, digest: &str) -> String {
    format!(
        r#"[hosts.localhost]
components = ["tarball", "app"]

[components.tarball]
type = "download"
url = "{}"
sha256 = "{digest}"

[components.app]
type = "archive"
path = "../tarball/app.tar.gz"
target = "current"
strip_components = 1
"#,
        server.url("/app.tar.gz")
    )
}

#[test]
fn a_release_is_downloaded_and_unpacked_and_replaced_by_the_next() {
    let server = HttpServer::start();
    let one = tar_gz("app-1", &[("VERSION", "1\n"), ("bin/run", "#!/bin/sh\n")]);
    server.set("/app.tar.gz", &one);
    let p = Project::new();
    p.env("dev", &release_env(&server, &sha256_hex(&one)));
    let run = predict_then_converge(&p);
    assert_eq!(
        run.changed(),
        ["tarball > Workdir", "tarball", "app > Workdir", "app"]
    );
    assert_eq!(
        std::fs::read_to_string(p.path("work/app/current/VERSION")).unwrap(),
        "1\n"
    );

    let two = tar_gz("app-2", &[("VERSION", "2\n")]);
    server.set("/app.tar.gz", &two);
    // The server has a new file, the environment still names the old digest.
    std::fs::remove_file(p.path("work/tarball/app.tar.gz")).unwrap();
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "has SHA-256 digest {}, not the {} that `sha256` says",
            sha256_hex(&two),
            sha256_hex(&one)
        )),
        "{}",
        out.stderr
    );
    assert!(!p.path("work/tarball/app.tar.gz").exists());

    p.env("dev", &release_env(&server, &sha256_hex(&two)));
    let run = predict_then_converge(&p);
    assert_eq!(run.changed(), ["tarball", "app"]);
    assert_eq!(
        std::fs::read_to_string(p.path("work/app/current/VERSION")).unwrap(),
        "2\n"
    );
    assert!(!p.path("work/app/current/bin").exists());
}

fn checkout_env(repo: &GitRepo, extra: &str) -> String {
    format!(
        "[hosts.localhost]\ncomponents = [\"code\"]\n\n[components.code]\ntype = \"git\"\nrepository = \"{}\"\npath = \"checkout\"\nbranch = \"main\"\n{extra}",
        repo.bare.display()
    )
}

#[test]
fn a_checkout_follows_its_branch_and_keeps_local_changes_unless_forced() {
    let repo = GitRepo::new("print('one')\n");
    let p = Project::new();
    p.env("dev", &checkout_env(&repo, ""));
    predict_then_converge(&p);
    let app = p.path("work/code/checkout/app.py");
    assert_eq!(std::fs::read_to_string(&app).unwrap(), "print('one')\n");

    let old = batou_test_support::git(&p.path("work/code/checkout"), &["rev-parse", "HEAD"]);
    let new = repo.commit("app.py", "print('two')\n");
    let out = p.converge(&["dev"]);
    assert!(
        out.stderr.contains(&format!(
            "localhost: changed code ({} -> {})",
            &old[..12],
            &new[..12]
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("checked out {} (was {})", &new[..12], &old[..12])),
        "{}",
        out.stderr
    );

    std::fs::write(&app, "print('patched')\n").unwrap();
    repo.commit("app.py", "print('three')\n");
    let out = p.run(&["dev", "--dry-run"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("has local changes to tracked files, which checking out branch `main` would discard; set `force = true` to discard them"),
        "{}",
        out.stderr
    );
    assert_eq!(p.run(&["dev"]).code, 1);
    assert_eq!(std::fs::read_to_string(&app).unwrap(), "print('patched')\n");

    p.env("dev", &checkout_env(&repo, "force = true\n"));
    predict_then_converge(&p);
    assert_eq!(std::fs::read_to_string(&app).unwrap(), "print('three')\n");
}

#[test]
fn a_virtualenv_installs_from_a_local_wheel_directory_and_updates_on_new_requirements() {
    require_venv();
    let wheels = tempfile::tempdir().unwrap();
    wheel(wheels.path(), "greeting", "1.0", "WORDS = 'one'\n");
    wheel(wheels.path(), "greeting", "2.0", "WORDS = 'two'\n");
    let p = Project::new();
    p.env(
        "dev",
        &format!(
            "[hosts.localhost]\ncomponents = [\"venv\"]\n\n[components.venv]\ntype = \"virtualenv\"\npython = \"{PYTHON}\"\nrequirements = \"requirements.txt\"\npip_args = [\"--no-index\", \"--find-links\", \"{}\"]\n",
            wheels.path().display()
        ),
    );
    p.file("requirements.txt", "greeting==1.0\n");
    let words = || {
        let out = std::process::Command::new(p.path("work/venv/venv/bin/python"))
            .args(["-c", "import greeting; print(greeting.WORDS)"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    predict_then_converge(&p);
    assert_eq!(words(), "one\n");

    p.file("requirements.txt", "greeting==2.0\n");
    let out = p.converge(&["dev"]);
    assert!(
        out.stderr
            .contains("localhost: changed venv (requirements changed)"),
        "{}",
        out.stderr
    );
    assert_eq!(words(), "two\n");
    p.assert_idempotent(&["dev"]);
}

fn cron_env(user: &CronUser, entries: &str) -> String {
    format!(
        "[hosts.localhost]\ncomponents = [\"jobs\"]\n\n[components.jobs]\ntype = \"cron\"\nuser = \"{}\"\nentries = [{entries}]\n",
        user.name
    )
}

#[test]
fn cron_entries_live_in_their_block_and_go_when_no_longer_listed() {
    let user = CronUser::create();
    user.set_crontab("# by hand\n0 3 * * * /usr/bin/backup\n");
    let p = Project::new();
    p.env(
        "dev",
        &cron_env(
            &user,
            "{ name = \"cleanup\", schedule = \"*/15 * * * *\", command = \"/srv/bin/cleanup\" }, { name = \"report\", schedule = \"@daily\", command = \"/srv/bin/report\" }",
        ),
    );
    predict_then_converge(&p);
    assert_eq!(
        user.crontab(),
        "# by hand\n0 3 * * * /usr/bin/backup\n\
         # BEGIN batou: jobs (written by deploys: changes here are replaced)\n\
         # cleanup\n*/15 * * * * /srv/bin/cleanup\n# report\n@daily /srv/bin/report\n\
         # END batou: jobs\n"
    );

    p.env(
        "dev",
        &cron_env(
            &user,
            "{ name = \"report\", schedule = \"@daily\", command = \"/srv/bin/report\" }",
        ),
    );
    let run = predict_then_converge(&p);
    assert_eq!(run.changed(), ["jobs"]);
    assert!(!user.crontab().contains("cleanup"));
    assert!(
        user.crontab()
            .starts_with("# by hand\n0 3 * * * /usr/bin/backup\n")
    );

    // A bad schedule is refused before anything changes, with a hint.
    let p2 = Project::new();
    p2.env(
        "dev",
        &cron_env(
            &user,
            "{ name = \"x\", schedule = \"* * *\", command = \"y\" }",
        ),
    );
    let out = p2.run(&["dev"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the `schedule` of entry 1 (`x`) `* * *` has 3 fields, not 5"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("hint: write five fields"),
        "{}",
        out.stderr
    );
}

use batou_test_support::free_port;

#[test]
fn an_nginx_site_is_checked_in_place_written_and_reloaded_only_when_changed() {
    let first = free_port();
    let nginx = Nginx::start(
        &format!("server {{ listen 127.0.0.1:{first}; return 200 \"first\\n\"; }}\n"),
        first,
    );
    let port = free_port();
    let p = Project::new();
    p.env(
        "dev",
        &format!(
            "[environment]\nallow_paths = [\"{dir}\"]\n\n[hosts.localhost]\ncomponents = [\"site\"]\n\n[components.site]\ntype = \"nginx_site\"\npath = \"{dir}/sites/shop.conf\"\ntemplate = \"shop.conf.j2\"\nvars = {{ port = {port} }}\nconfig = \"{dir}/nginx.conf\"\nprefix = \"{dir}\"\n",
            dir = nginx.dir().display()
        ),
    );
    let site = |body: &str| {
        format!(
            "server {{ listen 127.0.0.1:{{{{ port }}}}; return 200 \"{body} {{{{ host.name }}}}\\n\"; }}\n"
        )
    };
    p.file("shop.conf.j2", &site("one"));
    let pid = nginx.pid();
    predict_then_converge(&p);
    Nginx::wait_for_body(port, "one localhost\n");

    p.file("shop.conf.j2", "server { listen 127.0.0.1:1; bogus; }\n");
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("`nginx -t` refused the new `"),
        "{}",
        out.stderr
    );
    Nginx::wait_for_body(port, "one localhost\n");

    p.file("shop.conf.j2", &site("two"));
    let run = predict_then_converge(&p);
    assert_eq!(run.changed(), ["site"]);
    Nginx::wait_for_body(port, "two localhost\n");
    assert_eq!(nginx.pid(), pid);
}
