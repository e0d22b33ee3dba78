//! Unified diffs of file changes, as shown to people.

use similar::TextDiff;

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Diffs longer than this many lines are cut, so one large file cannot flood the output.
const MAX_LINES: usize = 200;

/// A unified diff from `old` to `new` labelled with `path`, or a one-line note for binary data.
///
/// Returns `None` when both are equal.
pub fn unified(path: &str, old: &[u8], new: &[u8]) -> Option<String> {
    if old == new {
        return None;
    }
    let (Ok(old), Ok(new)) = (std::str::from_utf8(old), std::str::from_utf8(new)) else {
        return Some(format!(
            "binary content of {path} differs ({} -> {} bytes)\n",
            old.len(),
            new.len()
        ));
    };
    let diff = TextDiff::from_lines(old, new);
    let text = diff
        .unified_diff()
        .context_radius(CONTEXT)
        .header(path, path)
        .to_string();
    let mut lines = text.lines();
    let mut out = String::with_capacity(text.len().min(16 * 1024));
    for line in lines.by_ref().take(MAX_LINES) {
        out.push_str(line);
        out.push('\n');
    }
    let rest = lines.count();
    if rest > 0 {
        out.push_str(&format!("... {rest} more diff lines\n"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_content_has_no_diff() {
        assert_eq!(unified("a", b"x\n", b"x\n"), None);
    }

    #[test]
    fn text_diff_is_unified() {
        let d = unified("a.txt", b"one\ntwo\n", b"one\nthree\n").unwrap();
        assert!(d.starts_with("--- a.txt\n+++ a.txt\n"), "{d}");
        assert!(d.contains("-two\n+three\n"), "{d}");
    }

    #[test]
    fn binary_diff_is_summarised() {
        let d = unified("b", &[0xff, 0xfe], &[0xff]).unwrap();
        assert_eq!(d, "binary content of b differs (2 -> 1 bytes)\n");
    }

    #[test]
    fn long_diffs_are_cut() {
        let new: String = (0..1000).map(|i| format!("{i}\n")).collect();
        let d = unified("big", b"", new.as_bytes()).unwrap();
        assert!(d.ends_with("more diff lines\n"), "{d}");
        assert!(d.lines().count() <= MAX_LINES + 1);
    }
}
