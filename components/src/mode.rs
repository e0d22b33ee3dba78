//! File permission bits, written as `0o640` (TOML integer) or `"0640"` (string) in environments.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Permission bits (`0o7777` at most).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

const RANGE: &str = "mode must be between 0o0 and 0o7777";

struct ModeVisitor;

impl Visitor<'_> for ModeVisitor {
    type Value = Mode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mode like 0o640 or \"0640\"")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mode, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!("{RANGE}, not {v}"))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Mode, E> {
        match u32::try_from(v) {
            Ok(bits) if bits <= 0o7777 => Ok(Mode(bits)),
            _ => Err(E::custom(format!("{RANGE}, not {v:#o}"))),
        }
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Mode, E> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.starts_with('-') {
            return Err(E::custom(format!("{RANGE}, not `{s}`")));
        }
        let bits = u32::from_str_radix(digits, 8).map_err(|_| {
            E::custom(format!(
                "invalid mode `{}`: expected octal digits like \"0640\" or 0o640",
                s.escape_debug()
            ))
        })?;
        self.visit_u64(u64::from(bits))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Mode, E> {
        Err(E::custom(format!(
            "invalid mode {v}: expected octal digits like \"0640\" or 0o640"
        )))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ModeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(json: &str) -> Result<Mode, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_and_strings() {
        assert_eq!(mode("416"), Ok(Mode(0o640)));
        assert_eq!(mode("\"0640\""), Ok(Mode(0o640)));
        assert_eq!(mode("\"0o2750\""), Ok(Mode(0o2750)));
        assert_eq!(mode("0"), Ok(Mode(0)));
    }

    #[test]
    fn out_of_range_modes_say_the_range() {
        for bad in ["-1", "4096", "99999999999", "\"-1\"", "\"10000\""] {
            let err = mode(bad).unwrap_err();
            assert!(err.starts_with(RANGE), "{bad}: {err}");
        }
        let err = mode("\"64x\"").unwrap_err();
        assert!(err.starts_with("invalid mode `64x`"), "{err}");
        let err = mode("true").unwrap_err();
        assert!(
            !err.contains("untagged") && !err.contains("variant"),
            "{err}"
        );
    }
}
