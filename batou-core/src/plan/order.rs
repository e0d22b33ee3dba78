//! Ordering a plan's steps: provider before requirer, otherwise the environment's order.

use std::collections::BTreeSet;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::error::ConfigError;
use crate::resources::Edge;

/// Plan order by Kahn's algorithm, always taking the earliest ready step in environment order;
/// a cycle is reported whole.
pub(super) fn order_steps(
    count: usize,
    edges: &[(usize, usize, Edge)],
    labels: &[String],
) -> Result<Vec<usize>, ConfigError> {
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..count).map(|i| graph.add_node(i)).collect();
    for (from, to, _) in edges {
        graph.add_edge(nodes[*from], nodes[*to], ());
    }
    let mut cycles: Vec<Vec<usize>> = tarjan_scc(&graph)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| {
            let mut steps: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
            steps.sort();
            steps
        })
        .collect();
    if !cycles.is_empty() {
        cycles.sort();
        let cycle = &cycles[0];
        let mut links = Vec::new();
        for (from, to, edge) in edges {
            if cycle.contains(from) && cycle.contains(to) {
                links.push(match edge {
                    Edge::Requires(key) => format!(
                        "`{}` requires `{key}` from `{}`",
                        labels[*to], labels[*from]
                    ),
                    Edge::Watches => {
                        format!("`{}` watches `{}` for changes", labels[*to], labels[*from])
                    }
                });
            }
        }
        return Err(ConfigError::new(format!(
            "dependency cycle between {}: {}",
            cycle
                .iter()
                .map(|s| format!("`{}`", labels[*s]))
                .collect::<Vec<_>>()
                .join(", "),
            links.join("; ")
        ))
        .hint("a root component cannot be deployed before and after another; move one `provide` to a component that requires nothing from the other, or drop one `restart_on`/`on_change` name"));
    }
    let mut indegree = vec![0usize; count];
    for (_, to, _) in edges {
        indegree[*to] += 1;
    }
    let mut ready: BTreeSet<usize> = (0..count).filter(|i| indegree[*i] == 0).collect();
    let mut order = Vec::with_capacity(count);
    while let Some(step) = ready.pop_first() {
        order.push(step);
        for (from, to, _) in edges {
            if *from == step {
                indegree[*to] -= 1;
                if indegree[*to] == 0 {
                    ready.insert(*to);
                }
            }
        }
    }
    Ok(order)
}
