//! `Git`: a checkout of a repository at a branch, a tag or a commit, made and moved with the
//! host's `git`.
//!
//! The checkout's `HEAD` is detached at the wanted commit: a deployed tree follows what the
//! environment names, not a local branch. Local changes to tracked files are never thrown
//! away unless `force` says so; untracked files are left alone (git itself refuses a
//! checkout that would overwrite one, unless `force`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use batou_core::{AllowedPaths, Component, ConfigError, Configure, Deploy, Verdict, refuse_nul};
use serde::Deserialize;

use crate::cmd::{CommandOutput, cmd};
use crate::digest::short;
use crate::download::is_not_found;

/// How long one git command may run when `timeout` does not say.
const DEFAULT_TIMEOUT: f64 = 300.0;

/// A git checkout at `path` of `repository` at one `branch`, `tag` or `commit`.
///
/// ```toml
/// [components.code]
/// type = "git"
/// repository = "https://git.example.com/shop.git"   # anything `git clone` takes
/// path = "code"                                     # relative to the work directory
/// branch = "main"                                   # or `tag = "v1.4.2"`, or `commit = "<40 hex digits>"`
/// force = false                                     # discard local changes to tracked files
/// timeout = 300                                     # seconds for one git command
/// ```
///
/// Verify asks the repository which commit the branch or tag names (`git ls-remote`, also in
/// a dry run) and compares it with the checkout's `HEAD`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Git {
    /// The repository: a URL or a path on the host (absolute, or relative to the work
    /// directory).
    pub repository: String,
    /// The checkout's directory, relative to the work directory.
    pub path: String,
    /// Follow this branch.
    #[serde(default)]
    pub branch: Option<String>,
    /// Check out this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Check out this commit (its full 40-digit id).
    #[serde(default)]
    pub commit: Option<String>,
    /// Discard local changes to tracked files instead of refusing to move.
    #[serde(default)]
    pub force: bool,
    /// Seconds one git command may run.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(skip)]
    resolved: PathBuf,
    /// `repository`, a relative local path made absolute.
    #[serde(skip)]
    url: String,
    #[serde(skip)]
    workdir: PathBuf,
    #[serde(skip)]
    allowed: AllowedPaths,
}

/// What a checkout looks like on the host.
enum Observed {
    /// No checkout yet (nothing there, or an empty directory).
    Missing,
    Checkout {
        head: Option<String>,
        origin: Option<String>,
        dirty: bool,
    },
}

impl Git {
    /// A checkout of `repository` at `path`; name the branch, tag or commit with
    /// [`Git::branch`], [`Git::tag`] or [`Git::commit`].
    pub fn new(repository: impl Into<String>, path: impl Into<String>) -> Self {
        Git {
            repository: repository.into(),
            path: path.into(),
            branch: None,
            tag: None,
            commit: None,
            force: false,
            timeout: None,
            resolved: PathBuf::new(),
            url: String::new(),
            workdir: PathBuf::new(),
            allowed: AllowedPaths::default(),
        }
    }

    /// Follows `branch`.
    pub fn branch(mut self, branch: impl Into<String>) -> Self {
        self.branch = Some(branch.into());
        self
    }

    /// Checks out `tag`.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Checks out `commit`, a full 40-digit commit id.
    pub fn commit(mut self, commit: impl Into<String>) -> Self {
        self.commit = Some(commit.into());
        self
    }

    /// Discards local changes to tracked files instead of refusing to move.
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }

    /// The absolute path of the checkout, known after configure.
    pub fn resolved_path(&self) -> &std::path::Path {
        &self.resolved
    }

    /// What is checked out, for messages: `branch `main``.
    fn wanted(&self) -> String {
        match (&self.branch, &self.tag, &self.commit) {
            (Some(b), _, _) => format!("branch `{b}`"),
            (_, Some(t), _) => format!("tag `{t}`"),
            (_, _, Some(c)) => format!("commit `{c}`"),
            _ => unreachable!("configure requires one of them"),
        }
    }

    /// Runs git with `args` (in the work directory, which exists once the step runs) and
    /// returns its output whatever the exit code.
    fn run(&self, cx: &mut Deploy, args: &[&str]) -> anyhow::Result<CommandOutput> {
        let seconds = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let argv: Vec<String> = std::iter::once("git")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        cx.detail(format!("running `{}`", argv.join(" ")));
        let mut command = cmd(&argv)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .timeout(Duration::from_secs_f64(seconds));
        if self.workdir.is_dir() {
            command = command.cwd(&self.workdir);
        }
        command.run().map_err(|e| {
            if is_not_found(&e) {
                anyhow::anyhow!(
                    "`git` is not installed on the host (install it, e.g. `apt-get install git`)"
                )
            } else {
                e
            }
        })
    }

    /// Runs git with `args` and returns its output if it succeeded.
    fn check(&self, cx: &mut Deploy, args: &[&str]) -> anyhow::Result<CommandOutput> {
        self.run(cx, args)?.check()
    }

    /// The commit the repository's branch or tag names now, or the given commit.
    fn remote_commit(&self, cx: &mut Deploy) -> anyhow::Result<String> {
        if let Some(commit) = &self.commit {
            return Ok(commit.clone());
        }
        let refs: Vec<String> = match (&self.branch, &self.tag) {
            (Some(b), _) => vec![format!("refs/heads/{b}")],
            (_, Some(t)) => vec![format!("refs/tags/{t}"), format!("refs/tags/{t}^{{}}")],
            _ => unreachable!("configure requires one of them"),
        };
        let mut args = vec!["ls-remote", "--exit-code", "--", &self.url];
        args.extend(refs.iter().map(String::as_str));
        let out = self.run(cx, &args)?;
        if out.code() == Some(2) {
            bail!(
                "{} does not exist in repository `{}`",
                self.wanted(),
                self.repository
            );
        }
        let out = out.check()?;
        let lines: Vec<(&str, &str)> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .collect();
        // An annotated tag: the commit it points to is the `^{}` line.
        let line = lines
            .iter()
            .find(|(_, r)| r.ends_with("^{}"))
            .or_else(|| lines.first());
        match line {
            Some((id, _)) => Ok(id.to_string()),
            None => bail!(
                "`git ls-remote` named no commit for {} of `{}`",
                self.wanted(),
                self.repository
            ),
        }
    }

    fn observe(&self, cx: &mut Deploy) -> anyhow::Result<Observed> {
        let path = &self.resolved;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Observed::Missing),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect `{}`", path.display()));
            }
        };
        if !meta.is_dir() {
            bail!("`{}` is in the way: it is not a directory", path.display());
        }
        if !path.join(".git").exists() {
            let empty = std::fs::read_dir(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?
                .next()
                .is_none();
            if empty {
                return Ok(Observed::Missing);
            }
            bail!(
                "`{}` is in the way: it is a directory that is not a git checkout",
                path.display()
            );
        }
        let dir = path.to_string_lossy().into_owned();
        let head = self.run(
            cx,
            &["-C", &dir, "rev-parse", "--verify", "--quiet", "HEAD"],
        )?;
        let head = head.success().then(|| head.stdout.trim().to_string());
        let origin = self.run(cx, &["-C", &dir, "config", "--get", "remote.origin.url"])?;
        let origin = origin.success().then(|| origin.stdout.trim().to_string());
        let status = self.check(
            cx,
            &["-C", &dir, "status", "--porcelain", "--untracked-files=no"],
        )?;
        Ok(Observed::Checkout {
            head,
            origin,
            dirty: !status.stdout.trim().is_empty(),
        })
    }

    fn refuse_local_changes(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "`{}` has local changes to tracked files, which checking out {} would discard; set `force = true` to discard them",
            self.resolved.display(),
            self.wanted()
        )
    }

    /// Fetches what is wanted and returns its commit.
    fn fetch(&self, cx: &mut Deploy, dir: &str) -> anyhow::Result<String> {
        let local = |this: &Self, cx: &mut Deploy, name: &str| -> anyhow::Result<Option<String>> {
            let spec = format!("{name}^{{commit}}");
            let out = this.run(cx, &["-C", dir, "rev-parse", "--verify", "--quiet", &spec])?;
            Ok(out.success().then(|| out.stdout.trim().to_string()))
        };
        if let Some(branch) = &self.branch {
            let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
            self.check(cx, &["-C", dir, "fetch", "--quiet", "origin", "--", &spec])?;
            return local(self, cx, &format!("refs/remotes/origin/{branch}"))?
                .context("the fetched branch names no commit");
        }
        if let Some(tag) = &self.tag {
            let spec = format!("+refs/tags/{tag}:refs/tags/{tag}");
            self.check(cx, &["-C", dir, "fetch", "--quiet", "origin", "--", &spec])?;
            return local(self, cx, &format!("refs/tags/{tag}"))?
                .context("the fetched tag names no commit");
        }
        let commit = self.commit.as_deref().expect("configure requires one");
        if let Some(found) = local(self, cx, commit)? {
            return Ok(found);
        }
        self.check(cx, &["-C", dir, "fetch", "--quiet", "--tags", "origin"])?;
        if let Some(found) = local(self, cx, commit)? {
            return Ok(found);
        }
        // Not on any branch or tag: servers that allow it hand out single commits.
        let _ = self.run(cx, &["-C", dir, "fetch", "--quiet", "origin", "--", commit])?;
        local(self, cx, commit)?.with_context(|| {
            format!(
                "commit `{commit}` is not in repository `{}`",
                self.repository
            )
        })
    }
}

impl Component for Git {
    fn label(&self) -> String {
        format!("Git('{}')", self.path)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        refuse_nul("repository", &self.repository)?;
        if self.repository.is_empty() {
            bail!("`repository` is empty");
        }
        let given = [&self.branch, &self.tag, &self.commit];
        match given.iter().filter(|g| g.is_some()).count() {
            1 => {}
            0 => {
                return Err(ConfigError::new(
                    "a git checkout needs one of `branch`, `tag` and `commit`",
                )
                .hint("`branch = \"main\"` follows the branch")
                .into());
            }
            _ => bail!("set only one of `branch`, `tag` and `commit`"),
        }
        for (what, value) in [("branch", &self.branch), ("tag", &self.tag)] {
            if let Some(name) = value
                && (name.is_empty()
                    || name.starts_with('-')
                    || name.contains(['\0', ' ', '~', '^', ':', '?', '*', '[', '\\'])
                    || name.contains(".."))
            {
                bail!("`{what}` `{}` is not a valid ref name", name.escape_debug());
            }
        }
        if let Some(commit) = &self.commit {
            if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::new(format!(
                    "`commit` `{}` is not a full commit id",
                    commit.escape_debug()
                ))
                .hint("write all 40 hex digits (`git rev-parse <commit>` prints them)")
                .into());
            }
            self.commit = Some(commit.to_ascii_lowercase());
        }
        if let Some(t) = self.timeout
            && !(t.is_finite() && t > 0.0)
        {
            bail!("`timeout` must be a positive number of seconds");
        }
        self.url = if is_relative_path(&self.repository) {
            cx.workdir()
                .join(&self.repository)
                .to_string_lossy()
                .into_owned()
        } else {
            self.repository.clone()
        };
        self.resolved = cx.path(&self.path)?;
        self.workdir = cx.workdir().to_path_buf();
        self.allowed = cx.allowed_paths();
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved)?;
        let want = self.remote_commit(cx)?;
        let (head, origin, dirty) = match self.observe(cx)? {
            Observed::Missing => {
                return Ok(Verdict::needs_update(format!(
                    "missing: {} is {}",
                    self.wanted(),
                    short(&want)
                )));
            }
            Observed::Checkout {
                head,
                origin,
                dirty,
            } => (head, origin, dirty),
        };
        let mut reasons = Vec::new();
        if origin.as_deref() != Some(self.url.as_str()) {
            reasons.push(format!(
                "origin `{}` -> `{}`",
                origin.as_deref().unwrap_or("(none)"),
                self.url
            ));
        }
        if head.as_deref() != Some(want.as_str()) {
            if dirty && !self.force {
                return Err(self.refuse_local_changes());
            }
            reasons.push(format!(
                "{} -> {}",
                head.as_deref().map_or("(no commit)", short),
                short(&want)
            ));
        } else if dirty && self.force {
            reasons.push("local changes to tracked files (`force`)".to_string());
        }
        Ok(if reasons.is_empty() {
            Verdict::UpToDate
        } else {
            Verdict::needs_update(reasons.join(", "))
        })
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        self.allowed.check(&self.resolved)?;
        let dir = self.resolved.to_string_lossy().into_owned();
        let old = match self.observe(cx)? {
            Observed::Missing => {
                crate::fs::parent(&self.resolved)?;
                self.check(
                    cx,
                    &["clone", "--quiet", "--no-checkout", "--", &self.url, &dir],
                )?;
                None
            }
            Observed::Checkout {
                head,
                origin,
                dirty,
            } => {
                if dirty && !self.force {
                    // Verify let it pass only at the wanted commit; it moved meanwhile.
                    return Err(self.refuse_local_changes());
                }
                if origin.as_deref() != Some(self.url.as_str()) {
                    if origin.is_some() {
                        self.check(cx, &["-C", &dir, "remote", "set-url", "origin", &self.url])?;
                    } else {
                        self.check(cx, &["-C", &dir, "remote", "add", "origin", &self.url])?;
                    }
                }
                head
            }
        };
        let new = self.fetch(cx, &dir)?;
        let mut checkout = vec!["-C", &dir, "checkout", "--quiet", "--detach"];
        if self.force {
            checkout.push("--force");
        }
        checkout.push(&new);
        self.check(cx, &checkout)?;
        cx.log(match old {
            Some(old) if old == new => format!("checked out {} again", short(&new)),
            Some(old) => format!("checked out {} (was {})", short(&new), short(&old)),
            None => format!("checked out {} (new checkout)", short(&new)),
        });
        Ok(())
    }
}

/// Whether `repository` is a relative path on the host (not a URL, not `host:path`, not
/// absolute).
fn is_relative_path(repository: &str) -> bool {
    if repository.starts_with('/') || repository.contains("://") {
        return false;
    }
    // `host:path` (scp-like): a colon before any slash.
    match (repository.find(':'), repository.find('/')) {
        (Some(colon), Some(slash)) => colon > slash,
        (Some(_), None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use batou_core::ConvergeOptions;

    use super::*;
    use crate::test_util::{config_error, pairs, project};

    /// A bare repository and a clone of it that commits and pushes.
    struct Repo {
        _dir: tempfile::TempDir,
        bare: PathBuf,
        work: PathBuf,
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let mut argv = vec!["git", "-c", "user.name=t", "-c", "user.email=t@example.com"];
        argv.extend(args);
        cmd(argv)
            .cwd(dir)
            .check()
            .unwrap()
            .stdout
            .trim()
            .to_string()
    }

    impl Repo {
        fn new() -> Repo {
            let dir = tempfile::tempdir().unwrap();
            let bare = dir.path().join("shop.git");
            let work = dir.path().join("work");
            git(
                dir.path(),
                &["init", "--quiet", "--bare", "-b", "main", "shop.git"],
            );
            git(dir.path(), &["clone", "--quiet", "shop.git", "work"]);
            let repo = Repo {
                _dir: dir,
                bare,
                work,
            };
            repo.commit("app.py", "print('one')\n");
            repo
        }

        /// Commits `content` to `file` on `main`, pushes, and returns the commit.
        fn commit(&self, file: &str, content: &str) -> String {
            std::fs::write(self.work.join(file), content).unwrap();
            git(&self.work, &["add", file]);
            git(&self.work, &["commit", "--quiet", "-m", content]);
            git(&self.work, &["push", "--quiet", "origin", "HEAD:main"]);
            git(&self.work, &["rev-parse", "HEAD"])
        }

        fn tag(&self, name: &str) {
            git(&self.work, &["tag", "-a", "-m", name, name]);
            git(&self.work, &["push", "--quiet", "origin", name]);
        }
    }

    fn code(repo: &Repo, attributes: &str) -> batou_core::testing::TestProject {
        project(&format!(
            "[hosts.localhost]\ncomponents = [\"code\"]\n\n[components.code]\ntype = \"git\"\nrepository = \"{}\"\npath = \"checkout\"\n{attributes}",
            repo.bare.display()
        ))
    }

    fn head(project: &batou_core::testing::TestProject) -> String {
        git(
            &project.workdir("code").join("checkout"),
            &["rev-parse", "HEAD"],
        )
    }

    #[test]
    fn a_branch_is_cloned_and_followed_reporting_old_and_new_commits() {
        let repo = Repo::new();
        let one = git(&repo.work, &["rev-parse", "HEAD"]);
        let project = code(&repo, "branch = \"main\"\n");
        let run = project.assert_prediction_matches("dev");
        assert_eq!(
            run.reasons(),
            pairs(&[
                ("code > Workdir", "missing"),
                (
                    "code",
                    &format!("missing: branch `main` is {}", short(&one))
                ),
            ])
        );
        assert_eq!(
            run.logs(),
            [format!("checked out {} (new checkout)", short(&one))]
        );
        assert_eq!(head(&project), one);
        let checkout = project.workdir("code").join("checkout");
        assert_eq!(
            std::fs::read_to_string(checkout.join("app.py")).unwrap(),
            "print('one')\n"
        );

        let two = repo.commit("app.py", "print('two')\n");
        let run = project.assert_prediction_matches("dev");
        assert_eq!(
            run.reasons(),
            pairs(&[("code", &format!("{} -> {}", short(&one), short(&two)))])
        );
        assert_eq!(
            run.logs(),
            [format!("checked out {} (was {})", short(&two), short(&one))]
        );
        assert_eq!(head(&project), two);
    }

    #[test]
    fn tags_and_commits_are_checked_out() {
        let repo = Repo::new();
        let one = git(&repo.work, &["rev-parse", "HEAD"]);
        repo.tag("v1");
        let two = repo.commit("app.py", "print('two')\n");
        let project = code(&repo, "tag = \"v1\"\n");
        project.assert_prediction_matches("dev");
        assert_eq!(head(&project), one);

        project.env(
            "dev",
            &format!(
                "[hosts.localhost]\ncomponents = [\"code\"]\n\n[components.code]\ntype = \"git\"\nrepository = \"{}\"\npath = \"checkout\"\ncommit = \"{}\"\n",
                repo.bare.display(),
                two.to_uppercase()
            ),
        );
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["code"]);
        assert_eq!(head(&project), two);
    }

    #[test]
    fn local_changes_are_kept_unless_force() {
        let repo = Repo::new();
        let project = code(&repo, "branch = \"main\"\n");
        project.converge("dev");
        let app = project.workdir("code").join("checkout/app.py");
        std::fs::write(&app, "print('patched')\n").unwrap();
        // At the wanted commit, local changes are left alone.
        project.converge("dev").assert_unchanged();

        repo.commit("app.py", "print('two')\n");
        let expected = "has local changes to tracked files, which checking out branch `main` would discard; set `force = true` to discard them";
        for dry_run in [true, false] {
            let run = project.run(
                "dev",
                ConvergeOptions {
                    dry_run,
                    ..Default::default()
                },
            );
            let failure = run.failure().unwrap();
            assert!(failure.contains(expected), "{failure}");
        }
        assert_eq!(std::fs::read_to_string(&app).unwrap(), "print('patched')\n");

        project.env(
            "dev",
            &format!(
                "[hosts.localhost]\ncomponents = [\"code\"]\n\n[components.code]\ntype = \"git\"\nrepository = \"{}\"\npath = \"checkout\"\nbranch = \"main\"\nforce = true\n",
                repo.bare.display()
            ),
        );
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["code"]);
        assert_eq!(std::fs::read_to_string(&app).unwrap(), "print('two')\n");

        // With `force`, local changes at the wanted commit are discarded too.
        std::fs::write(&app, "print('patched')\n").unwrap();
        let run = project.assert_prediction_matches("dev");
        assert_eq!(
            run.reasons(),
            pairs(&[("code", "local changes to tracked files (`force`)")])
        );
        assert_eq!(std::fs::read_to_string(&app).unwrap(), "print('two')\n");
    }

    #[test]
    fn a_missing_branch_fails_and_bad_attributes_are_configuration_errors() {
        let repo = Repo::new();
        let run = code(&repo, "branch = \"nope\"\n").run(
            "dev",
            ConvergeOptions {
                dry_run: true,
                ..Default::default()
            },
        );
        let failure = run.failure().unwrap();
        assert!(
            failure.contains("branch `nope` does not exist in repository"),
            "{failure}"
        );

        let err = config_error(&code(&repo, ""));
        assert!(
            err.contains("a git checkout needs one of `branch`, `tag` and `commit`"),
            "{err}"
        );
        let err = config_error(&code(&repo, "commit = \"abc123\"\n"));
        assert!(
            err.contains("`commit` `abc123` is not a full commit id"),
            "{err}"
        );
        let err = config_error(&code(&repo, "branch = \"main\"\ntag = \"v1\"\n"));
        assert!(
            err.contains("set only one of `branch`, `tag` and `commit`"),
            "{err}"
        );
        let err = config_error(&code(&repo, "branch = \"--upload-pack=x\"\n"));
        assert!(err.contains("is not a valid ref name"), "{err}");
    }

    #[test]
    fn relative_repositories_are_told_from_urls() {
        assert!(is_relative_path("../shop.git"));
        assert!(is_relative_path("repos/a:b"));
        assert!(!is_relative_path("/srv/shop.git"));
        assert!(!is_relative_path("https://example.com/shop.git"));
        assert!(!is_relative_path("git@example.com:shop.git"));
    }
}
