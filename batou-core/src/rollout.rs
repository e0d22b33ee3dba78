//! Rolling deploys: the `[rollout]` table of an environment, checked with its places, and what
//! the balancer's templates see of the rolled hosts (`rollout.*`).
//!
//! This module says *what* a rollout is: which hosts are rolled, in batches of which sizes,
//! how many may fail, and which root component drains and undrains them. *When* each batch
//! runs is the controller's scheduler's business (`batou-runtime/src/rollout.rs`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::environment::Host;
use crate::error::{ConfigError, SourceText};

/// A number of hosts: a count, or a percentage of the rolled hosts (rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// This many hosts.
    Count(usize),
    /// This percentage of the rolled hosts, rounded up.
    Percent(u32),
}

impl Size {
    /// The number of hosts out of `of` rolled hosts: a percentage rounds up.
    pub fn of(self, of: usize) -> usize {
        match self {
            Size::Count(n) => n,
            Size::Percent(p) => (of * p as usize).div_ceil(100),
        }
    }

    /// Parses `3` or `25%`; `zero` says whether 0 (or 0%) is allowed.
    pub fn parse(text: &str, zero: bool) -> Result<Size, String> {
        let text = text.trim();
        let min = usize::from(!zero);
        if let Some(p) = text.strip_suffix('%') {
            let p: u32 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a percentage"))?;
            if (p as usize) < min || p > 100 {
                return Err(format!(
                    "`{text}` is out of range: a percentage from {min}% to 100%"
                ));
            }
            return Ok(Size::Percent(p));
        }
        let n: usize = text
            .parse()
            .map_err(|_| format!("`{text}` is neither a count nor a percentage like `25%`"))?;
        if n < min {
            return Err(format!("`{text}` is out of range: at least {min}"));
        }
        Ok(Size::Count(n))
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Count(n) => write!(f, "{n}"),
            Size::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Size::Count(n) => s.serialize_u64(*n as u64),
            Size::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        match SizeShape::deserialize(d)? {
            SizeShape::Count(n) => Ok(Size::Count(
                usize::try_from(n).map_err(serde::de::Error::custom)?,
            )),
            SizeShape::Text(t) => Size::parse(&t, true).map_err(serde::de::Error::custom),
        }
    }
}

/// A rollout as the environment (and the command line) define it; the controller resolves it
/// against the plan's hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// The root component whose hosts are rolled; `None`: every host with steps except the
    /// balancer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Batch sizes in order; the last one repeats.
    pub batch: Vec<Size>,
    /// How many rolled hosts may fail before no new batch starts.
    pub max_failed: Size,
    /// The root component converged again, around each batch, with the hosts in rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<String>,
    /// How long to wait after draining, so that requests in flight to the drained hosts end
    /// and the balancer's reload takes effect, in milliseconds.
    #[serde(default)]
    pub drain_wait_ms: u64,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            component: None,
            batch: vec![Size::Count(1)],
            max_failed: Size::Count(0),
            balancer: None,
            drain_wait_ms: 0,
        }
    }
}

/// A rolled host as the balancer's templates see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationHost {
    /// The host's name in the environment.
    pub name: String,
    /// The host's address (its name when the environment sets none).
    pub address: String,
}

/// What a balancer host's job carries of the rollout: which of its roots is the balancer and
/// the rolled hosts, so that the agent can configure it with any set of them in rotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRollout {
    /// The balancer's root component.
    pub balancer: String,
    /// Every rolled host of the environment, sorted by name.
    pub hosts: Vec<RotationHost>,
}

/// What the balancer's step does around a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Takes the batch's hosts out of rotation before they converge.
    Drain,
    /// Puts the batch's healthy hosts back once they converged.
    Undrain,
}

impl Hook {
    /// `drain` or `undrain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Drain => "drain",
            Hook::Undrain => "undrain",
        }
    }
}

/// What a step of a rollout tells the agent: the batch, and for the balancer's drain and
/// undrain, the hosts in rotation to configure it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRollout {
    /// The batch, counted from 1.
    pub batch: usize,
    /// How many batches the rollout has.
    pub batches: usize,
    /// For the balancer's step: draining or undraining; `None` for a rolled host's step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<Hook>,
    /// The rolled hosts in rotation once the hook ran (a hook only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_rotation: Vec<String>,
}

impl RolloutSpec {
    /// The rolled hosts of `hosts` (sorted by name): those running `component`, or every host
    /// with root components that does not run the balancer.
    pub fn rolled<'h>(&self, hosts: &'h [Host]) -> Vec<&'h Host> {
        hosts
            .iter()
            .filter(|h| match &self.component {
                Some(c) => h.components.contains(c),
                None => {
                    !h.components.is_empty()
                        && !self
                            .balancer
                            .as_ref()
                            .is_some_and(|b| h.components.contains(b))
                }
            })
            .collect()
    }

    /// The rolled hosts as the balancer's templates see them.
    pub fn rotation_hosts(&self, hosts: &[Host]) -> Vec<RotationHost> {
        self.rolled(hosts)
            .into_iter()
            .map(|h| RotationHost {
                name: h.name.clone(),
                address: h.address.clone().unwrap_or_else(|| h.name.clone()),
            })
            .collect()
    }

    /// How long to wait after draining.
    pub fn drain_wait(&self) -> Duration {
        Duration::from_millis(self.drain_wait_ms)
    }
}

/// The template variable `rollout` of the balancer's step: every rolled host, those in
/// rotation and those drained (all in rotation when `in_rotation` is `None`, as in every
/// converge outside a rollout's drain and undrain).
pub(crate) fn template_value(
    hosts: &[RotationHost],
    in_rotation: Option<&[String]>,
) -> minijinja::Value {
    let inside = |h: &RotationHost| in_rotation.is_none_or(|r| r.contains(&h.name));
    let rotating: Vec<&RotationHost> = hosts.iter().filter(|h| inside(h)).collect();
    let drained: Vec<&RotationHost> = hosts.iter().filter(|h| !inside(h)).collect();
    minijinja::context! {
        hosts => minijinja::Value::from_serialize(hosts),
        in_rotation => minijinja::Value::from_serialize(&rotating),
        drained => minijinja::Value::from_serialize(&drained),
    }
}

/// The `[rollout]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RolloutShape {
    #[serde(default)]
    component: Option<Spanned<String>>,
    #[serde(default)]
    batch: Option<Spanned<BatchShape>>,
    #[serde(default)]
    max_failed: Option<Spanned<SizeShape>>,
    #[serde(default)]
    balancer: Option<Spanned<String>>,
    #[serde(default)]
    drain_wait: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeShape {
    Count(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BatchShape {
    One(SizeShape),
    Many(Vec<SizeShape>),
}

impl SizeShape {
    fn to_size(&self, zero: bool) -> Result<Size, String> {
        match self {
            SizeShape::Count(n) => Size::parse(&n.to_string(), zero),
            SizeShape::Text(t) => Size::parse(t, zero),
        }
    }
}

/// Checks the `[rollout]` table against the environment's hosts.
pub(crate) fn check(
    shape: RolloutShape,
    hosts: &[Host],
    source: &SourceText,
) -> Result<RolloutSpec, ConfigError> {
    let at = |offset: usize| source.place(offset);
    let mut spec = RolloutSpec::default();
    if let Some(batch) = &shape.batch {
        let sizes: Vec<&SizeShape> = match batch.get_ref() {
            BatchShape::One(one) => vec![one],
            BatchShape::Many(many) => many.iter().collect(),
        };
        if sizes.is_empty() {
            return Err(ConfigError::new("`rollout.batch` is an empty list")
                .at(at(batch.span().start))
                .hint("give one size (`batch = 2`, `batch = \"25%\"`) or a list of them"));
        }
        spec.batch = sizes
            .into_iter()
            .map(|s| s.to_size(false))
            .collect::<Result<_, _>>()
            .map_err(|m| {
                ConfigError::new(format!("`rollout.batch`: {m}"))
                    .at(at(batch.span().start))
                    .hint("a batch is a count of hosts (at least 1) or a percentage like `25%`")
            })?;
    }
    if let Some(max) = &shape.max_failed {
        spec.max_failed = max.get_ref().to_size(true).map_err(|m| {
            ConfigError::new(format!("`rollout.max_failed`: {m}"))
                .at(at(max.span().start))
                .hint("a count of hosts (0 for none) or a percentage like `10%`")
        })?;
    }
    if let Some(wait) = &shape.drain_wait {
        let d = humantime::parse_duration(wait.get_ref().trim()).map_err(|e| {
            ConfigError::new(format!(
                "`rollout.drain_wait` `{}` is not a duration: {e}",
                wait.get_ref()
            ))
            .at(at(wait.span().start))
            .hint("write it like `500ms` or `2s`")
        })?;
        spec.drain_wait_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    }
    let assigned: BTreeSet<&str> = hosts
        .iter()
        .flat_map(|h| h.components.iter().map(String::as_str))
        .collect();
    for (field, value) in [
        ("component", &shape.component),
        ("balancer", &shape.balancer),
    ] {
        if let Some(v) = value
            && !assigned.contains(v.get_ref().as_str())
        {
            return Err(ConfigError::new(format!(
                "`rollout.{field}` names `{}`, which no host runs",
                v.get_ref()
            ))
            .at(at(v.span().start))
            .suggest(v.get_ref(), assigned.iter().copied())
            .hint("name a root component that a host's `components` lists"));
        }
    }
    spec.component = shape.component.as_ref().map(|c| c.get_ref().clone());
    spec.balancer = shape.balancer.as_ref().map(|b| b.get_ref().clone());
    if let (Some(component), Some(balancer)) = (&shape.component, &spec.balancer)
        && let Some(h) = spec
            .rolled(hosts)
            .into_iter()
            .find(|h| h.components.contains(balancer))
    {
        return Err(ConfigError::new(format!(
            "host `{}` runs both the rolled `{}` and the balancer `{balancer}`",
            h.name,
            component.get_ref()
        ))
        .at(at(component.span().start))
        .hint("a balancer drains the rolled hosts: it cannot run on one of them"));
    }
    if spec.rolled(hosts).is_empty() {
        return Err(ConfigError::new("`[rollout]` rolls no host")
            .hint("assign `rollout.component` to hosts, or leave it out to roll every host but the balancer's"));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_counts_or_percentages_rounded_up() {
        assert_eq!(Size::parse("2", false), Ok(Size::Count(2)));
        assert_eq!(Size::parse("25%", false), Ok(Size::Percent(25)));
        assert_eq!(Size::Percent(25).of(4), 1);
        assert_eq!(Size::Percent(25).of(5), 2);
        assert_eq!(Size::Percent(100).of(3), 3);
        assert_eq!(Size::Percent(1).of(1), 1);
        assert!(Size::parse("0", false).is_err());
        assert_eq!(Size::parse("0", true), Ok(Size::Count(0)));
        assert!(Size::parse("101%", true).is_err());
        assert!(Size::parse("x", true).unwrap_err().contains("`x`"));
        let json = serde_json::to_string(&[Size::Count(1), Size::Percent(50)]).unwrap();
        assert_eq!(json, r#"[1,"50%"]"#);
        let back: Vec<Size> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, [Size::Count(1), Size::Percent(50)]);
    }

    fn host(name: &str, components: &[&str]) -> Host {
        Host {
            name: name.into(),
            components: components.iter().map(|c| c.to_string()).collect(),
            data: Default::default(),
            address: None,
            port: None,
            user: None,
            become_user: None,
        }
    }

    fn load(rollout: &str) -> Result<RolloutSpec, ConfigError> {
        #[derive(Deserialize)]
        struct Nothing {}
        impl crate::Component for Nothing {
            fn label(&self) -> String {
                "Nothing".into()
            }
            fn verify(&self, _cx: &mut crate::Deploy) -> anyhow::Result<crate::Verdict> {
                Ok(crate::Verdict::UpToDate)
            }
            fn update(&mut self, _cx: &mut crate::Deploy) -> anyhow::Result<()> {
                Ok(())
            }
        }
        let mut registry = crate::Registry::new();
        registry.register::<Nothing>("app");
        registry.register::<Nothing>("lb");
        let text = format!(
            "[hosts.a1]\ncomponents = [\"app\"]\n[hosts.a2]\ncomponents = [\"app\"]\n[hosts.lb]\ncomponents = [\"lb\"]\n\n[rollout]\n{rollout}"
        );
        let env = crate::Environment::parse("dev", "environments/dev.toml", text, &registry)?;
        Ok(env.rollout.expect("the table is there"))
    }

    #[test]
    fn the_table_is_checked_with_places() {
        let spec = load("batch = [1, \"50%\"]\nmax_failed = \"25%\"\nbalancer = \"lb\"\ndrain_wait = \"250ms\"\n").unwrap();
        assert_eq!(spec.batch, [Size::Count(1), Size::Percent(50)]);
        assert_eq!(spec.max_failed, Size::Percent(25));
        assert_eq!(spec.balancer.as_deref(), Some("lb"));
        assert_eq!(spec.drain_wait(), Duration::from_millis(250));
        assert_eq!(load("").unwrap(), RolloutSpec::default());
        assert_eq!(load("batch = 2\n").unwrap().batch, [Size::Count(2)]);
        let err = |t: &str| load(t).unwrap_err().to_string();
        assert_eq!(
            err("batch = 0\n"),
            "`rollout.batch`: `0` is out of range: at least 1 in environments/dev.toml:9:9"
        );
        assert_eq!(
            err("batch = []\n"),
            "`rollout.batch` is an empty list in environments/dev.toml:9:9"
        );
        assert!(err("max_failed = \"lots\"\n").contains("`lots` is neither"));
        assert_eq!(
            err("component = \"ap\"\n"),
            "`rollout.component` names `ap`, which no host runs in environments/dev.toml:9:13 (did you mean `app`?)"
        );
        assert!(
            err("component = \"lb\"\nbalancer = \"lb\"\n")
                .starts_with("host `lb` runs both the rolled `lb` and the balancer `lb`")
        );
        assert!(err("drain_wait = \"soon\"\n").contains("is not a duration"));
        assert!(err("batches = 1\n").contains("unknown field `batches`"));
    }

    #[test]
    fn the_rolled_hosts_run_the_component_or_everything_but_the_balancer() {
        let hosts = [
            host("app1", &["app"]),
            host("app2", &["app", "motd"]),
            host("lb", &["upstreams", "motd"]),
            host("spare", &[]),
        ];
        let names = |spec: &RolloutSpec| -> Vec<String> {
            spec.rolled(&hosts).iter().map(|h| h.name.clone()).collect()
        };
        let mut spec = RolloutSpec {
            balancer: Some("upstreams".into()),
            ..RolloutSpec::default()
        };
        assert_eq!(names(&spec), ["app1", "app2"]);
        spec.component = Some("motd".into());
        assert_eq!(names(&spec), ["app2", "lb"]);
        let value = template_value(&spec.rotation_hosts(&hosts), Some(&["app2".to_string()]));
        assert_eq!(
            value.get_attr("drained").unwrap().len(),
            Some(1),
            "{value:?}"
        );
    }
}
