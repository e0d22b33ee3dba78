//! Host groups and host selections: `[groups] web = ["web1", "web2"]` in an environment, and
//! the `--hosts` words that name hosts, groups and exclusions (`web,!web2`, `!db1`).
//!
//! The environment's groups are checked when it is loaded ([`check_groups`]); a selection is
//! resolved against the hosts of a plan and the groups ([`select_hosts`]). Which command
//! line carries the words is the commands' business.

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;

use crate::error::{ConfigError, SourceText};

/// The `[groups]` table as written: group name to member host names, with spans.
pub(crate) type GroupsShape = BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>;

/// Checks the `[groups]` table against the environment's hosts and returns it by name:
/// names that are usable on a command line and are not host names, members that are
/// hosts (groups do not nest) and are listed once.
pub(crate) fn check_groups(
    shape: GroupsShape,
    hosts: &[String],
    source: &SourceText,
) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut groups = BTreeMap::new();
    let names: Vec<String> = shape.keys().map(|k| k.get_ref().clone()).collect();
    for (key, members) in shape {
        let name = key.get_ref();
        let at = source.place(key.span().start);
        if let Some(problem) = unusable(name) {
            return Err(ConfigError::new(format!(
                "group name `{}` {problem}",
                name.escape_debug()
            ))
            .at(at)
            .hint("`--hosts` reads group names: letters, digits, `.`, `_` and `-`"));
        }
        if hosts.contains(name) {
            return Err(
                ConfigError::new(format!("group `{name}` has the name of host `{name}`"))
                    .at(at)
                    .hint("`--hosts` could not tell them apart: rename the group"),
            );
        }
        let mut list: Vec<String> = Vec::new();
        for member in members.into_inner() {
            let host = member.get_ref();
            let at = source.place(member.span().start);
            if !hosts.contains(host) {
                let err =
                    ConfigError::new(format!("unknown host `{host}` in group `{name}`")).at(at);
                let err = if names.contains(host) {
                    err.hint(format!(
                        "`{host}` is a group: groups do not nest, list its hosts instead"
                    ))
                } else {
                    err.suggest(host, hosts.iter().map(String::as_str))
                        .hint(format!("hosts: {}", hosts.join(", ")))
                };
                return Err(err);
            }
            if list.contains(host) {
                return Err(ConfigError::new(format!(
                    "host `{host}` is listed twice in group `{name}`"
                ))
                .at(at));
            }
            list.push(host.clone());
        }
        groups.insert(name.clone(), list);
    }
    Ok(groups)
}

/// Resolves `--hosts` words against `hosts` (the hosts a run may act on) and `groups`.
///
/// Each word is a host or a group; a word starting with `!` excludes that host or group.
/// Without any word that is not an exclusion, the selection starts from every host. The
/// result is never empty: a selection of no host is an error, like an unknown name (with a
/// suggestion among hosts and groups). `environment` names the environment in messages.
pub fn select_hosts(
    environment: &str,
    hosts: &[&str],
    groups: &BTreeMap<String, Vec<String>>,
    words: &[String],
) -> Result<BTreeSet<String>, ConfigError> {
    let candidates: Vec<&str> = hosts
        .iter()
        .copied()
        .chain(groups.keys().map(String::as_str))
        .collect();
    let what = if groups.is_empty() {
        "host"
    } else {
        "host or group"
    };
    let resolve = |name: &str| -> Result<Vec<String>, ConfigError> {
        if hosts.contains(&name) {
            return Ok(vec![name.to_string()]);
        }
        if let Some(members) = groups.get(name) {
            // A group may list hosts that run nothing: they are not part of any run.
            return Ok(members
                .iter()
                .filter(|m| hosts.contains(&m.as_str()))
                .cloned()
                .collect());
        }
        let mut hint = format!("hosts with components: {}", hosts.join(", "));
        if !groups.is_empty() {
            hint.push_str(&format!(
                "; groups: {}",
                groups.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        Err(ConfigError::new(format!(
            "unknown {what} `{name}` in `--hosts` for environment `{environment}`"
        ))
        .suggest(name, candidates.iter().copied())
        .hint(hint))
    };
    let mut included: Option<BTreeSet<String>> = None;
    let mut excluded = BTreeSet::new();
    for word in words {
        let word = word.trim();
        if word.is_empty() {
            return Err(ConfigError::new("`--hosts` has an empty name")
                .hint("separate names with single commas: `--hosts web,!web2`"));
        }
        match word.strip_prefix('!') {
            Some(name) => excluded.extend(resolve(name.trim())?),
            None => included
                .get_or_insert_with(BTreeSet::new)
                .extend(resolve(word)?),
        }
    }
    let start = included.unwrap_or_else(|| hosts.iter().map(|h| h.to_string()).collect());
    let selected: BTreeSet<String> = start.difference(&excluded).cloned().collect();
    if selected.is_empty() {
        return Err(ConfigError::new(format!(
            "`--hosts {}` selects no host of environment `{environment}`",
            words.join(",")
        ))
        .hint(format!("hosts with components: {}", hosts.join(", "))));
    }
    Ok(selected)
}

/// Why a group name cannot be used on a command line, if it cannot.
fn unusable(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.starts_with('!') {
        Some("starts with `!`, which `--hosts` reads as an exclusion")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Some("has characters other than letters, digits, `.`, `_` and `-`")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split(',').map(str::to_string).collect()
    }

    fn select(line: &str) -> Result<Vec<String>, String> {
        let groups = BTreeMap::from([
            (
                "web".to_string(),
                vec!["web1".to_string(), "web2".to_string()],
            ),
            ("all-db".to_string(), vec!["db1".to_string()]),
        ]);
        select_hosts("prod", &["db1", "web1", "web2"], &groups, &words(line))
            .map(|s| s.into_iter().collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn hosts_groups_and_exclusions_select_hosts() {
        assert_eq!(select("web1").unwrap(), ["web1"]);
        assert_eq!(select("web").unwrap(), ["web1", "web2"]);
        assert_eq!(select("web,!web2").unwrap(), ["web1"]);
        assert_eq!(select("!db1").unwrap(), ["web1", "web2"]);
        assert_eq!(select("!web").unwrap(), ["db1"]);
        assert_eq!(select("all-db,web2").unwrap(), ["db1", "web2"]);
        // Exclusions win, whatever the order.
        assert_eq!(select("!web1,web").unwrap(), ["web2"]);
    }

    #[test]
    fn unknown_names_and_empty_selections_are_errors() {
        assert_eq!(
            select("webb").unwrap_err(),
            "unknown host or group `webb` in `--hosts` for environment `prod` (did you mean `web`?)"
        );
        assert_eq!(
            select("web,!wbe2").unwrap_err(),
            "unknown host or group `wbe2` in `--hosts` for environment `prod` (did you mean `web2`?)"
        );
        assert_eq!(
            select("web,!web").unwrap_err(),
            "`--hosts web,!web` selects no host of environment `prod`"
        );
        assert_eq!(
            select("web,,db1").unwrap_err(),
            "`--hosts` has an empty name"
        );
    }
}
