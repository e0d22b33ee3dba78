//! The plan as people read it: text (hosts, their root components, what each step provides
//! and requires, the plan order and why) and Graphviz DOT, for `<ENVIRONMENT> graph`.
//!
//! Both renderings are deterministic: hosts by name, steps in plan order, keys sorted.

use std::fmt::Write as _;

use batou_core::Plan;

/// How `graph` prints the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Text for a terminal.
    #[default]
    Text,
    /// Graphviz DOT (`dot -Tsvg`).
    Dot,
}

/// The plan as text.
pub fn text(plan: &Plan) -> String {
    let steps = plan.steps();
    let hosts: Vec<(&str, &[String])> = plan.hosts().filter(|(_, c)| !c.is_empty()).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan of environment `{}`: {}, {}",
        plan.environment,
        count(hosts.len(), "host"),
        count(steps.len(), "step")
    );
    out.push_str("\nhosts:\n");
    let width = hosts.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
    for (host, roots) in &hosts {
        let _ = writeln!(out, "  {host:width$}  {}", roots.join(", "));
    }
    out.push_str("\nsteps in plan order:\n");
    for (n, &i) in plan.order().iter().enumerate() {
        let step = &steps[i];
        let _ = writeln!(out, "  {}. {} ({})", n + 1, step.label(), step.type_name());
        let provided = plan.provided_keys(i);
        if !provided.is_empty() {
            let _ = writeln!(out, "       provides: {}", ticked(&provided));
        }
        let required = plan.required_keys(i);
        if !required.is_empty() {
            let _ = writeln!(out, "       requires: {}", ticked(&required));
        }
        for (earlier, keys) in &step.after_keys {
            let why = if keys.is_empty() {
                "which it watches for changes".to_string()
            } else {
                format!("which provides {}", ticked(keys))
            };
            let _ = writeln!(out, "       after {}, {why}", steps[*earlier].label());
        }
    }
    out
}

/// The plan as a Graphviz digraph: one cluster per host, one node per step, an edge from
/// each step to the steps that wait for it (labelled with the resource keys; dashed when the
/// later step only watches the earlier one).
pub fn dot(plan: &Plan) -> String {
    let steps = plan.steps();
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", quote(&plan.environment));
    out.push_str("  rankdir=LR;\n");
    out.push_str("  node [shape=box, style=rounded, fontname=\"sans-serif\"];\n");
    out.push_str("  edge [fontname=\"sans-serif\", fontsize=10];\n");
    for (host, roots) in plan.hosts().filter(|(_, c)| !c.is_empty()) {
        let _ = writeln!(out, "  subgraph {} {{", quote(&format!("cluster_{host}")));
        let _ = writeln!(out, "    label={};", quote(host));
        for &i in plan.order() {
            let step = &steps[i];
            if step.host != host {
                continue;
            }
            debug_assert!(roots.contains(&step.root));
            let mut label = format!("{}\n({})", step.root, step.type_name());
            let provided = plan.provided_keys(i);
            if !provided.is_empty() {
                let _ = write!(label, "\nprovides {}", provided.join(", "));
            }
            let _ = writeln!(
                out,
                "    {} [label={}];",
                quote(&step.label()),
                quote(&label)
            );
        }
        out.push_str("  }\n");
    }
    for &i in plan.order() {
        let step = &steps[i];
        for (earlier, keys) in &step.after_keys {
            let from = quote(&steps[*earlier].label());
            let to = quote(&step.label());
            if keys.is_empty() {
                let _ = writeln!(out, "  {from} -> {to} [style=dashed, label=\"watches\"];");
            } else {
                let _ = writeln!(out, "  {from} -> {to} [label={}];", quote(&keys.join(", ")));
            }
        }
    }
    out.push_str("}\n");
    out
}

fn count(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn ticked(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A DOT string: quoted, with `"` and `\` escaped and line breaks as `\n`.
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn dot_strings_are_quoted_and_escaped() {
        assert_eq!(quote("web1: app"), "\"web1: app\"");
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }
}
