//! Files written by consecutive steps share one sync: the data of every temporary file is
//! made durable by one `syncfs`, then renamed into place, before anything that may read the
//! files runs and before the run reports done.

use std::path::Path;
use std::process::Command;

use crate::harness::Project;

const FILES: usize = 40;

/// An environment of `FILES` file root components in two directories, then a command that
/// copies two of them: it reads what the steps before it wrote.
fn environment(p: &Project, content: &str) {
    let mut env = String::from("[hosts.localhost]\ncomponents = [");
    for i in 0..FILES {
        env.push_str(&format!("\"f{i:02}\", "));
    }
    env.push_str("\"copy\"]\n\n");
    for i in 0..FILES {
        let dir = if i % 2 == 0 { "a" } else { "b" };
        env.push_str(&format!(
            "[components.f{i:02}]\ntype = \"file\"\npath = \"../site/{dir}/f{i:02}\"\n\
             create_parents = true\ncontent = \"{content} {i}\\n\"\n\n"
        ));
    }
    let site = p.path("work/site");
    env.push_str(&format!(
        "[components.copy]\ntype = \"command\"\nargv = [\"sh\", \"-c\", \
         \"cat {s}/a/f00 {s}/b/f01 > {s}/copy\"]\nunless = [\"sh\", \"-c\", \
         \"cat {s}/a/f00 {s}/b/f01 | cmp -s - {s}/copy\"]\n",
        s = site.display()
    ));
    p.env("dev", &env);
}

/// The sync calls of a `batou-local` run, from `strace`: (syncfs, fsync + fdatasync).
fn traced_syncs(p: &Project, args: &[&str]) -> (usize, usize) {
    let log = p.path("strace.log");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=fsync,fdatasync,syncfs", "-o"])
        .arg(&log)
        .arg(batou_test_support::bin("batou-local"))
        .args(args)
        .current_dir(p.root())
        .env_remove("BATOU_PROJECT_BINARY")
        .output()
        .unwrap_or_else(|e| panic!("cannot run strace ({e}): apt-get install strace"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let calls = |name: &str| {
        text.lines()
            .filter(|l| l.contains(&format!(" {name}(")))
            .count()
    };
    (calls("syncfs"), calls("fsync") + calls("fdatasync"))
}

/// The names of temporary files below `dir`.
fn temporary_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            found.extend(temporary_files(&entry.path()));
        } else if name.contains(".batou-") {
            found.push(name);
        }
    }
    found
}

#[test]
fn consecutive_files_share_one_sync_and_a_command_after_them_reads_them() {
    let p = Project::new();
    environment(&p, "first");
    let (syncfs, fsyncs) = traced_syncs(&p, &["dev"]);
    assert_eq!(syncfs, 1, "one syncfs for the files before the command");
    assert!(fsyncs < FILES / 2, "{fsyncs} fsync calls for {FILES} files");
    assert_eq!(
        std::fs::read_to_string(p.path("work/site/copy")).unwrap(),
        "first 0\nfirst 1\n"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("work/site/b/f39")).unwrap(),
        "first 39\n"
    );
    assert_eq!(temporary_files(&p.path("work")), Vec::<String>::new());

    // Every file changed: they all land, and the command sees the new content.
    environment(&p, "second");
    let out = p.converge(&["dev", "--json"]);
    assert_eq!(out.changed().len(), FILES + 1, "{:#?}", out.changed());
    assert_eq!(
        std::fs::read_to_string(p.path("work/site/copy")).unwrap(),
        "second 0\nsecond 1\n"
    );
    assert_eq!(temporary_files(&p.path("work")), Vec::<String>::new());
    p.assert_idempotent(&["dev"]);
}

#[test]
fn files_written_before_a_failure_land_and_the_failed_steps_do_not() {
    let p = Project::new();
    p.env(
        "dev",
        r#"
[hosts.localhost]
components = ["one", "two", "broken"]

[components.one]
type = "file"
path = "one"
content = "1\n"

[components.two]
type = "file"
path = "two"
content = "2\n"

[components.broken]
type = "file"
path = "missing-dir/three"
content = "3\n"
"#,
    );
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("failed broken"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(p.path("work/one/one")).unwrap(),
        "1\n"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("work/two/two")).unwrap(),
        "2\n"
    );
    assert_eq!(temporary_files(&p.path("work")), Vec::<String>::new());
}
