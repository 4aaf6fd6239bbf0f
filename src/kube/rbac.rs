//! The cluster controller's identity and what it may do, and what the
//! nodes' agents may read for the pod network: the least it
//! needs (the production checklist), applied at bootstrap by the elected
//! leader with the admin identity, then used by the controller itself.
//! Rendered here (pure) and golden-tested.

use serde_json::{json, Value};

/// The controller's user name, as its certificate names it.
pub use crate::pki::CONTROLLER_USER;
pub const CLUSTER_ROLE: &str = "hakube:controller";
/// What every node's agent may read for the pod network: all the Nodes.
pub const NODE_NETWORK_ROLE: &str = "hakube:node-network";
/// Lets every kubelet's renewal of its own client certificate be approved.
pub const NODE_CERT_ROTATION: &str = "hakube:node-certificate-rotation";
/// The Lease that mirrors the elected leader, in kube-system.
pub const LEADER_LEASE: &str = "hakube-controller";

/// The objects to apply, with their API paths (server-side apply).
pub fn objects() -> Vec<(String, Value)> {
    let rbac = "rbac.authorization.k8s.io/v1";
    let cluster_role = json!({
        "apiVersion": rbac,
        "kind": "ClusterRole",
        "metadata": {"name": CLUSTER_ROLE, "labels": {"app.kubernetes.io/managed-by": "hakube"}},
        "rules": [
            // Taints and labels on masters; lost nodes read and deleted.
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch", "delete"]},
            // A lost node's pods force-deleted so that they are recreated elsewhere.
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]},
            // One Event per purge.
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            // Nodes' Leases (kube-node-lease), to tell a lost node.
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch"]}
        ]
    });
    let cluster_binding = json!({
        "apiVersion": rbac,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": CLUSTER_ROLE, "labels": {"app.kubernetes.io/managed-by": "hakube"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_USER}]
    });
    // Its own Lease only (create cannot be limited to a name).
    let lease_role = json!({
        "apiVersion": rbac,
        "kind": "Role",
        "metadata": {"name": "hakube:controller-lease", "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/managed-by": "hakube"}},
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [LEADER_LEASE],
             "verbs": ["get", "update", "patch"]}
        ]
    });
    let lease_binding = json!({
        "apiVersion": rbac,
        "kind": "RoleBinding",
        "metadata": {"name": "hakube:controller-lease", "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/managed-by": "hakube"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hakube:controller-lease"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_USER}]
    });
    // Each node's agent routes to every other node's pods (host-gw), so it
    // reads every Node's podCIDR and address with its kubelet's identity.
    // Since 1.32 the Node authorizer lets a node read only its own Node
    // (AuthorizeNodeWithSelectors); RBAC adds reading them all back, for
    // the nodes group and nothing else.
    let node_network = json!({
        "apiVersion": rbac,
        "kind": "ClusterRole",
        "metadata": {"name": NODE_NETWORK_ROLE, "labels": {"app.kubernetes.io/managed-by": "hakube"}},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    });
    let node_network_binding = json!({
        "apiVersion": rbac,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": NODE_NETWORK_ROLE, "labels": {"app.kubernetes.io/managed-by": "hakube"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_NETWORK_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]
    });
    // kubelets renew their client certificates by CSR (rotateCertificates);
    // the csrapproving controller approves a node's renewal of its own
    // certificate only when the node may create `selfnodeclient` requests:
    // the binding kubeadm names node-autoapprove-certificate-rotation.
    let rotation_binding = json!({
        "apiVersion": rbac,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": NODE_CERT_ROTATION, "labels": {"app.kubernetes.io/managed-by": "hakube"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]
    });
    let base = "/apis/rbac.authorization.k8s.io/v1";
    vec![
        (format!("{base}/clusterroles/{NODE_NETWORK_ROLE}"), node_network),
        (format!("{base}/clusterrolebindings/{NODE_NETWORK_ROLE}"), node_network_binding),
        (format!("{base}/clusterrolebindings/{NODE_CERT_ROTATION}"), rotation_binding),
        (format!("{base}/clusterroles/{CLUSTER_ROLE}"), cluster_role),
        (format!("{base}/clusterrolebindings/{CLUSTER_ROLE}"), cluster_binding),
        (format!("{base}/namespaces/kube-system/roles/hakube:controller-lease"), lease_role),
        (format!("{base}/namespaces/kube-system/rolebindings/hakube:controller-lease"), lease_binding),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_rights_match_golden() {
        let text: String = objects()
            .iter()
            .map(|(path, obj)| format!("# {path}\n{}\n", serde_json::to_string_pretty(obj).unwrap()))
            .collect();
        crate::golden::check("rbac-controller.json", &text);
    }
}
