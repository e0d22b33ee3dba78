//! Filters that make command output comparable across runs, for snapshot tests.
//!
//! Temporary paths, ports, durations, sizes, key fingerprints, process ids and timestamps
//! differ on every run; each is replaced by a bracketed name (`[TMP]`, `[PORT]`, ...).

/// `(regex, replacement)` pairs, in the order they must be applied.
pub fn snapshot_filters() -> Vec<(&'static str, &'static str)> {
    vec![
        // Temporary directories of tests and of the tool itself.
        (r"/tmp/[A-Za-z0-9._-]+", "[TMP]"),
        (r"\[TMP\](/[A-Za-z0-9._-]+)*", "[TMP]"),
        // Key fingerprints.
        (r"SHA256:[A-Za-z0-9+/]{43}", "SHA256:[FINGERPRINT]"),
        // Timestamps (RFC 3339).
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "[TIME]"),
        // Durations: `0.03 s`, `1.5s`, `12 ms`.
        (r"\b\d+(\.\d+)? ?(s|ms)\b", "[DURATION]"),
        // Sizes, as whole words (not `\0B` inside an escaped string).
        (
            r"(^|[\s(])\d+(\.\d+)? ?(bytes|B|KiB|MiB|kB|MB)\b",
            "$1[SIZE]",
        ),
        // Loopback addresses with ports, and ports after a colon.
        (r"127\.0\.0\.\d+:\d+", "127.0.0.x:[PORT]"),
        (r"\bport \d+", "port [PORT]"),
        // Process ids.
        (r"\bpid \d+", "pid [PID]"),
    ]
}

/// Asserts that `$text` matches the named snapshot after [`snapshot_filters`].
///
/// Snapshots live beside the calling test module in `snapshots/`; review changes with
/// `cargo insta review`, or accept them with `INSTA_UPDATE=always`.
#[macro_export]
macro_rules! assert_output_snapshot {
    ($name:expr, $text:expr) => {
        $crate::insta::with_settings!({
            filters => $crate::snapshot_filters(),
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            $crate::insta::assert_snapshot!($name, $text);
        })
    };
}
