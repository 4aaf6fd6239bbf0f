//! rancher/local-path-provisioner v0.0.30 as its `deploy/local-path-storage.yaml`
//! installs it, with hakube's images and host directory: the default
//! StorageClass `local-path`, whose volumes are directories on the node
//! that first runs their consumer.
//!
//! Facts of v0.0.30 this relies on (its `main.go`, `provisioner.go`):
//! - the helper pod's image comes from `helperPod.yaml` alone; the
//!   `--helper-image` flag is read but never used, so the image is set in
//!   both places to be the same whichever a later version honours;
//! - `POD_NAMESPACE` names the namespace of the ConfigMap and the helper
//!   pods; `CONFIG_MOUNT_PATH` is where `helperPod.yaml` is re-read every
//!   30 s (`config.json` is re-read from `--config`);
//! - the helper pods run under the `--service-account-name`, by default
//!   `local-path-provisioner-service-account`, the name used here;
//! - it runs without leader election (`LeaderElection(false)`), so two
//!   provisioners must never run at once: one replica, `Recreate`;
//! - it serves no health endpoint (later versions add `HEALTH_PORT`), so
//!   the Deployment has no probes.

use std::path::Path;

use serde_json::{json, Value};

use super::{coredns, object, AddonSpec, Kind, Object};

pub const NAMESPACE: &str = "local-path-storage";
pub const NAME: &str = "local-path-provisioner";
pub const STORAGE_CLASS: &str = "local-path";
pub const PROVISIONER: &str = "rancher.io/local-path";
const SERVICE_ACCOUNT: &str = "local-path-provisioner-service-account";
const ROLE: &str = "local-path-provisioner-role";
const BINDING: &str = "local-path-provisioner-bind";
const CONFIG_MAP: &str = "local-path-config";
/// Where the ConfigMap is mounted in the provisioner's container.
const CONFIG_DIR: &str = "/etc/config/";
const APP_LABEL: (&str, &str) = ("app", NAME);

/// The scripts the helper pod runs with `VOL_DIR` set (upstream's).
const SETUP: &str = "#!/bin/sh\nset -eu\nmkdir -m 0777 -p \"$VOL_DIR\"\n";
const TEARDOWN: &str = "#!/bin/sh\nset -eu\nrm -rf \"$VOL_DIR\"\n";

/// Every node's volumes under one directory (`nodePathMap`'s fallback entry).
fn config_json(dir: &Path) -> String {
    let config = json!({
        "nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [dir.to_string_lossy()]}]
    });
    serde_json::to_string_pretty(&config).expect("a JSON value serializes")
}

/// The helper pod template: the bundle's busybox, which has `sh`, `mkdir`
/// and `rm`. The provisioner adds the node, the volumes, the command and a
/// toleration of every taint.
fn helper_pod_yaml(test_image: &str) -> String {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "helper-pod"},
        "spec": {
            "priorityClassName": "system-node-critical",
            "tolerations": [{"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "helper-pod", "image": test_image, "imagePullPolicy": "IfNotPresent"}]
        }
    });
    serde_norway::to_string(&pod).expect("a JSON value serializes as YAML")
}

/// Where a lone replica may run, and how soon it leaves a lost node.
fn tolerations() -> Value {
    let mut all: Vec<Value> = coredns::control_plane_tolerations()
        .into_iter()
        .map(|t| serde_json::to_value(t).expect("a toleration serializes"))
        .collect();
    // 30 s instead of the default 300 s on a node gone NotReady or
    // unreachable: the only replica is rescheduled within about a minute
    // (k3s-ansible#305).
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        all.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}));
    }
    Value::Array(all)
}

pub(super) fn objects(spec: &AddonSpec) -> Vec<Object> {
    let ns = Some(NAMESPACE);
    let rbac_ref = |kind: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": ROLE});
    let subjects = json!([{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]);
    let namespace = object(&Kind::NAMESPACE, None, NAMESPACE, &[], json!({}));
    let service_account = object(&Kind::SERVICE_ACCOUNT, ns, SERVICE_ACCOUNT, &[], json!({}));
    // Its helper pods, in its own namespace.
    let role = object(
        &Kind::ROLE,
        ns,
        ROLE,
        &[],
        json!({"rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]}
        ]}),
    );
    let role_binding =
        object(&Kind::ROLE_BINDING, ns, BINDING, &[], json!({"roleRef": rbac_ref("Role"), "subjects": subjects}));
    let cluster_role = object(
        &Kind::CLUSTER_ROLE,
        None,
        ROLE,
        &[],
        json!({"rules": [
            {"apiGroups": [""], "resources": ["nodes", "persistentvolumeclaims", "configmaps", "pods", "pods/log"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["persistentvolumes"],
             "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list", "watch"]}
        ]}),
    );
    let cluster_binding = object(
        &Kind::CLUSTER_ROLE_BINDING,
        None,
        BINDING,
        &[],
        json!({"roleRef": rbac_ref("ClusterRole"), "subjects": subjects}),
    );
    let config = object(
        &Kind::CONFIG_MAP,
        ns,
        CONFIG_MAP,
        &[],
        json!({"data": {
            "config.json": config_json(&spec.local_path_dir),
            "setup": SETUP,
            "teardown": TEARDOWN,
            "helperPod.yaml": helper_pod_yaml(&spec.images.test)
        }}),
    );
    let config_file = format!("{CONFIG_DIR}config.json");
    let deployment = object(
        &Kind::DEPLOYMENT,
        ns,
        NAME,
        &[APP_LABEL],
        json!({"spec": {
            "replicas": 1,
            // Never two at once: v0.0.30 has no leader election.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {APP_LABEL.0: APP_LABEL.1}},
            "template": {
                "metadata": {"labels": {APP_LABEL.0: APP_LABEL.1}},
                "spec": {
                    "serviceAccountName": SERVICE_ACCOUNT,
                    // Cluster-wide, not per node: system-node-critical is for
                    // what a node needs to run pods at all (its helper pods,
                    // which run on the volume's node, have it, as upstream).
                    // Above ordinary workloads, so that volumes are still
                    // provisioned on a full cluster.
                    "priorityClassName": "system-cluster-critical",
                    "tolerations": tolerations(),
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "containers": [{
                        "name": NAME,
                        "image": spec.images.local_path_provisioner,
                        "imagePullPolicy": "IfNotPresent",
                        // The image's entrypoint is the provisioner binary.
                        "args": ["--debug", "start", "--config", config_file,
                                 "--helper-image", spec.images.test],
                        "env": [
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                            {"name": "CONFIG_MOUNT_PATH", "value": CONFIG_DIR}
                        ],
                        "volumeMounts": [{"name": "config-volume", "mountPath": CONFIG_DIR}]
                    }],
                    "volumes": [{"name": "config-volume", "configMap": {"name": CONFIG_MAP}}]
                }
            }
        }}),
    );
    let storage_class = object(
        &Kind::STORAGE_CLASS,
        None,
        STORAGE_CLASS,
        &[],
        json!({
            "metadata": {"annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER,
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete"
        }),
    );
    vec![
        namespace,
        service_account,
        role,
        role_binding,
        cluster_role,
        cluster_binding,
        config,
        deployment,
        storage_class,
    ]
}
