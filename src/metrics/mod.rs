//! Prometheus series: the counters of what hakube does (kept in the
//! process, as counters are: a restart starts them again, which `rate()`
//! and `increase()` expect), the builder one scrape registers its series
//! into, and the alert rules written for them. What an agent serves on
//! `/metrics` is [`crate::agent::metrics`].

pub mod etcd;

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The alert rules (`monitoring/hakube.rules.yaml`), as shipped in the binary.
pub const RULES: &str = include_str!("../../monitoring/hakube.rules.yaml");

/// [`RULES`] as a PrometheusRule object (the Prometheus Operator's), in
/// `namespace`: the same groups, so the two never drift apart.
pub fn prometheus_rule(namespace: &str) -> anyhow::Result<String> {
    let name: crate::config::NodeName =
        namespace.parse().map_err(|e: crate::config::types::InvalidValue| anyhow::anyhow!("--namespace: {}", e.0))?;
    let rules: serde_norway::Value = serde_norway::from_str(RULES)?;
    let object = serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "hakube",
            "namespace": name.as_str(),
            "labels": {"app.kubernetes.io/name": "hakube"},
        },
        "spec": {"groups": serde_json::to_value(&rules["groups"])?},
    });
    Ok(serde_norway::to_string(&object)?)
}

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;

type GaugeF = Gauge<f64, AtomicU64>;

/// What the agent counts as it works.
pub struct Counters {
    joins: Family<Labels, Counter>,
    purges: Family<Labels, Counter>,
}

static COUNTERS: LazyLock<Counters> =
    LazyLock::new(|| Counters { joins: Family::default(), purges: Family::default() });

/// A join request this master answered: `accepted` or `refused`.
pub fn count_join(role: &str, outcome: &'static str) {
    let role = if matches!(role, "master" | "worker") { role } else { "unknown" };
    COUNTERS.joins.get_or_create(&vec![("role", role.to_owned()), ("outcome", outcome.to_owned())]).inc();
}

/// A purge this leader `started`, `finished` or `called_off` (the node came back).
pub fn count_purge(outcome: &'static str) {
    COUNTERS.purges.get_or_create(&vec![("outcome", outcome.to_owned())]).inc();
}

/// One scrape's series, registered as they are read.
#[derive(Default)]
pub struct Series {
    reg: Registry,
}

impl Series {
    pub fn gauge(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, f64)>) {
        let family = Family::<Labels, GaugeF>::default();
        for (labels, v) in samples {
            family.get_or_create(&labels).set(v);
        }
        self.reg.register(name, help, family);
    }

    pub fn one(&mut self, name: &str, help: &str, v: f64) {
        let g = GaugeF::default();
        g.set(v);
        self.reg.register(name, help, g);
    }

    /// A count kept elsewhere (in `state.json`, by etcd), exported as the
    /// counter it is. `name` without `_total`: the encoder adds it.
    pub fn counter(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (labels, v) in samples {
            family.get_or_create(&labels).inc_by(v);
        }
        self.reg.register(name, help, family);
    }

    /// A counter of fractional amounts (CPU seconds), without labels.
    pub fn counter_f(&mut self, name: &str, help: &str, v: f64) {
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(v);
        self.reg.register(name, help, c);
    }

    pub fn encode(self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.reg).expect("writing to a String");
        text
    }
}

pub fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

pub fn label(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, v.into())]
}

/// The process's counters, into one scrape.
pub fn counter_series(out: &mut Series) {
    out.reg.register("hakube_joins", "Join requests this master answered, by role and outcome", COUNTERS.joins.clone());
    out.reg.register(
        "hakube_purges",
        "Purges of lost nodes this agent started, finished or called off",
        COUNTERS.purges.clone(),
    );
}

#[cfg(test)]
mod tests;
