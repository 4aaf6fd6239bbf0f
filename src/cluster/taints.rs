//! Control-plane roles on every master's Node, cluster-wide: the role labels
//! always, the control-plane taints while `taint-control-plane` is set (the
//! current key and the legacy `master` one). Other taints are never touched.
//! The patch carries the Node's resourceVersion, so a change made meanwhile
//! (kubelet, the node lifecycle controller) is a conflict, read again next
//! round, not overwritten: taints are one list, replaced whole.

use serde_json::{json, Value};

use crate::kube::client::{KubeClient, KubeError, Patch};
use crate::kube::components::CONTROL_PLANE_TAINTS;
use crate::kube::objects::{self, Node, Taint};

/// The labels a master's Node carries: the current role label and the
/// legacy one (kubelet may not set these on itself: NodeRestriction).
pub const CONTROL_PLANE_LABELS: [&str; 2] = ["node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"];

fn control_plane_taints() -> Vec<Taint> {
    CONTROL_PLANE_TAINTS.iter().map(|t| Taint::parse(t).expect("well-formed taints")).collect()
}

/// The patch that gives a master's Node its role (pure), or `None` when it
/// has it already.
pub fn plan(node: &Node, tainted: bool) -> Option<Value> {
    let ours = control_plane_taints();
    let mut taints: Vec<Taint> =
        node.spec.taints.iter().filter(|t| !ours.iter().any(|o| o.matches(t))).cloned().collect();
    if tainted {
        // Keep an existing one as it is (its timeAdded included).
        for o in &ours {
            let t = node.spec.taints.iter().find(|t| o.matches(t)).cloned().unwrap_or_else(|| o.clone());
            taints.push(t);
        }
    }
    let missing_labels: Vec<&str> =
        CONTROL_PLANE_LABELS.iter().copied().filter(|l| !node.metadata.labels.contains_key(*l)).collect();
    let same_taints = taints.len() == node.spec.taints.len() && taints.iter().all(|t| node.spec.taints.contains(t));
    if same_taints && missing_labels.is_empty() {
        return None;
    }
    let labels: serde_json::Map<String, Value> = missing_labels.iter().map(|l| (l.to_string(), json!(""))).collect();
    Some(json!({
        "metadata": {"resourceVersion": node.metadata.resource_version, "labels": labels},
        // An empty list is sent as null: the API server drops the field.
        "spec": {"taints": if taints.is_empty() { Value::Null } else { json!(taints) }},
    }))
}

/// What happened to one master's Node.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Current,
    Patched,
    /// Not registered yet: its kubelet has not come up; next round.
    NotRegistered,
    /// Changed meanwhile: next round reads it again.
    Conflict,
}

pub async fn apply(client: &KubeClient, node_name: &str, tainted: bool) -> Result<Outcome, KubeError> {
    let what = format!("node {node_name}");
    let path = objects::node_path(node_name);
    let Some(node) = client.get_opt::<Node>(&what, &path).await? else { return Ok(Outcome::NotRegistered) };
    let Some(patch) = plan(&node, tainted) else { return Ok(Outcome::Current) };
    match client.patch::<Value>(&what, &path, Patch::Strategic, &patch).await {
        Ok(_) => Ok(Outcome::Patched),
        Err(e) if e.is_conflict() => Ok(Outcome::Conflict),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(taints: &[&str], labels: &[&str]) -> Node {
        let taints: Vec<Value> =
            taints.iter().map(|t| serde_json::to_value(Taint::parse(t).unwrap()).unwrap()).collect();
        let labels: serde_json::Map<String, Value> = labels.iter().map(|l| (l.to_string(), json!(""))).collect();
        serde_json::from_value(json!({
            "metadata": {"name": "m2", "resourceVersion": "77", "labels": labels},
            "spec": {"taints": taints}
        }))
        .unwrap()
    }

    #[test]
    fn tainting_adds_both_keys_and_keeps_every_other_taint() {
        let n = node(&["example.com/dedicated=db:NoSchedule"], &CONTROL_PLANE_LABELS);
        let p = plan(&n, true).unwrap();
        assert_eq!(p["metadata"]["resourceVersion"], "77", "the patch is fenced by the version read");
        let keys: Vec<_> = p["spec"]["taints"].as_array().unwrap().iter().map(|t| t["key"].as_str().unwrap()).collect();
        assert_eq!(
            keys,
            ["example.com/dedicated", "node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"]
        );
        assert_eq!(p["spec"]["taints"][0]["value"], "db");
    }

    #[test]
    fn untainting_removes_both_and_only_them() {
        let n = node(
            &[
                "node-role.kubernetes.io/control-plane:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute",
                "node-role.kubernetes.io/master:NoSchedule",
            ],
            &CONTROL_PLANE_LABELS,
        );
        let p = plan(&n, false).unwrap();
        let keys: Vec<_> = p["spec"]["taints"].as_array().unwrap().iter().map(|t| t["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["node.kubernetes.io/unreachable"]);
        let only_ours = node(&["node-role.kubernetes.io/control-plane:NoSchedule"], &CONTROL_PLANE_LABELS);
        assert_eq!(plan(&only_ours, false).unwrap()["spec"]["taints"], Value::Null);
    }

    #[test]
    fn a_master_with_its_role_needs_nothing_and_labels_come_regardless() {
        let done = node(
            &["node-role.kubernetes.io/control-plane:NoSchedule", "node-role.kubernetes.io/master:NoSchedule"],
            &CONTROL_PLANE_LABELS,
        );
        assert_eq!(plan(&done, true), None);
        assert_eq!(plan(&node(&[], &CONTROL_PLANE_LABELS), false), None);
        let unlabelled = plan(&node(&[], &[]), false).unwrap();
        assert_eq!(unlabelled["metadata"]["labels"]["node-role.kubernetes.io/control-plane"], "");
        assert_eq!(unlabelled["metadata"]["labels"]["node-role.kubernetes.io/master"], "");
    }
}
