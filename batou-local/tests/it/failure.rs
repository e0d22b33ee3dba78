//! A component failing mid-run: earlier changes are reported, later work is not attempted, no
//! file is left half-written.

use crate::harness::Project;

#[test]
fn failure_stops_the_host_and_reports_what_changed() {
    let p = Project::new();
    p.env(
        "dev",
        r#"
[hosts.localhost]
components = ["first", "broken", "last"]

[components.first]
type = "file"
path = "first.txt"
content = "one\n"

[components.broken]
type = "command"
argv = ["sh", "-c", "echo building; echo 'it broke' >&2; exit 3"]
creates = "never"

[components.last]
type = "file"
path = "last.txt"
content = "last\n"
"#,
    );
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let e = &out.stderr;
    assert!(e.contains("localhost: changed first (missing)"), "{e}");
    assert!(e.contains("localhost: failed broken\n"), "{e}");
    assert!(e.contains("error: command `sh -c echo building; echo 'it broke' >&2; exit 3` failed with exit code 3"), "{e}");
    assert!(e.contains("--- stderr ---\nlocalhost:     it broke"), "{e}");
    assert!(e.contains("1 not attempted (last)"), "{e}");
    assert!(
        e.contains("1 host: 0 changed, 0 unchanged, 1 failed in "),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("work/first/first.txt")).unwrap(),
        "one\n"
    );
    assert!(!p.path("work/last").exists());

    let out = p.run(&["dev", "--json"]);
    let finished = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "host_finished")
        .unwrap();
    assert_eq!(finished["changed"], serde_json::json!([]));
    assert_eq!(finished["unchanged"], serde_json::json!(["first"]));
    assert_eq!(finished["failed"], serde_json::json!(["broken"]));
    assert_eq!(finished["not_attempted"], serde_json::json!(["last"]));
}

#[test]
fn a_failed_write_leaves_the_old_file_whole() {
    let p = Project::new();
    p.env(
        "dev",
        r#"
[hosts.localhost]
components = ["conf"]

[components.conf]
type = "file"
path = "sub/app.conf"
content = "new\n"
"#,
    );
    // The parent directory is missing: the write fails before anything is created.
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("parent directory"), "{}", out.stderr);
    let entries: Vec<_> = std::fs::read_dir(p.path("work/conf")).unwrap().collect();
    assert!(entries.is_empty(), "left behind: {entries:?}");

    // With an old file in place, a failing rename keeps the old content and no temp file.
    std::fs::create_dir_all(p.path("work/conf/sub")).unwrap();
    std::fs::write(p.path("work/conf/sub/app.conf"), "old\n").unwrap();
    p.converge_twice(&["dev"]);
    assert_eq!(
        std::fs::read_to_string(p.path("work/conf/sub/app.conf")).unwrap(),
        "new\n"
    );
    let names: Vec<_> = std::fs::read_dir(p.path("work/conf/sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["app.conf"]);
}
