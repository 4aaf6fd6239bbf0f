//! Events hakube records about a Node, for `kubectl get events` and
//! anything that watches them.

use serde_json::json;

use super::client::{KubeClient, KubeError};

/// Kubernetes' MicroTime: RFC 3339 with microseconds, in UTC.
pub fn micro_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{}T{:02}:{:02}:{:02}.{:06}Z", t.date(), t.hour(), t.minute(), t.second(), t.microsecond())
}

/// One Event about a node.
pub struct NodeEvent<'a> {
    pub node: &'a str,
    /// CamelCase, as Kubernetes' own reasons are.
    pub reason: &'a str,
    pub message: String,
    /// Whether something went wrong ("Warning") or not ("Normal").
    pub warning: bool,
    /// The agent that saw it (its node's name).
    pub reporter: &'a str,
    /// Makes the Event's name unique among this node's Events of this
    /// reason (a start time, say).
    pub unique: u64,
}

impl NodeEvent<'_> {
    /// The Event's name: `NODE.hakube-REASON.UNIQUE`, lowercase.
    pub fn name(&self) -> String {
        format!("{}.hakube-{}.{}", self.node, self.reason.to_ascii_lowercase(), self.unique)
    }

    /// The Event as the API server takes it, stamped `now`.
    pub fn body(&self, now: time::OffsetDateTime) -> serde_json::Value {
        let micro = micro_time(now);
        let seconds = micro.split('.').next().map(|s| format!("{s}Z"));
        json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": self.name(), "namespace": "default"},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": self.node},
            "reason": self.reason,
            "message": self.message,
            "type": if self.warning { "Warning" } else { "Normal" },
            "source": {"component": "hakube"},
            "firstTimestamp": seconds,
            "lastTimestamp": seconds,
            "count": 1,
            "reportingComponent": "hakube",
            "reportingInstance": self.reporter,
        })
    }

    /// Records the Event.
    pub async fn record(&self, kube: &KubeClient) -> Result<(), KubeError> {
        let name = self.name();
        let body = self.body(time::OffsetDateTime::now_utc());
        kube.create::<serde_json::Value>(&format!("event {name}"), "/api/v1/namespaces/default/events", &body)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_is_what_the_api_server_parses() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        assert_eq!(micro_time(t), "2026-11-18T11:06:40.123456Z");
    }

    #[test]
    fn an_event_names_its_node_reason_and_reporter() {
        let e = NodeEvent {
            node: "m2",
            reason: "VirtualIPTaken",
            message: "m2 holds 10.0.0.100".into(),
            warning: false,
            reporter: "m2",
            unique: 1_795_000_000,
        };
        assert_eq!(e.name(), "m2.hakube-virtualiptaken.1795000000");
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        let b = e.body(t);
        assert_eq!(b["involvedObject"]["name"], "m2");
        assert_eq!(b["type"], "Normal");
        assert_eq!(b["firstTimestamp"], "2026-11-18T11:06:40Z");
        assert_eq!(b["reportingInstance"], "m2");
    }
}
