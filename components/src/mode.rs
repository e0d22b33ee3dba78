//! File permission bits, written as `0o640` (TOML integer) or `"0640"` (string) in environments.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// Permission bits (`0o7777` at most).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Str(String),
        }
        let bits = match Raw::deserialize(deserializer)? {
            Raw::Int(i) => i,
            Raw::Str(s) => {
                let digits = s.strip_prefix("0o").unwrap_or(&s);
                u32::from_str_radix(digits, 8).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "invalid mode `{s}`: expected octal digits like \"0640\" or 0o640"
                    ))
                })?
            }
        };
        if bits > 0o7777 {
            return Err(serde::de::Error::custom(format!(
                "invalid mode {bits:o}: at most 0o7777"
            )));
        }
        Ok(Mode(bits))
    }
}
