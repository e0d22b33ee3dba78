//! The tooling around the commands: shell completions (generated, and bash's completion of
//! environment names run for real), man pages, and `init` (a new repository converges, a
//! second converge changes nothing, existing files are never overwritten, `--rust` builds
//! and its test passes).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Outcome, bin, run_binary, snapshot, workspace_binary, workspace_root};

const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];
const SHELLS_INSTALL: &str = "apt-get install -y bash zsh fish";

fn both() -> [(&'static str, PathBuf); 2] {
    [
        ("batou-local", bin("batou-local")),
        ("batou-remote", workspace_binary("batou-remote")),
    ]
}

#[test]
fn completions_are_generated_for_three_shells() {
    let cwd = tempfile::tempdir().unwrap();
    for (name, binary) in both() {
        for shell in SHELLS {
            let out = run_binary(&binary, cwd.path(), &["completions", shell]);
            assert_eq!(out.code, 0, "{name} {shell}: {}", out.stderr);
            let script = &out.stdout;
            let long = |flag: &str| match shell {
                "fish" => format!("-l {flag}"),
                _ => format!("--{flag}"),
            };
            for word in [
                "deploy",
                "secrets",
                "completions",
                &long("dry-run"),
                &long("json"),
            ] {
                assert!(script.contains(word), "{name} {shell}: no `{word}`");
            }
            assert!(
                script.contains(&format!("{name} __complete-environments")),
                "{name} {shell}: environments are not completed"
            );
            // Hidden commands are no candidates (the scripts only call one of them).
            for hidden in ["agent-install", "plan"] {
                assert!(
                    !script.contains(hidden),
                    "{name} {shell}: `{hidden}` offered"
                );
            }
            if name == "batou-local" {
                assert!(script.contains("init"), "{shell}");
            } else {
                assert!(
                    !script.contains("Create a deployment repository"),
                    "{shell}"
                );
                assert!(script.contains(&long("keep-going")), "{shell}");
            }
        }
        // Each shell accepts its script.
        for shell in SHELLS {
            let script = cwd.path().join(format!("{name}.{shell}"));
            let out = run_binary(&binary, cwd.path(), &["completions", shell]);
            std::fs::write(&script, out.stdout).unwrap();
            let flag = if shell == "fish" {
                "--no-execute"
            } else {
                "-n"
            };
            let check = Command::new(shell)
                .arg(flag)
                .arg(&script)
                .output()
                .unwrap_or_else(|e| panic!("{shell} does not run ({e}): {SHELLS_INSTALL}"));
            assert!(
                check.status.success(),
                "{shell} rejects the script: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let out = run_binary(bin("batou-local"), cwd.path(), &["completions", "tcsh"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

/// Completes the words of `line` (the last one being completed, possibly empty) with the
/// bash completion of `name`, as bash would on TAB, in `cwd`.
fn bash_complete(name: &str, binary: &Path, cwd: &Path, line: &[&str]) -> Vec<String> {
    let bin_dir = binary.parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let function = format!("_{}_environments", name.replace('-', "_"));
    let script = format!(
        r#"source <("{name}" completions bash) || exit 9
COMP_WORDS=("$@")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="$*"
COMP_POINT=${{#COMP_LINE}}
COMPREPLY=()
{function} "{name}" "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}"
"#
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("bash")
        .arg(name)
        .args(line)
        .current_dir(cwd)
        .env("PATH", path)
        .output()
        .expect("bash runs (apt-get install -y bash)");
    let out = Outcome::from(out);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_environment_names_of_the_project() {
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    std::fs::create_dir_all(root.join("environments")).unwrap();
    std::fs::create_dir_all(root.join("components/app")).unwrap();
    for env in ["dev", "production", "staging"] {
        std::fs::write(root.join(format!("environments/{env}.toml")), "").unwrap();
    }
    std::fs::write(root.join("environments/README.md"), "").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let root_arg = root.to_str().unwrap();
    for (name, binary) in both() {
        let complete = |cwd: &Path, line: &[&str]| bash_complete(name, &binary, cwd, line);
        let nested = root.join("components/app");
        // The environment, from the nearest directory with `environments/` above.
        assert_eq!(complete(&nested, &["pr"]), ["production"], "{name}");
        assert_eq!(complete(&nested, &["deploy", "st"]), ["staging"], "{name}");
        assert_eq!(
            complete(root, &["--dry-run", "d"]),
            ["deploy", "dev"],
            "{name}"
        );
        let all = complete(root, &[""]);
        for env in [
            "dev",
            "production",
            "staging",
            "deploy",
            "--json",
            "--version",
        ] {
            assert!(all.contains(&env.to_string()), "{name}: {all:?}");
        }
        for hidden in ["agent", "plan", "__complete-environments"] {
            assert!(!all.contains(&hidden.to_string()), "{name}: {all:?}");
        }
        assert!(!all.contains(&"README".to_string()), "{name}: {all:?}");
        // `-C` names the project, wherever the shell is.
        assert_eq!(
            complete(elsewhere.path(), &["-C", root_arg, "pro"]),
            ["production"],
            "{name}"
        );
        assert!(complete(elsewhere.path(), &["pro"]).is_empty(), "{name}");
        // After the environment, and in an option's value, no environment names.
        let after = complete(root, &["dev", ""]);
        assert!(
            !after.contains(&"production".to_string()),
            "{name}: {after:?}"
        );
        assert!(complete(root, &["dev", "pr"]).is_empty(), "{name}");
    }
}

/// Runs `script` in `shell` (`zsh` or `fish`) with the completion script of `name` and
/// `PATH` leading to the built binaries, in `cwd`; returns the lines it printed.
fn shell_run(shell: &str, name: &str, binary: &Path, cwd: &Path, script: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let completions = dir.path().join(format!("{name}.{shell}"));
    let out = run_binary(binary, cwd, &["completions", shell]);
    std::fs::write(&completions, out.stdout).unwrap();
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let out = Command::new(shell)
        .arg("-c")
        .arg(format!(
            "source {} 2>/dev/null\n{script}",
            completions.display()
        ))
        .current_dir(cwd)
        .env("PATH", path)
        .output()
        .unwrap_or_else(|e| panic!("{shell} does not run ({e}): {SHELLS_INSTALL}"));
    let out = Outcome::from(out);
    assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
    out.stdout.lines().map(str::to_string).collect()
}

#[test]
fn zsh_and_fish_complete_environment_names_of_the_project() {
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    std::fs::create_dir_all(root.join("environments")).unwrap();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for env in ["dev", "production"] {
        std::fs::write(root.join(format!("environments/{env}.toml")), "").unwrap();
    }
    let nested = root.join("sub");
    for (name, binary) in both() {
        // fish's own completion engine, as on TAB.
        let fish = |line: &str| {
            shell_run(
                "fish",
                name,
                &binary,
                &nested,
                &format!("complete -C '{line}'"),
            )
        };
        assert_eq!(fish(&format!("{name} pr")), ["production"], "{name}");
        assert_eq!(fish(&format!("{name} deploy d")), ["dev"], "{name}");
        assert!(fish(&format!("{name} dev pr")).is_empty(), "{name}");
        // zsh: the added function with `words` and `CURRENT` as the completion system sets
        // them, clap's function and `compadd` replaced by ones that print.
        let function = format!("_{}_environments", name.replace('-', "_"));
        let zsh = |words: &str, current: usize| {
            shell_run(
                "zsh",
                name,
                &binary,
                &nested,
                &format!(
                    "compadd() {{ [[ $1 == -a ]] && print -l -- ${{(P)2}} }}\n\
                     _{name}() {{ : }}\n\
                     words=({words}); CURRENT={current}; {function}"
                ),
            )
        };
        assert_eq!(
            zsh(&format!("{name} ''"), 2),
            ["dev", "production"],
            "{name}"
        );
        assert_eq!(
            zsh(&format!("{name} -C {} deploy ''", root.display()), 5),
            ["dev", "production"],
            "{name}"
        );
        assert!(zsh(&format!("{name} dev ''"), 3).is_empty(), "{name}");
    }
}

#[test]
fn man_pages_are_generated_and_readable() {
    for (name, binary) in both() {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("man1");
        let out = run_binary(&binary, dir.path(), &["man", out_dir.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let mut pages: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pages.sort();
        let mut expected: Vec<String> = ["", "-completions", "-deploy", "-man", "-secrets"]
            .iter()
            .map(|sub| format!("{name}{sub}.1"))
            .collect();
        if name == "batou-local" {
            expected.push("batou-local-init.1".into());
        }
        expected.sort();
        assert_eq!(pages, expected);
        assert_eq!(out.stdout.lines().count(), expected.len(), "{}", out.stdout);
        let main = std::fs::read_to_string(out_dir.join(format!("{name}.1"))).unwrap();
        assert!(main.starts_with(".ie \\n(.g .ds Aq"), "{main}");
        assert!(main.contains(&format!(".TH {name} 1")), "{main}");
        assert!(main.contains("dry\\-run"), "{main}");
        // No hidden command has a page.
        assert!(!main.contains("__complete"), "{main}");
        // groff (what `man` runs) reads every page without a warning.
        for page in &expected {
            let rendered = Command::new("groff")
                .args(["-man", "-Tutf8", "-P-cbou", "-ww"])
                .arg(out_dir.join(page))
                .output()
                .expect("groff is installed (apt-get install -y groff-base)");
            let stderr = String::from_utf8_lossy(&rendered.stderr);
            assert!(
                rendered.status.success() && stderr.is_empty(),
                "{page}: {stderr}"
            );
            let text = String::from_utf8_lossy(&rendered.stdout);
            assert!(text.contains("SYNOPSIS"), "{page}: {text}");
        }
    }
}

fn init_in(dir: &Path, args: &[&str]) -> Outcome {
    let mut argv = vec!["init"];
    argv.extend(args);
    run_binary(bin("batou-local"), dir, &argv)
}

#[test]
fn init_creates_a_repository_that_converges_and_stays() {
    let parent = tempfile::tempdir().unwrap();
    let out = init_in(parent.path(), &["new"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("next: cd new && batou-local dev"),
        "{}",
        out.stderr
    );
    let root = parent.path().join("new");
    for file in ["environments/dev.toml", ".gitignore", "templates/motd.j2"] {
        assert!(root.join(file).is_file(), "{file}");
    }
    assert!(!root.join("Cargo.toml").exists());
    let dev = std::fs::read_to_string(root.join("environments/dev.toml")).unwrap();
    for kind in ["file", "directory", "symlink", "command", "service"] {
        assert!(
            dev.contains(&format!("type = \"{kind}\"")),
            "no {kind}: {dev}"
        );
    }

    let first = run_binary(bin("batou-local"), &root, &["dev", "--json"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(
        first.statuses().get("localhost").map(String::as_str),
        Some("changed")
    );
    for root_component in ["motd", "logs", "current", "stamp"] {
        assert!(
            first.changed().contains(&root_component.to_string()),
            "{root_component}: {:?}",
            first.changed()
        );
    }
    assert_eq!(
        std::fs::read_to_string(root.join("work/motd/motd")).unwrap(),
        "Welcome to localhost, looked after by the operators.\n"
    );
    assert_eq!(
        std::fs::read_link(root.join("work/current/current")).unwrap(),
        Path::new("../motd/motd")
    );
    assert!(root.join("work/stamp/stamp").is_file());
    assert!(root.join("work/logs/logs").is_dir());
    let again = run_binary(bin("batou-local"), &root, &["dev", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.changed().is_empty(), "{:?}", again.changed());
    // A dry run agrees that nothing is left to do.
    let dry = run_binary(bin("batou-local"), &root, &["dev", "--dry-run", "--json"]);
    assert!(dry.changed().is_empty(), "{:?}", dry.changed());
    // What converging wrote is what `.gitignore` leaves out of the repository.
    let ignore = std::fs::read_to_string(root.join(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "/work"), "{ignore}");
}

#[test]
fn init_refuses_to_overwrite_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    assert_eq!(init_in(root, &[]).code, 0);
    std::fs::write(root.join("templates/motd.j2"), "mine\n").unwrap();
    let before = snapshot(root);
    let out = init_in(root, &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "error: refusing to overwrite `environments/dev.toml`, `.gitignore`, `templates/motd.j2` in `.`: nothing was written\n"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("hint: run `init` in an empty directory")
    );
    assert_eq!(snapshot(root), before);

    // One file in the way is enough, and nothing else is written either.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join(".gitignore"), "*.log\n").unwrap();
    let out = init_in(other.path(), &["--rust"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("refusing to overwrite `.gitignore`"),
        "{}",
        out.stderr
    );
    assert!(!other.path().join("environments").exists());
    assert!(!other.path().join("Cargo.toml").exists());
    // A dangling symlink counts as a file in the way: it is not written through.
    let link = tempfile::tempdir().unwrap();
    let target = link.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, link.path().join(".gitignore")).unwrap();
    assert_eq!(init_in(link.path(), &[]).code, 1);
    assert!(!target.exists());

    let out = init_in(root, &["--batou-path", "/x"]);
    assert_eq!(out.code, 2, "`--batou-path` needs `--rust`: {}", out.stderr);
}

/// The target directory of this build, shared with the new package so that the batou crates
/// and their dependencies are not built again from nothing.
fn target_dir() -> PathBuf {
    bin("batou-local")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

#[test]
fn init_rust_creates_a_package_that_builds_tests_and_converges() {
    let parent = tempfile::tempdir().unwrap();
    let workspace = workspace_root();
    let out = init_in(
        parent.path(),
        &["ops", "--rust", "--batou-path", workspace.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let root = parent.path().join("ops");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"ops\""), "{manifest}");
    assert!(
        manifest.contains(&format!(
            "batou = {{ path = \"{}\" }}",
            workspace.join("batou").display()
        )),
        "{manifest}"
    );

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let test = Command::new(&cargo)
        .args(["test", "--quiet"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap();
    let test = Outcome::from(test);
    assert_eq!(test.code, 0, "{}\n{}", test.stdout, test.stderr);
    assert!(
        test.stdout.contains("1 passed"),
        "{}\n{}",
        test.stdout,
        test.stderr
    );

    // The stock binary builds the package and hands over to it.
    let converge = |args: &[&str]| {
        let out = Command::new(bin("batou-local"))
            .args(args)
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", target_dir())
            .env("RUST_BACKTRACE", "0")
            .env_remove("BATOU_PROJECT_BINARY")
            .output()
            .unwrap();
        let out = Outcome::from(out);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out
    };
    let first = converge(&["dev", "--json"]);
    assert!(
        first
            .changed()
            .contains(&"greeting > File('greeting.txt')".to_string()),
        "{:?}",
        first.changed()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("work/greeting/greeting.txt")).unwrap(),
        "Hello, operators, from localhost!\n"
    );
    let again = converge(&["dev", "--json"]);
    assert!(again.changed().is_empty(), "{:?}", again.changed());
}

#[test]
fn environments_named_like_the_new_commands_deploy_with_deploy() {
    let motd = "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hi\\n\"\n";
    for name in ["init", "completions", "man"] {
        let p = crate::harness::Project::new();
        p.env(name, motd);
        let out = p.converge(&["deploy", name, "--json"]);
        assert_eq!(out.changed(), ["motd > Workdir", "motd"], "{name}");
        p.assert_idempotent(&["deploy", name]);
    }
}
