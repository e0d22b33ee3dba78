//! `Cron`: entries in a user's crontab, kept in a block between marker lines that the
//! component owns; every line outside its block is left exactly as it was.
//!
//! The crontab is read with `crontab -l` and installed with `crontab <file>` (`-u <user>`
//! for another user's, which needs root), so that the cron daemon's own checks apply.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use batou_core::{Component, ConfigError, Configure, Deploy, Verdict, diff, refuse_nul};
use serde::Deserialize;

use crate::cmd::{CommandOutput, cmd};
use crate::download::is_not_found;

/// Named schedules cron understands besides the five fields.
const NAMED_SCHEDULES: &[&str] = &[
    "@reboot",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// One crontab entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CronEntry {
    /// A name for people, written as a comment above the entry; unique in the component.
    pub name: String,
    /// Five fields (`*/5 * * * *`) or a named schedule (`@daily`).
    pub schedule: String,
    /// The command line, run by the user's shell; `%` must be written `\%` (cron turns a
    /// bare `%` into a newline).
    pub command: String,
}

impl CronEntry {
    /// An entry named `name` that runs `command` on `schedule`.
    pub fn new(
        name: impl Into<String>,
        schedule: impl Into<String>,
        command: impl Into<String>,
    ) -> Self {
        CronEntry {
            name: name.into(),
            schedule: schedule.into(),
            command: command.into(),
        }
    }
}

/// Crontab entries of one user, owned by the component.
///
/// ```toml
/// [components.jobs]
/// type = "cron"
/// user = "shop"                 # default: the deploying user
/// entries = [
///   { name = "cleanup", schedule = "*/15 * * * *", command = "/srv/shop/bin/cleanup" },
///   { name = "report", schedule = "@daily", command = "/srv/shop/bin/report --mail" },
/// ]
/// ```
///
/// The entries go between `# BEGIN batou: <block>` and `# END batou: <block>` lines, where
/// `block` defaults to the root component's name; each root component that manages cron
/// entries of one user needs its own block. An entry no longer listed is removed with the
/// next deploy; with `entries = []` the block goes away.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cron {
    /// Whose crontab; by default the deploying user's.
    #[serde(default)]
    pub user: Option<String>,
    /// The name in the marker lines; defaults to the root component's name.
    #[serde(default)]
    pub block: Option<String>,
    /// The entries, in order.
    pub entries: Vec<CronEntry>,
    #[serde(skip)]
    block_name: String,
    /// `user`, when it is not the deploying user (`crontab -u`).
    #[serde(skip)]
    other_user: Option<String>,
}

impl Cron {
    /// The entries `entries` in the deploying user's crontab.
    pub fn new(entries: impl IntoIterator<Item = CronEntry>) -> Self {
        Cron {
            user: None,
            block: None,
            entries: entries.into_iter().collect(),
            block_name: String::new(),
            other_user: None,
        }
    }

    /// Another user's crontab (deploying as root).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The name in the marker lines, instead of the root component's name.
    pub fn block(mut self, block: impl Into<String>) -> Self {
        self.block = Some(block.into());
        self
    }

    fn begin(&self) -> String {
        format!("# BEGIN batou: {}", self.block_name)
    }

    fn end(&self) -> String {
        format!("# END batou: {}", self.block_name)
    }

    fn whose(&self) -> String {
        match &self.other_user {
            Some(user) => format!("the crontab of `{user}`"),
            None => "the crontab".to_string(),
        }
    }

    fn crontab(&self, cx: &mut Deploy, args: &[String]) -> anyhow::Result<CommandOutput> {
        let mut argv = vec!["crontab".to_string()];
        if let Some(user) = &self.other_user {
            argv.extend(["-u".to_string(), user.clone()]);
        }
        argv.extend(args.iter().cloned());
        cx.detail(format!("running `{}`", argv.join(" ")));
        cmd(&argv).env("LC_ALL", "C").run().map_err(|e| {
            if is_not_found(&e) {
                anyhow::anyhow!(
                    "`crontab` is not installed on the host (install it, e.g. `apt-get install cron`)"
                )
            } else {
                e
            }
        })
    }

    /// The crontab as it is; empty when the user has none.
    fn read(&self, cx: &mut Deploy) -> anyhow::Result<String> {
        let out = self.crontab(cx, &["-l".to_string()])?;
        if out.success() {
            return Ok(out.stdout);
        }
        if out.code() == Some(1) && out.stderr.contains("no crontab for") {
            return Ok(String::new());
        }
        Err(anyhow::anyhow!(out.failure())).with_context(|| format!("cannot read {}", self.whose()))
    }

    /// Whether `line` is this block's begin line (with or without its note).
    fn is_begin(&self, line: &str) -> bool {
        line.strip_prefix(self.begin().as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
    }

    /// The crontab with this component's block as it should be.
    fn wanted(&self, current: &str) -> anyhow::Result<String> {
        let lines: Vec<&str> = current.lines().collect();
        let (begin, end) = (self.begin(), self.end());
        let mut block = Vec::new();
        if !self.entries.is_empty() {
            block.push(format!(
                "{begin} (written by deploys: changes here are replaced)"
            ));
            for entry in &self.entries {
                block.push(format!("# {}", entry.name));
                block.push(format!("{} {}", entry.schedule, entry.command));
            }
            block.push(end.clone());
        }
        let mut out: Vec<String> = Vec::new();
        match lines.iter().position(|l| self.is_begin(l)) {
            Some(start) => {
                let Some(len) = lines[start..].iter().position(|l| *l == end) else {
                    bail!(
                        "{} has the line `{begin}` but no `{end}` after it; mend it by hand",
                        self.whose()
                    );
                };
                out.extend(lines[..start].iter().map(|l| l.to_string()));
                out.extend(block);
                out.extend(lines[start + len + 1..].iter().map(|l| l.to_string()));
            }
            None => {
                out.extend(lines.iter().map(|l| l.to_string()));
                out.extend(block);
            }
        }
        let mut text = out.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        Ok(text)
    }

    /// Installs `text` as the crontab, through a private temporary file.
    fn install(&self, cx: &mut Deploy, text: &str) -> anyhow::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp: PathBuf = std::env::temp_dir().join(format!(
            ".batou-crontab-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot create `{}`", tmp.display()))?;
            file.write_all(text.as_bytes())
                .with_context(|| format!("cannot write `{}`", tmp.display()))?;
            drop(file);
            let out = self.crontab(cx, &[tmp.to_string_lossy().into_owned()])?;
            out.check()
                .with_context(|| format!("cannot install {}", self.whose()))
        })();
        let _ = std::fs::remove_file(&tmp);
        result.map(|_| ())
    }
}

impl Component for Cron {
    fn label(&self) -> String {
        let name = self.block.as_deref().or(self.user.as_deref());
        format!("Cron('{}')", name.unwrap_or("crontab"))
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        let root = cx.component_path().split(" > ").next().unwrap_or_default();
        self.block_name = self.block.clone().unwrap_or_else(|| root.to_string());
        if self.block_name.is_empty()
            || self.block_name.contains(['\n', '\r', '\0'])
            || self.block_name.trim() != self.block_name
        {
            bail!(
                "`block` `{}` must be a non-empty name on one line, without leading or trailing spaces",
                self.block_name.escape_debug()
            );
        }
        if let Some(user) = &self.user {
            refuse_nul("user", user)?;
            if user.is_empty() || user.starts_with('-') || user.contains(char::is_whitespace) {
                bail!("`user` `{}` is not a user name", user.escape_debug());
            }
            let me = crate::fs::user_name(nix::unistd::getuid().as_raw());
            self.other_user = (me.as_deref() != Some(user.as_str())).then(|| user.clone());
        }
        let mut names = BTreeSet::new();
        for (i, entry) in self.entries.iter().enumerate() {
            let which = format!("entry {} (`{}`)", i + 1, entry.name.escape_debug());
            if entry.name.is_empty() || entry.name.contains(['\n', '\r', '\0']) {
                bail!("the name of {which} must be a non-empty name on one line");
            }
            if !names.insert(entry.name.as_str()) {
                bail!(
                    "two entries are named `{}`: names must be unique",
                    entry.name
                );
            }
            if entry.command.trim().is_empty() || entry.command.contains(['\n', '\r', '\0']) {
                bail!("the `command` of {which} must be a non-empty command on one line");
            }
            check_schedule(&entry.schedule).map_err(|e| {
                ConfigError::new(format!("the `schedule` of {which} {e}"))
                    .hint("write five fields (`*/5 * * * *`: minute, hour, day of month, month, day of week) or one of `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`, `@reboot`")
            })?;
        }
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        let current = self.read(cx)?;
        let wanted = self.wanted(&current)?;
        if current == wanted {
            return Ok(Verdict::UpToDate);
        }
        if let Some(d) = diff::unified("crontab", current.as_bytes(), wanted.as_bytes()) {
            cx.show_diff(d);
        }
        let has_block = current.lines().any(|l| self.is_begin(l));
        Ok(Verdict::needs_update(
            match (has_block, self.entries.is_empty()) {
                (false, _) => "entries missing",
                (true, true) => "entries no longer listed",
                (true, false) => "entries differ",
            },
        ))
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        let current = self.read(cx)?;
        let wanted = self.wanted(&current)?;
        self.install(cx, &wanted)
    }
}

/// Why `schedule` is not one cron reads, as the end of a sentence.
fn check_schedule(schedule: &str) -> Result<(), String> {
    if schedule.starts_with('@') {
        if NAMED_SCHEDULES.contains(&schedule) {
            return Ok(());
        }
        return Err(format!("`{schedule}` is not a named schedule"));
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "`{}` has {} fields, not 5",
            schedule.escape_debug(),
            fields.len()
        ));
    }
    for field in fields {
        if !field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '-' | '/'))
        {
            return Err(format!(
                "`{schedule}` has the field `{field}`, which is not a cron field"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use batou_test_support::CronUser;

    use crate::test_util::{config_error, pairs, project};

    fn jobs(user: &CronUser, entries: &str) -> batou_core::testing::TestProject {
        project(&format!(
            "[hosts.localhost]\ncomponents = [\"jobs\"]\n\n[components.jobs]\ntype = \"cron\"\nuser = \"{}\"\nentries = [{entries}]\n",
            user.name
        ))
    }

    const TWO: &str = "\n  { name = \"cleanup\", schedule = \"*/15 * * * *\", command = \"/srv/bin/cleanup\" },\n  { name = \"report\", schedule = \"@daily\", command = \"/srv/bin/report\" },\n";

    #[test]
    fn entries_are_written_in_a_block_beside_foreign_ones_and_removed_when_unlisted() {
        let user = CronUser::create();
        user.set_crontab("MAILTO=ops@example.com\n# by hand\n0 3 * * * /usr/bin/backup\n");
        let project = jobs(&user, TWO);
        let run = project.assert_prediction_matches("dev");
        assert_eq!(
            run.reasons(),
            pairs(&[("jobs > Workdir", "missing"), ("jobs", "entries missing")])
        );
        assert_eq!(
            user.crontab(),
            "MAILTO=ops@example.com\n# by hand\n0 3 * * * /usr/bin/backup\n\
             # BEGIN batou: jobs (written by deploys: changes here are replaced)\n\
             # cleanup\n*/15 * * * * /srv/bin/cleanup\n# report\n@daily /srv/bin/report\n\
             # END batou: jobs\n"
        );
        let diff = &run.diffs()[0].1;
        assert!(diff.contains("+*/15 * * * * /srv/bin/cleanup\n"), "{diff}");

        // Foreign entries added after the block stay where they are.
        let mut edited = user.crontab();
        edited.push_str("30 4 * * * /usr/bin/other\n");
        user.set_crontab(&edited);
        project.converge("dev").assert_unchanged();

        let project = jobs(
            &user,
            "{ name = \"report\", schedule = \"@daily\", command = \"/srv/bin/report\" }",
        );
        let run = project.assert_prediction_matches("dev");
        assert_eq!(run.reasons().last().unwrap().1, "entries differ");
        assert_eq!(
            user.crontab(),
            "MAILTO=ops@example.com\n# by hand\n0 3 * * * /usr/bin/backup\n\
             # BEGIN batou: jobs (written by deploys: changes here are replaced)\n\
             # report\n@daily /srv/bin/report\n# END batou: jobs\n30 4 * * * /usr/bin/other\n"
        );

        let project = jobs(&user, "");
        let run = project.assert_prediction_matches("dev");
        assert_eq!(run.reasons().last().unwrap().1, "entries no longer listed");
        assert_eq!(
            user.crontab(),
            "MAILTO=ops@example.com\n# by hand\n0 3 * * * /usr/bin/backup\n30 4 * * * /usr/bin/other\n"
        );
    }

    #[test]
    fn edits_inside_the_block_are_replaced_and_a_broken_block_is_an_error() {
        let user = CronUser::create();
        let project = jobs(&user, TWO);
        project.converge("dev");
        let edited = user.crontab().replace("*/15", "*/30");
        user.set_crontab(&edited);
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["jobs"]);
        assert!(user.crontab().contains("*/15 * * * *"));

        let broken: String = user
            .crontab()
            .lines()
            .filter(|l| !l.starts_with("# END"))
            .map(|l| format!("{l}\n"))
            .collect();
        user.set_crontab(&broken);
        let failure = project
            .run("dev", batou_core::ConvergeOptions::default())
            .failure()
            .unwrap();
        assert!(
            failure.contains(&format!(
                "the crontab of `{}` has the line `# BEGIN batou: jobs` but no `# END batou: jobs` after it",
                user.name
            )),
            "{failure}"
        );
        assert_eq!(user.crontab(), broken);
    }

    #[test]
    fn bad_entries_are_configuration_errors() {
        let user = CronUser::create();
        let cases = [
            (
                "{ name = \"a\", schedule = \"* * *\", command = \"x\" }",
                "the `schedule` of entry 1 (`a`) `* * *` has 3 fields, not 5",
            ),
            (
                "{ name = \"a\", schedule = \"@sometimes\", command = \"x\" }",
                "`@sometimes` is not a named schedule",
            ),
            (
                "{ name = \"a\", schedule = \"@daily\", command = \"x\\ny\" }",
                "the `command` of entry 1 (`a`) must be a non-empty command on one line",
            ),
            (
                "{ name = \"a\", schedule = \"@daily\", command = \"x\" }, { name = \"a\", schedule = \"@daily\", command = \"y\" }",
                "two entries are named `a`",
            ),
            (
                "{ name = \"a\", schedule = \"@daily\", cmd = \"x\" }",
                "unknown field `cmd`",
            ),
        ];
        for (entries, message) in cases {
            let err = config_error(&jobs(&user, entries));
            assert!(err.contains(message), "{err}");
        }
        assert_eq!(user.crontab(), "");
    }
}
