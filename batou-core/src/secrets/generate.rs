//! Generated secrets: an attribute declared as `{ generate = "password", length = 32 }` gets a
//! random value, made once on the controller and kept in the environment's secrets file.
//!
//! The declaration is an attribute value in an environment's `[components.<name>]` table (at
//! any depth of tables). Loading an environment finds the declarations
//! ([`declarations`]) and takes them out of the attributes; the value comes from a
//! `[[generated]]` entry of the decrypted secrets, which is merged like an attribute override
//! from the secrets. A declaration without an entry is *missing*: [`append`] makes the
//! entries for the caller to encrypt and store, or, in a dry run, only to plan with. Writing
//! the file is the caller's (the runtime's), since only it knows the recipients and whether
//! this is a dry run.

use std::fmt::Write as _;

use rand::Rng;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, SourceText};

/// What a declaration generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Letters and digits, `length` of them (default 32).
    Password,
    /// Hexadecimal digits, `length` of them (default 64: 32 bytes).
    Hex,
    /// An Ed25519 key pair: the value is the private key in OpenSSH's format.
    Ed25519,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Password => "password",
            Kind::Hex => "hex",
            Kind::Ed25519 => "ed25519",
        }
    }

    fn default_length(self) -> Option<usize> {
        match self {
            Kind::Password => Some(32),
            Kind::Hex => Some(64),
            Kind::Ed25519 => None,
        }
    }
}

/// Shortest and longest `length` of a password or a hex secret.
const LENGTHS: std::ops::RangeInclusive<i64> = 8..=4096;

/// One `{ generate = ... }` attribute value of an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    /// The root component whose attribute it is.
    pub component: String,
    /// The attribute's key path in the component's table (`["vars", "api_token"]`).
    pub attribute: Vec<String>,
    /// What to generate.
    pub kind: Kind,
    /// How many characters (passwords and hex).
    pub length: Option<usize>,
}

impl Declaration {
    /// The secret's dotted name, as masking and messages show it:
    /// `components.app.vars.api_token`.
    pub fn name(&self) -> String {
        format!("components.{}.{}", self.component, self.attribute.join("."))
    }
}

/// Whether a table is a generate declaration (it has a `generate` key).
pub(crate) fn is_declaration(table: &DeTable<'_>) -> bool {
    table.contains_key("generate")
}

/// The declarations in the `[components.*]` tables of an environment's text, checked: a known
/// `generate` kind, a `length` only where it applies and within bounds, no other key.
pub(crate) fn declarations(
    source: &SourceText,
    components: &[(String, Spanned<DeValue<'_>>)],
) -> Result<Vec<Declaration>, ConfigError> {
    let mut out = Vec::new();
    for (component, table) in components {
        walk(source, component, table, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

fn walk(
    source: &SourceText,
    component: &str,
    value: &Spanned<DeValue<'_>>,
    path: &mut Vec<String>,
    out: &mut Vec<Declaration>,
) -> Result<(), ConfigError> {
    let DeValue::Table(table) = value.get_ref() else {
        return Ok(());
    };
    if !path.is_empty() && is_declaration(table) {
        out.push(declaration(source, component, path, value, table)?);
        return Ok(());
    }
    for (key, child) in table.iter() {
        if path.is_empty() && key.get_ref() == "type" {
            continue;
        }
        path.push(key.get_ref().to_string());
        walk(source, component, child, path, out)?;
        path.pop();
    }
    Ok(())
}

fn declaration(
    source: &SourceText,
    component: &str,
    path: &[String],
    value: &Spanned<DeValue<'_>>,
    table: &DeTable<'_>,
) -> Result<Declaration, ConfigError> {
    let name = format!("components.{component}.{}", path.join("."));
    let at = |offset: usize| source.place(offset);
    for (key, _) in table.iter() {
        if !matches!(key.get_ref().as_ref(), "generate" | "length") {
            return Err(ConfigError::new(format!(
                "unknown key `{}` in the generated secret `{name}`",
                key.get_ref()
            ))
            .at(at(key.span().start))
            .suggest(key.get_ref(), ["generate", "length"])
            .hint("a generated secret is `{ generate = \"password\", length = 32 }`"));
        }
    }
    let generate = table.get("generate").expect("declarations have `generate`");
    let kind = match generate.get_ref().as_str() {
        Some("password") => Kind::Password,
        Some("hex") => Kind::Hex,
        Some("ed25519") => Kind::Ed25519,
        other => {
            let shown = other.map_or_else(
                || "a value that is no string".to_string(),
                |s| format!("`{s}`"),
            );
            return Err(ConfigError::new(format!(
                "`generate` of `{name}` is {shown}: expected one of `password`, `hex`, `ed25519`"
            ))
            .at(at(generate.span().start))
            .suggest(other.unwrap_or_default(), ["password", "hex", "ed25519"]));
        }
    };
    let length = match table.get("length") {
        None => kind.default_length(),
        Some(_) if kind == Kind::Ed25519 => {
            return Err(ConfigError::new(format!(
                "`length` does not apply to the ed25519 key `{name}`"
            ))
            .at(at(value.span().start)));
        }
        Some(length) => match length.get_ref() {
            DeValue::Integer(i) => match i.as_str().parse::<i64>() {
                Ok(n) if LENGTHS.contains(&n) => Some(n as usize),
                _ => {
                    return Err(ConfigError::new(format!(
                        "`length` of `{name}` is {}: it must be between {} and {}",
                        i.as_str(),
                        LENGTHS.start(),
                        LENGTHS.end()
                    ))
                    .at(at(length.span().start)));
                }
            },
            _ => {
                return Err(
                    ConfigError::new(format!("`length` of `{name}` must be an integer"))
                        .at(at(length.span().start)),
                );
            }
        },
    };
    Ok(Declaration {
        component: component.to_string(),
        attribute: path.to_vec(),
        kind,
        length,
    })
}

/// Takes the generate declarations out of a component's attribute table, so that the value
/// merged from the secrets takes their place.
pub(crate) fn strip(value: &mut Spanned<DeValue<'_>>) {
    if let DeValue::Table(table) = value.get_mut() {
        strip_table(table);
    }
}

fn strip_table(table: &mut DeTable<'_>) {
    let declared: Vec<String> = table
        .iter()
        .filter(|(_, v)| matches!(v.get_ref(), DeValue::Table(t) if is_declaration(t)))
        .map(|(k, _)| k.get_ref().to_string())
        .collect();
    for key in declared {
        table.remove(key.as_str());
    }
    for (_, v) in table.iter_mut() {
        if let DeValue::Table(t) = v.get_mut() {
            strip_table(t);
        }
    }
}

/// One `[[generated]]` entry of a secrets file, parsed again from its text with spans.
pub(crate) struct Entry<'a> {
    pub(crate) component: String,
    pub(crate) attribute: Vec<String>,
    pub(crate) value: Spanned<DeValue<'a>>,
    /// Where the entry's `component` key is, for errors.
    pub(crate) at: usize,
}

/// The `[[generated]]` entries of a secrets text, checked for shape.
pub(crate) fn entries<'a>(
    source: &SourceText,
    generated: Spanned<DeValue<'a>>,
) -> Result<Vec<Entry<'a>>, ConfigError> {
    let span = generated.span();
    let DeValue::Array(items) = generated.into_inner() else {
        return Err(ConfigError::new("`generated` must be an array of tables")
            .at(source.place(span.start))
            .hint("each generated secret is a `[[generated]]` table"));
    };
    let mut out = Vec::new();
    for item in items {
        let item_span = item.span();
        let DeValue::Table(mut table) = item.into_inner() else {
            return Err(ConfigError::new("`generated` must be an array of tables")
                .at(source.place(item_span.start)));
        };
        let text = |table: &mut DeTable<'a>, key: &str| -> Result<(String, usize), ConfigError> {
            match table.remove(key) {
                Some(v) => match v.get_ref().as_str() {
                    Some(s) => Ok((s.to_string(), v.span().start)),
                    None => Err(ConfigError::new(format!(
                        "`{key}` of a generated secret must be a string"
                    ))
                    .at(source.place(v.span().start))),
                },
                None => Err(
                    ConfigError::new(format!("a generated secret has no `{key}`"))
                        .at(source.place(item_span.start)),
                ),
            }
        };
        let (component, at) = text(&mut table, "component")?;
        let (attribute, _) = text(&mut table, "attribute")?;
        let Some(value) = table.remove("value") else {
            return Err(ConfigError::new("a generated secret has no `value`")
                .at(source.place(item_span.start)));
        };
        if value.get_ref().as_str().is_none() {
            return Err(
                ConfigError::new("the `value` of a generated secret must be a string")
                    .at(source.place(value.span().start)),
            );
        }
        for (key, _) in table.iter() {
            if !matches!(key.get_ref().as_ref(), "kind" | "length" | "public") {
                return Err(ConfigError::new(format!(
                    "unknown key `{}` in a generated secret",
                    key.get_ref()
                ))
                .at(source.place(key.span().start))
                .suggest(
                    key.get_ref(),
                    [
                        "component",
                        "attribute",
                        "value",
                        "kind",
                        "length",
                        "public",
                    ],
                ));
            }
        }
        out.push(Entry {
            component,
            attribute: attribute.split('.').map(str::to_string).collect(),
            value,
            at,
        });
    }
    Ok(out)
}

/// `cleartext` with a `[[generated]]` entry for each of `missing`, each with a new random
/// value. Appending keeps the user's text as it is, and a new array entry never clashes with
/// what is there.
pub fn append(cleartext: &str, missing: &[Declaration]) -> String {
    let mut out = cleartext.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for declaration in missing {
        let value = generate(declaration);
        out.push_str(
            "\n# Generated on first deploy and reused on every later one: remove this entry to\n\
             # have a new value generated.\n[[generated]]\n",
        );
        let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
        let _ = writeln!(out, "component = {}", quoted(&declaration.component));
        let _ = writeln!(
            out,
            "attribute = {}",
            quoted(&declaration.attribute.join("."))
        );
        let _ = writeln!(out, "kind = {}", quoted(declaration.kind.name()));
        if let Some(length) = declaration.length {
            let _ = writeln!(out, "length = {length}");
        }
        if let Some(public) = &value.public {
            let _ = writeln!(out, "public = {}", quoted(public));
        }
        let _ = writeln!(out, "value = {}", quoted(&value.secret));
    }
    out
}

/// A generated value; for a key pair, with its public half.
struct Generated {
    secret: String,
    public: Option<String>,
}

fn generate(declaration: &Declaration) -> Generated {
    let mut rng = rand::rngs::OsRng;
    let pick = |alphabet: &[u8], n: usize, rng: &mut rand::rngs::OsRng| -> String {
        (0..n)
            .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
            .collect()
    };
    match declaration.kind {
        Kind::Password => Generated {
            secret: pick(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                declaration.length.unwrap_or(32),
                &mut rng,
            ),
            public: None,
        },
        Kind::Hex => Generated {
            secret: pick(
                b"0123456789abcdef",
                declaration.length.unwrap_or(64),
                &mut rng,
            ),
            public: None,
        },
        Kind::Ed25519 => {
            let mut seed = [0u8; 32];
            rng.fill(&mut seed);
            let check: u32 = rng.r#gen();
            let comment = declaration.name();
            let (private, public) = openssh_ed25519(&seed, check, &comment);
            Generated {
                secret: private,
                public: Some(public),
            }
        }
    }
}

/// The Ed25519 public key of a 32-byte seed: the clamped first half of SHA-512(seed) times
/// the base point (RFC 8032, 5.1.5).
fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    let hash = sha2::Sha512::digest(seed);
    let mut scalar = [0u8; 32];
    scalar.copy_from_slice(&hash[..32]);
    curve25519_dalek::EdwardsPoint::mul_base_clamped(scalar)
        .compress()
        .to_bytes()
}

/// The private key in OpenSSH's format (`openssh-key-v1`, unencrypted) and the public key
/// line, for a seed, a check number and a comment.
fn openssh_ed25519(seed: &[u8; 32], check: u32, comment: &str) -> (String, String) {
    use base64::Engine;
    fn string(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }
    let public = ed25519_public(seed);
    let mut public_blob = Vec::new();
    string(&mut public_blob, b"ssh-ed25519");
    string(&mut public_blob, &public);

    let mut private = Vec::new();
    private.extend_from_slice(&check.to_be_bytes());
    private.extend_from_slice(&check.to_be_bytes());
    string(&mut private, b"ssh-ed25519");
    string(&mut private, &public);
    let mut pair = seed.to_vec();
    pair.extend_from_slice(&public);
    string(&mut private, &pair);
    string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }

    let mut blob = b"openssh-key-v1\0".to_vec();
    string(&mut blob, b"none");
    string(&mut blob, b"none");
    string(&mut blob, b"");
    blob.extend_from_slice(&1u32.to_be_bytes());
    string(&mut blob, &public_blob);
    string(&mut blob, &private);

    let engine = base64::engine::general_purpose::STANDARD;
    let encoded = engine.encode(&blob);
    let mut pem = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for chunk in encoded.as_bytes().chunks(70) {
        pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    let line = format!("ssh-ed25519 {} {comment}", engine.encode(&public_blob));
    (pem, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(kind: Kind, length: Option<usize>) -> Declaration {
        Declaration {
            component: "app".into(),
            attribute: vec!["vars".into(), "token".into()],
            kind,
            length,
        }
    }

    #[test]
    fn passwords_and_hex_have_their_length_and_alphabet() {
        let text = append(
            "",
            &[
                declared(Kind::Password, Some(40)),
                declared(Kind::Hex, Some(16)),
            ],
        );
        let doc: toml::Table = text.parse().unwrap();
        let entries = doc["generated"].as_array().unwrap();
        let password = entries[0]["value"].as_str().unwrap();
        assert_eq!(password.len(), 40);
        assert!(
            password.chars().all(|c| c.is_ascii_alphanumeric()),
            "{password}"
        );
        let hex = entries[1]["value"].as_str().unwrap();
        assert_eq!(hex.len(), 16);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{hex}");
        assert_eq!(entries[0]["attribute"].as_str(), Some("vars.token"));
        // Two values are never the same.
        let again = append("", &[declared(Kind::Password, Some(40))]);
        assert!(!again.contains(password));
    }

    #[test]
    fn appending_keeps_the_text_and_stays_valid_toml() {
        let before = "[components.app]\npassword = \"x\"\n\n[[generated]]\ncomponent = \"db\"\nattribute = \"pw\"\nvalue = \"y\"\n\n[files]\n\"k\" = \"v\"";
        let text = append(before, &[declared(Kind::Hex, Some(8))]);
        assert!(text.starts_with(before));
        let doc: toml::Table = text.parse().unwrap();
        assert_eq!(doc["generated"].as_array().unwrap().len(), 2);
        assert_eq!(doc["files"]["k"].as_str(), Some("v"));
    }

    #[test]
    fn the_ed25519_public_key_is_rfc_8032s() {
        // RFC 8032, 7.1, test 1.
        let seed: [u8; 32] =
            hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        assert_eq!(
            ed25519_public(&seed).to_vec(),
            hex::<32>("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a").to_vec()
        );
    }

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
