//! The component types a deployment can name in its environments.

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::Spanned;
use toml::de::DeValue;

use crate::Component;

type Factory = Box<
    dyn for<'a> Fn(Spanned<DeValue<'a>>) -> Result<Box<dyn Component>, toml::de::Error>
        + Send
        + Sync,
>;
type JsonFactory =
    Box<dyn Fn(serde_json::Value) -> Result<Box<dyn Component>, serde_json::Error> + Send + Sync>;

/// Maps type names (`file`, `app`) to component types deserialized from environment overrides.
#[derive(Default)]
pub struct Registry {
    types: BTreeMap<String, (Factory, JsonFactory)>,
    any_type: bool,
    first: std::collections::BTreeSet<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `T` under `name`; a later registration of the same name replaces it.
    ///
    /// Root components of this type are deserialized from their `[components.<name>]` table
    /// (without its `type` key). Use `#[serde(deny_unknown_fields)]` so that misspelt
    /// attributes are errors.
    pub fn register<T: Component + DeserializeOwned>(&mut self, name: &str) -> &mut Self {
        self.types.insert(
            name.to_string(),
            (
                Box::new(|value: Spanned<DeValue<'_>>| {
                    let component = T::deserialize(value.into_deserializer())?;
                    Ok(Box::new(component) as Box<dyn Component>)
                }),
                Box::new(|value: serde_json::Value| {
                    let component = T::deserialize(value)?;
                    Ok(Box::new(component) as Box<dyn Component>)
                }),
            ),
        );
        self
    }

    /// A registry that accepts every type name, for checking an environment's hosts and
    /// component names without the deployment's component types (the secrets commands).
    /// Plans cannot be built with it.
    pub fn any_type() -> Self {
        Registry {
            types: BTreeMap::new(),
            any_type: true,
            first: Default::default(),
        }
    }

    /// Marks the type `name` as a release type: its root components are configured before the
    /// attributes of the other roots of their host are rendered, and the bundle each asks for
    /// through [`Configure::bundle`](crate::Configure::bundle) appears in those templates as
    /// `releases.<root>` (and `release` when the host has one release root).
    pub fn configure_first(&mut self, name: &str) -> &mut Self {
        self.first.insert(name.to_string());
        self
    }

    /// Whether root components of type `name` are configured first ([`Registry::configure_first`]).
    pub(crate) fn configures_first(&self, name: &str) -> bool {
        self.first.contains(name)
    }

    /// Whether a type called `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.any_type || self.types.contains_key(name)
    }

    /// Registered type names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// A new component of type `name` from its attribute table.
    pub(crate) fn create(
        &self,
        name: &str,
        attributes: Spanned<DeValue<'_>>,
    ) -> Result<Box<dyn Component>, toml::de::Error> {
        let (factory, _) = self
            .types
            .get(name)
            .expect("environment loading checked that every type is registered (plans are never built with `Registry::any_type`)");
        factory(attributes)
    }

    /// A new component of type `name` from attributes shipped as JSON, if the type exists.
    pub(crate) fn create_from_json(
        &self,
        name: &str,
        attributes: serde_json::Value,
    ) -> Option<Result<Box<dyn Component>, serde_json::Error>> {
        self.types.get(name).map(|(_, factory)| factory(attributes))
    }
}
