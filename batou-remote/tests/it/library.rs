//! The library's components for real deployments on a loopback sshd host: the agent drives
//! `curl` (against a loopback HTTP server), `git` (a local bare repository), `python3 -m
//! venv` and pip (a local wheel directory), `crontab` (a user the test creates) and nginx
//! (run by the test), and unpacks an archive. Predict, converge, compare, converge again
//! to no change; then change every input and do it again.

use batou_test_support::{
    CronUser, GitRepo, HttpServer, Nginx, Outcome, PYTHON, git, require_venv, sha256_hex, tar_gz,
    wheel,
};

use crate::harness::{Cluster, Project};

use batou_test_support::free_port;

/// Predicts, converges, compares the changed component paths, converges again to no
/// change; returns the real run.
fn predict_then_converge(cluster: &Cluster, p: &Project) -> Outcome {
    let dry = cluster.run(p.root(), &["prod", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let real = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(real.code, 0, "{}", real.stderr);
    assert_eq!(
        dry.changed(),
        real.changed(),
        "prediction (left) and run (right) differ\nprediction: {}\nrun: {}",
        dry.stdout,
        real.stdout
    );
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.changed(), Vec::<String>::new(), "{}", again.stdout);
    real
}

struct Inputs<'a> {
    server: &'a HttpServer,
    digest: String,
    repo: &'a GitRepo,
    wheels: &'a std::path::Path,
    user: &'a CronUser,
    schedule: &'a str,
    nginx: &'a Nginx,
    port: u16,
}

fn env(i: &Inputs) -> String {
    format!(
        r#"[environment]
base_dir = "srv"
allow_paths = ["{nginx}"]

[hosts.web1]
components = ["tarball", "app", "code", "venv", "jobs", "site"]

[components.tarball]
type = "download"
url = "{url}"
sha256 = "{digest}"

[components.app]
type = "archive"
path = "../tarball/app.tar.gz"
sha256 = "{digest}"
target = "current"
strip_components = 1

[components.code]
type = "git"
repository = "{repo}"
path = "checkout"
branch = "main"

[components.venv]
type = "virtualenv"
python = "{PYTHON}"
requirements = "requirements.txt"
pip_args = ["--no-index", "--find-links", "{wheels}"]

[components.jobs]
type = "cron"
user = "{user}"
entries = [{{ name = "cleanup", schedule = "{schedule}", command = "/srv/bin/cleanup" }}]

[components.site]
type = "nginx_site"
path = "{nginx}/sites/shop.conf"
template = "shop.conf.j2"
vars = {{ port = {port} }}
config = "{nginx}/nginx.conf"
prefix = "{nginx}"
"#,
        nginx = i.nginx.dir().display(),
        url = i.server.url("/app.tar.gz"),
        digest = i.digest,
        repo = i.repo.bare.display(),
        wheels = i.wheels.display(),
        user = i.user.name,
        schedule = i.schedule,
        port = i.port,
    )
}

fn site(body: &str) -> String {
    format!(
        "server {{ listen 127.0.0.1:{{{{ port }}}}; return 200 \"{body} {{{{ host.name }}}}\\n\"; }}\n"
    )
}

#[test]
fn a_web_application_is_deployed_with_the_library_and_updated_on_every_input() {
    require_venv();
    let cluster = Cluster::start(&["web1"]);
    let home = cluster.host("web1").home.clone();
    let work = home.join("srv/work");

    let server = HttpServer::start();
    let one = tar_gz("app-1", &[("VERSION", "1\n")]);
    server.set("/app.tar.gz", &one);
    let repo = GitRepo::new("print('one')\n");
    let wheels = tempfile::tempdir().unwrap();
    wheel(wheels.path(), "greeting", "1.0", "WORDS = 'one'\n");
    wheel(wheels.path(), "greeting", "2.0", "WORDS = 'two'\n");
    let user = CronUser::create();
    user.set_crontab("0 3 * * * /usr/bin/backup\n");
    let first = free_port();
    let nginx = Nginx::start(
        &format!("server {{ listen 127.0.0.1:{first}; return 200 \"first\\n\"; }}\n"),
        first,
    );
    let port = free_port();

    let mut inputs = Inputs {
        server: &server,
        digest: sha256_hex(&one),
        repo: &repo,
        wheels: wheels.path(),
        user: &user,
        schedule: "*/15 * * * *",
        nginx: &nginx,
        port,
    };
    let p = Project::new();
    p.env("prod", &env(&inputs));
    p.file("requirements.txt", "greeting==1.0\n");
    p.file("shop.conf.j2", &site("one"));

    let run = predict_then_converge(&cluster, &p);
    assert_eq!(
        run.changed(),
        [
            "tarball > Workdir",
            "tarball",
            "app > Workdir",
            "app",
            "code > Workdir",
            "code",
            "venv > Workdir",
            "venv",
            "jobs > Workdir",
            "jobs",
            "site > Workdir",
            "site",
        ]
    );
    assert_eq!(
        std::fs::read_to_string(work.join("app/current/VERSION")).unwrap(),
        "1\n"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("code/checkout/app.py")).unwrap(),
        "print('one')\n"
    );
    let words = || {
        let out = std::process::Command::new(work.join("venv/venv/bin/python"))
            .args(["-c", "import greeting; print(greeting.WORDS)"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(words(), "one\n");
    assert!(
        user.crontab()
            .starts_with("0 3 * * * /usr/bin/backup\n# BEGIN batou: jobs ")
    );
    assert!(user.crontab().contains("\n*/15 * * * * /srv/bin/cleanup\n"));
    Nginx::wait_for_body(port, "one web1\n");
    let pid = nginx.pid();

    // Every input changes.
    let two = tar_gz("app-2", &[("VERSION", "2\n")]);
    server.set("/app.tar.gz", &two);
    inputs.digest = sha256_hex(&two);
    let commit = repo.commit("app.py", "print('two')\n");
    inputs.schedule = "@hourly";
    p.env("prod", &env(&inputs));
    p.file("requirements.txt", "greeting==2.0\n");
    p.file("shop.conf.j2", &site("two"));
    let run = predict_then_converge(&cluster, &p);
    assert_eq!(
        run.changed(),
        ["tarball", "app", "code", "venv", "jobs", "site"]
    );
    assert_eq!(
        std::fs::read_to_string(work.join("app/current/VERSION")).unwrap(),
        "2\n"
    );
    assert_eq!(
        git(&work.join("code/checkout"), &["rev-parse", "HEAD"]),
        commit
    );
    assert_eq!(words(), "two\n");
    assert!(user.crontab().contains("\n@hourly /srv/bin/cleanup\n"));
    assert!(user.crontab().starts_with("0 3 * * * /usr/bin/backup\n"));
    Nginx::wait_for_body(port, "two web1\n");
    assert_eq!(nginx.pid(), pid, "nginx was reloaded, not restarted");
}
