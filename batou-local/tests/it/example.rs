//! The example project with its own component types, deployed through the stock binary.

use crate::harness::{Project, bin, snapshot, workspace_root};

fn shop() -> std::path::PathBuf {
    workspace_root().join("examples/shop")
}

#[test]
fn example_project_builds_hands_over_and_converges() {
    let base = Project::new();
    let base_dir = base.path("deploy");
    let base_arg = base_dir.to_str().unwrap();
    let shop = shop();
    let args = [
        "-C",
        shop.to_str().unwrap(),
        "dev",
        "--base-dir",
        base_arg,
        "--json",
    ];
    let out = base.converge(&args);
    let events = out.events();
    let order: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step_started")
        .map(|e| e["component"].as_str().unwrap())
        .collect();
    // `app` is listed first but requires `database`.
    assert_eq!(order, vec!["database", "app", "motd"]);
    assert!(
        out.changed().contains(&"app".to_string()),
        "the app was not reloaded"
    );
    let conf = std::fs::read_to_string(base_dir.join("work/app/config/app.toml")).unwrap();
    assert!(
        conf.contains("url = \"postgres://localhost:5432/shop_dev\""),
        "{conf}"
    );
    assert_eq!(
        std::fs::read_to_string(base_dir.join("work/motd/motd")).unwrap(),
        "Welcome to the shop on localhost\n"
    );
    base.assert_idempotent(&args[..5]);
    assert_eq!(
        std::fs::read_to_string(base_dir.join("work/app/reloads.log")).unwrap(),
        "reloaded\n"
    );

    // A dry run after a configuration drift predicts the reload without doing it.
    std::fs::write(base_dir.join("work/app/config/app.toml"), "drift\n").unwrap();
    let before = snapshot(&base_dir);
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let out = base.converge(&dry);
    assert_eq!(out.changed(), vec!["app > File('config/app.toml')", "app"]);
    assert_eq!(snapshot(&base_dir), before);
}

#[test]
fn example_project_reports_an_unsatisfied_resource() {
    let p = Project::new();
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\nport = 1\n",
    );
    // The project's own binary, built with the workspace, run on another repository.
    let binary = bin("shop-deployment");
    assert!(
        binary.exists(),
        "build the workspace first: cargo build --workspace"
    );
    let out = crate::harness::run_binary(&binary, p.root(), &["dev"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("error: unsatisfied resource requirements: `localhost: app` requires `database`, which no configured component provides in host `localhost`, component `app`"),
        "{}",
        out.stderr
    );
    assert!(!p.path("work").exists());
}

#[test]
fn example_project_installs_a_secret_attribute() {
    use batou_core::secrets::{encrypt, generate_identity, parse_recipients};
    let p = Project::new();
    p.env(
        "dev",
        "[environment]\nbase_dir = \"out\"\n[hosts.localhost]\ncomponents = [\"database\"]\n",
    );
    let (secret, public) = generate_identity();
    p.file("id.txt", &format!("{secret}\n"));
    p.file("secrets/dev.recipients", &format!("{public}\n"));
    let recipients = parse_recipients("r", &public).unwrap();
    std::fs::write(
        p.path("secrets/dev.age"),
        encrypt(
            "[components.database]\npassword = \"db-pw-5e0c97\"\n",
            &recipients,
        )
        .unwrap(),
    )
    .unwrap();
    let binary = bin("shop-deployment");
    let id = p.path("id.txt");
    let args = ["dev", "--identity", id.to_str().unwrap()];
    let out = crate::harness::run_binary(&binary, p.root(), &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("db-pw-5e0c97"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("+password = <secret:components.database.password>"),
        "{}",
        out.stderr
    );
    let credentials = p.path("out/work/database/credentials");
    assert_eq!(
        std::fs::read_to_string(&credentials).unwrap(),
        "password = db-pw-5e0c97\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&credentials)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // The `plan` role (run by `batou-remote` for projects) takes the identity from
    // `BATOU_IDENTITY` and hands the controller the values to mask.
    let plan = std::process::Command::new(&binary)
        .args(["plan", "dev"])
        .arg(p.root())
        .env("BATOU_IDENTITY", &id)
        .output()
        .unwrap();
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(
        plan["secrets"],
        serde_json::json!([["components.database.password", "db-pw-5e0c97"]])
    );
    assert_eq!(plan["host_jobs"]["localhost"]["secrets"], plan["secrets"]);

    let again = crate::harness::run_binary(&binary, p.root(), &[&args[..], &["--json"]].concat());
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        !again.stdout.contains("\"event\":\"changed\""),
        "{}",
        again.stdout
    );
}

/// `examples/services` (TOML only): converged with a runsvdir on its service directory,
/// below a temporary base directory, then converged again with no change.
#[test]
fn services_example_converges_and_stays() {
    let base = Project::new();
    let base_dir = base.path("deploy");
    let runsvdir = batou_test_support::Runsvdir::on(&base_dir.join("service"));
    let example = workspace_root().join("examples/services");
    let args = [
        "-C",
        example.to_str().unwrap(),
        "dev",
        "--base-dir",
        base_dir.to_str().unwrap(),
        "--json",
    ];
    let out = base.converge(&args);
    assert!(out.changed().contains(&"web".to_string()), "{}", out.stdout);
    assert!(out.stdout.contains("healthy after"), "{}", out.stdout);
    let stat = base_dir.join("work/web/.service/web/supervise/pid");
    let pid = std::fs::read_to_string(&stat).unwrap();
    base.assert_idempotent(&args);
    assert_eq!(std::fs::read_to_string(&stat).unwrap(), pid);
    assert!(!example.join("work").exists() && !example.join("service").exists());
    drop(runsvdir);
}
