//! How human output looks: colour, `-q`, `-v`, `-vv`, `--no-diff`, `--diff-lines`, and the
//! live progress line on a terminal (under a pseudo-terminal from `script`), never in a pipe.

use batou_test_support::assert_output_snapshot;

use crate::harness::Project;

/// Twelve lines, so that a diff has something to cut.
fn config(version: &str) -> String {
    (1..=12)
        .map(|i| format!("line {i} of {version}\\n"))
        .collect()
}

/// A host with a file that changes between runs (`config`), one that does not (`motd`) and
/// a command that takes a moment (`slow`).
fn environment(version: &str) -> String {
    format!(
        r#"[hosts.localhost]
components = ["motd", "config", "slow"]

[components.motd]
type = "file"
path = "motd"
content = "hello\n"

[components.config]
type = "file"
path = "config.txt"
content = "{}"

[components.slow]
type = "command"
argv = ["sh", "-c", "sleep 0.6; touch done"]
creates = "done"
"#,
        config(version)
    )
}

/// A project converged once with version `one`, its environment then moved to `two`: the
/// next run changes `config` (and shows its diff) and leaves `motd` and `slow` alone.
fn project() -> Project {
    let p = Project::new();
    p.env("dev", &environment("one"));
    p.converge(&["dev"]);
    p.env("dev", &environment("two"));
    p
}

/// ANSI escapes made visible in snapshots.
fn visible(text: &str) -> String {
    text.replace('\x1b', "␛")
}

#[test]
fn colour_is_forced_with_color_always() {
    let p = project();
    let out = p.converge(&["dev", "--color", "always", "--diff-lines", "6"]);
    assert_output_snapshot!("output_color_always", visible(&out.stderr));
    p.converge_twice(&["dev"]);
}

#[test]
fn colour_is_off_in_a_pipe_with_never_and_with_json() {
    let p = project();
    let out = p.converge(&["dev", "--dry-run"]);
    assert!(!out.stderr.contains('\x1b'), "{}", out.stderr);
    let out = p.converge(&["dev", "--dry-run", "--color", "never"]);
    assert!(!out.stderr.contains('\x1b'), "{}", out.stderr);
    let out = p.converge(&["dev", "--dry-run", "--json", "--color", "always"]);
    assert!(!out.stdout.contains('\x1b'), "{}", out.stdout);
    assert!(out.events().iter().any(|e| e["event"] == "diff"));
    p.converge_twice(&["dev"]);
}

#[test]
fn quiet_prints_failures_and_the_summary() {
    let p = project();
    let out = p.converge(&["dev", "-q"]);
    assert_output_snapshot!("output_quiet", out.stderr);
    p.env(
        "dev",
        &format!(
            "{}\n[components.broken]\ntype = \"command\"\nargv = [\"false\"]\nunless = [\"false\"]\n",
            environment("two").replace(r#""slow"]"#, r#""slow", "broken"]"#)
        ),
    );
    let out = p.run(&["dev", "-q"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("localhost: failed broken"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("1 host: 0 changed, 0 unchanged, 1 failed"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("root components:"), "{}", out.stderr);
    p.env("dev", &environment("two"));
    p.converge_twice(&["dev"]);
}

#[test]
fn verbose_adds_unchanged_steps_and_timings() {
    let p = project();
    let out = p.converge(&["dev", "-vv", "--dry-run"]);
    assert_output_snapshot!("output_very_verbose_dry_run", out.stderr);
    let out = p.converge(&["dev", "-v"]);
    assert_output_snapshot!("output_verbose", out.stderr);
    p.converge_twice(&["dev"]);
}

#[test]
fn very_verbose_shows_the_commands_run() {
    let p = Project::new();
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"job\"]\n[components.job]\ntype = \"command\"\nargv = [\"touch\", \"made\"]\nunless = [\"test\", \"-e\", \"made\"]\n",
    );
    let out = p.converge(&["dev", "-vv", "--color", "never"]);
    assert!(
        out.stderr
            .contains("localhost: job: guard: running `test -e made` in `"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("localhost: job: running `touch made` in `"),
        "{}",
        out.stderr
    );
    let normal = p.converge(&["dev", "--color", "never"]);
    assert!(
        !normal.stderr.contains("guard: running"),
        "{}",
        normal.stderr
    );
    p.converge_twice(&["dev"]);
}

#[test]
fn diffs_can_be_left_out_or_cut() {
    let p = project();
    let out = p.converge(&["dev", "--dry-run", "--no-diff"]);
    assert_output_snapshot!("output_no_diff", out.stderr);
    let out = p.converge(&["dev", "--dry-run", "--diff-lines", "5"]);
    assert_output_snapshot!("output_diff_lines", out.stderr);
    let out = p.run(&["dev", "--no-diff", "--diff-lines", "5"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    p.converge_twice(&["dev"]);
}

#[test]
fn unchanged_root_components_have_a_json_event() {
    let p = project();
    let out = p.converge(&["dev", "--json"]);
    let finished: Vec<(String, String)> = out
        .events()
        .iter()
        .filter(|e| e["event"] == "step_finished")
        .map(|e| {
            assert!(e["seconds"].is_f64(), "{e}");
            (
                e["component"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        finished,
        [
            ("motd".to_string(), "unchanged".to_string()),
            ("config".to_string(), "changed".to_string()),
            ("slow".to_string(), "unchanged".to_string()),
        ]
    );
    p.converge_twice(&["dev"]);
}

/// Runs `batou-local -C <project> <args>` under a pseudo-terminal; what the terminal showed.
fn on_a_terminal(p: &Project, args: &str, no_color: bool) -> String {
    let script = std::path::Path::new("/usr/bin/script");
    assert!(
        script.exists(),
        "`script` is missing: install it with `apt-get install bsdutils`"
    );
    let command = format!(
        "{} -C {} {args}",
        crate::harness::bin("batou-local").display(),
        p.root().display()
    );
    let mut run = std::process::Command::new(script);
    run.args(["-qfec", &command, "/dev/null"])
        .env("RUST_BACKTRACE", "0")
        .env_remove("BATOU_PROJECT_BINARY")
        .stdin(std::process::Stdio::null());
    if no_color {
        run.env("NO_COLOR", "1");
    } else {
        run.env_remove("NO_COLOR");
    }
    let out = run.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_terminal_shows_the_running_step_and_a_pipe_does_not() {
    let p = Project::new();
    p.env("dev", &environment("one"));
    let screen = on_a_terminal(&p, "dev", false);
    assert!(
        screen.contains("localhost: running slow ("),
        "no live line: {screen:?}"
    );
    // The live line is cleared before the result lines: the screen's last line is the
    // summary, and colour is on by default on a terminal.
    assert!(screen.contains("\r\x1b[2K"), "{screen:?}");
    assert!(screen.contains("\x1b[33mchanged\x1b[0m slow"), "{screen:?}");

    std::fs::remove_dir_all(p.path("work")).unwrap();
    let piped = p.converge(&["dev"]);
    assert!(!piped.stderr.contains("running slow"), "{}", piped.stderr);
    assert!(!piped.stderr.contains('\x1b'), "{}", piped.stderr);
    assert!(!piped.stderr.contains('\r'), "{}", piped.stderr);
    p.converge_twice(&["dev"]);
}

#[test]
fn no_color_is_honoured_on_a_terminal() {
    let p = Project::new();
    p.env("dev", &environment("one"));
    let screen = on_a_terminal(&p, "dev", true);
    assert!(screen.contains("localhost: changed slow"), "{screen:?}");
    assert!(!screen.contains("\x1b[33m"), "{screen:?}");
    // `--color always` wins over `NO_COLOR`, as with cargo.
    std::fs::remove_dir_all(p.path("work")).unwrap();
    let screen = on_a_terminal(&p, "dev --color always", true);
    assert!(screen.contains("\x1b[33mchanged\x1b[0m slow"), "{screen:?}");
    // `--json` on a terminal: no live line and no colour on stdout.
    let screen = on_a_terminal(&p, "dev --json --color always", false);
    assert!(!screen.contains('\x1b'), "{screen:?}");
    assert!(screen.starts_with("{\"event\":\"schema\""), "{screen:?}");
    p.converge_twice(&["dev"]);
}

#[test]
fn a_long_command_with_show_output_streams_its_lines() {
    let p = Project::new();
    p.env(
        "dev",
        r#"[hosts.localhost]
components = ["build"]

[components.build]
type = "command"
argv = ["sh", "-c", "echo compiling; sleep 1; echo linking; touch built"]
creates = "built"
show_output = true
"#,
    );
    let out = p.converge(&["dev", "--json"]);
    let logs: Vec<(String, std::time::SystemTime)> = out
        .events()
        .iter()
        .filter(|e| e["event"] == "log")
        .map(|e| {
            (
                e["message"].as_str().unwrap().to_string(),
                humantime::parse_rfc3339(e["ts"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    let messages: Vec<&str> = logs.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(messages, ["compiling", "linking"], "{}", out.stdout);
    let apart = logs[1].1.duration_since(logs[0].1).unwrap();
    assert!(
        apart >= std::time::Duration::from_millis(800),
        "the first line came only at the end: {apart:?}"
    );
    p.converge_twice(&["dev"]);
}
