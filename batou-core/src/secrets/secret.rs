//! `Secret<T>`: a value that never shows, in output, logs or serialization.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret attribute value: its `Display` and `Debug` show `<secret>`, and so does its
/// serialization, except when it is serialized for a template context (templates render the
/// real value). Use [`Secret::expose`] where the value itself is needed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    /// Wraps a value as secret.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret value. Never print it: output sinks mask registered secrets, but a value
    /// transformed before printing (e.g. base64-encoded) no longer matches.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if minijinja::value::serializing_for_value() {
            self.0.serialize(serializer)
        } else {
            serializer.serialize_str("<secret>")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_never_display() {
        let s: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(format!("{s} {s:?}"), "<secret> <secret>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<secret>\"");
        assert_eq!(s.expose(), "hunter2");
        // Templates see the value.
        let v = minijinja::Value::from_serialize(&s);
        assert_eq!(v.to_string(), "hunter2");
    }
}
