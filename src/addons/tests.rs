use super::*;
use crate::kube::objects::{Condition, NodeSpec, NodeStatus, ObjectMeta, Taint};

fn images() -> AddonImages {
    AddonImages {
        coredns: "hakube.local/coredns:v1.14.7".into(),
        local_path_provisioner: "hakube.local/local-path-provisioner:v0.0.30".into(),
        test: "hakube.local/busybox:1.36.1".into(),
    }
}

fn spec(ha: bool, schedulable: usize) -> AddonSpec {
    let c = crate::config::tests::test_config(if ha { "cluster: {ha: true}" } else { "{}" });
    AddonSpec::from_config(&c, schedulable, images(), PathBuf::from(DEFAULT_LOCAL_PATH_DIR))
}

fn render(objs: &[Object]) -> String {
    objs.iter().map(|(path, obj)| format!("# {path}\n{}\n", serde_json::to_string_pretty(obj).unwrap())).collect()
}

fn find<'a>(objs: &'a [Object], kind: &str, name: &str) -> &'a Value {
    &objs
        .iter()
        .find(|(_, o)| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .1
}

#[test]
fn ha_objects_match_golden() {
    crate::golden::check("addons-ha.json", &render(&objects(&spec(true, 3))));
}

#[test]
fn single_objects_match_golden() {
    crate::golden::check("addons-single.json", &render(&objects(&spec(false, 1))));
}

#[test]
fn the_spec_takes_kubeadms_dns_address() {
    let s = spec(true, 3);
    assert_eq!(s.dns_ip.to_string(), "10.96.0.10");
    assert_eq!(s.dns_domain, "cluster.local");
    assert!(s.ha);
    s.validate().unwrap();
}

#[test]
fn coredns_replicas_follow_the_mode_and_the_nodes() {
    let table = [
        // (ha, schedulable, replicas)
        (false, 0, 1),
        (false, 1, 1),
        (false, 2, 2),
        (false, 3, 2),
        (false, 50, 2),
        (true, 0, 1),
        (true, 1, 1),
        (true, 2, 2),
        (true, 3, 3),
        (true, 4, 3),
        (true, 50, 3),
    ];
    for (ha, schedulable, want) in table {
        assert_eq!(coredns_replicas(ha, schedulable), want, "ha={ha} schedulable={schedulable}");
    }
}

fn node(name: &str, ready: Option<&str>, unschedulable: bool, taints: &[&str]) -> Node {
    Node {
        metadata: ObjectMeta { name: name.into(), ..Default::default() },
        spec: NodeSpec {
            pod_cidr: None,
            taints: taints.iter().map(|t| Taint::parse(t).unwrap()).collect(),
            unschedulable,
        },
        status: NodeStatus {
            addresses: Vec::new(),
            conditions: ready
                .map(|s| Condition { kind: "Ready".into(), status: s.into(), ..Default::default() })
                .into_iter()
                .collect(),
        },
    }
}

#[test]
fn schedulable_nodes_are_ready_uncordoned_and_untainted_for_coredns() {
    let cp = "node-role.kubernetes.io/control-plane:NoSchedule";
    let master = "node-role.kubernetes.io/master:NoSchedule";
    let table: [(&str, Vec<Node>, usize); 10] = [
        ("none", vec![], 0),
        ("a ready worker", vec![node("w1", Some("True"), false, &[])], 1),
        ("a not-ready node", vec![node("w1", Some("False"), false, &[])], 0),
        ("a node with unknown readiness", vec![node("w1", Some("Unknown"), false, &[])], 0),
        ("a node with no Ready condition yet", vec![node("w1", None, false, &[])], 0),
        ("a cordoned node", vec![node("w1", Some("True"), true, &[])], 0),
        ("tainted masters (CoreDNS tolerates them)", vec![node("m1", Some("True"), false, &[cp, master])], 1),
        (
            "taints CoreDNS does not tolerate",
            vec![
                node("w1", Some("True"), false, &["dedicated=db:NoSchedule"]),
                node("w2", Some("True"), false, &["node.kubernetes.io/not-ready:NoExecute"]),
                node("w3", Some("True"), false, &["node-role.kubernetes.io/control-plane:NoExecute"]),
            ],
            0,
        ),
        (
            "soft and tolerated taints",
            vec![
                node("w1", Some("True"), false, &["dedicated=db:PreferNoSchedule"]),
                node("w2", Some("True"), false, &["CriticalAddonsOnly=true:NoExecute"]),
            ],
            2,
        ),
        (
            "a mixed cluster",
            vec![
                node("m1", Some("True"), false, &[cp, master]),
                node("m2", Some("True"), true, &[cp]),
                node("m3", Some("False"), false, &[cp]),
                node("w1", Some("True"), false, &[]),
            ],
            2,
        ),
    ];
    for (what, nodes, want) in table {
        assert_eq!(count_schedulable(&nodes), want, "{what}");
    }
}

#[test]
fn the_corefile_is_kubeadms_for_the_domain() {
    let want = "\
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
";
    assert_eq!(coredns::corefile("cluster.local"), want);
    let other = coredns::corefile("k8s.example.test");
    assert!(other.contains("    kubernetes k8s.example.test in-addr.arpa ip6.arpa {\n"));
    assert!(other.contains("       disable success k8s.example.test\n"));
    assert!(other.contains("    forward . /etc/resolv.conf {\n"));
    assert!(!other.contains("cluster.local"));
}

#[test]
fn a_strange_domain_stays_one_token() {
    let text = coredns::corefile("evil\n}\nforward . 8.8.8.8 \"x");
    assert_eq!(text.lines().count(), coredns::corefile("cluster.local").lines().count() + 6);
    assert!(text.contains("kubernetes \"evil\n}\nforward . 8.8.8.8 \\\"x\" in-addr.arpa"));
    // apply refuses it before anything is rendered.
    let mut s = spec(false, 1);
    s.dns_domain = "evil\n}".into();
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("cluster.dnsDomain") && e.contains("evil"), "{e}");
}

#[test]
fn the_spec_validates_domain_and_directory() {
    for good in ["cluster.local", "k8s", "a-b.example.test"] {
        let mut s = spec(false, 1);
        s.dns_domain = good.into();
        s.validate().unwrap();
    }
    for bad in ["", "cluster.local.", "-a.local", "a..b", "a_b.local", "a b"] {
        let mut s = spec(false, 1);
        s.dns_domain = bad.into();
        assert!(s.validate().is_err(), "{bad:?}");
    }
    for bad in ["relative/dir", "/", ""] {
        let mut s = spec(false, 1);
        s.local_path_dir = PathBuf::from(bad);
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("local-path directory"), "{e}");
    }
}

#[test]
fn every_object_is_labelled_and_at_its_own_path() {
    for s in [spec(true, 3), spec(false, 1), spec(true, 0)] {
        for (path, obj) in objects(&s) {
            let meta = &obj["metadata"];
            let name = meta["name"].as_str().unwrap();
            if name == "kube-system" {
                // The cluster's namespace: hakube only labels it.
                let (key, value) = crate::addons::WEBHOOK_EXCLUSION;
                assert_eq!(meta["labels"], serde_json::json!({key: value}), "{path}");
                continue;
            }
            assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "hakube", "{path}");
            assert!(path.ends_with(&format!("/{name}")), "{path} does not end with {name}");
            match meta["namespace"].as_str() {
                Some(ns) => assert!(path.contains(&format!("/namespaces/{ns}/")), "{path}"),
                None => assert!(!path.contains("/namespaces/") || obj["kind"] == "Namespace", "{path}"),
            }
            let api_version = obj["apiVersion"].as_str().unwrap();
            let prefix = if api_version == "v1" { "/api/v1/".to_owned() } else { format!("/apis/{api_version}/") };
            assert!(path.starts_with(&prefix), "{path} is not under {prefix}");
        }
    }
}

#[test]
fn what_is_referred_to_comes_first() {
    let objs = objects(&spec(true, 3));
    let at = |kind: &str| objs.iter().position(|(_, o)| o["kind"] == kind).unwrap();
    let last = |kind: &str| objs.iter().rposition(|(_, o)| o["kind"] == kind).unwrap();
    assert_eq!(at("Namespace"), 0);
    for early in ["ServiceAccount", "ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding", "ConfigMap"] {
        for late in ["Deployment", "Service", "PodDisruptionBudget", "StorageClass"] {
            assert!(last(early) < at(late), "{early} after {late}");
        }
    }
    let kinds: Vec<&str> = objs.iter().map(|(_, o)| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 17, "{kinds:?}");
}

fn coredns_pod_spec(objs: &[Object]) -> &Value {
    &find(objs, "Deployment", "coredns")["spec"]["template"]["spec"]
}

#[test]
fn ha_spreads_coredns_over_nodes_and_budgets_its_disruptions() {
    let objs = objects(&spec(true, 3));
    let anti = &coredns_pod_spec(&objs)["affinity"]["podAntiAffinity"];
    let required = anti["requiredDuringSchedulingIgnoredDuringExecution"].as_array().unwrap();
    assert_eq!(required.len(), 1);
    assert_eq!(required[0]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(required[0]["labelSelector"]["matchExpressions"][0]["values"][0], "kube-dns");
    let preferred = &anti["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        (preferred["weight"].as_u64(), &preferred["podAffinityTerm"]["topologyKey"]),
        (Some(100), &json!("topology.kubernetes.io/zone"))
    );
    let pdb = find(&objs, "PodDisruptionBudget", "coredns");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"]["k8s-app"], "kube-dns");
    assert_eq!(find(&objs, "Deployment", "coredns")["spec"]["replicas"], 3);

    let single = objects(&spec(false, 3));
    let anti = &coredns_pod_spec(&single)["affinity"]["podAntiAffinity"];
    assert!(anti.get("requiredDuringSchedulingIgnoredDuringExecution").is_none());
    assert_eq!(
        anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(find(&single, "Deployment", "coredns")["spec"]["replicas"], 2);
}

#[test]
fn coredns_serves_the_dns_address_with_the_bundles_image() {
    let objs = objects(&spec(false, 1));
    let service = find(&objs, "Service", "kube-dns");
    assert_eq!(service["spec"]["clusterIP"], "10.96.0.10");
    let container = &coredns_pod_spec(&objs)["containers"][0];
    assert_eq!(container["image"], "hakube.local/coredns:v1.14.7");
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(coredns_pod_spec(&objs)["dnsPolicy"], "Default");
    let corefile = find(&objs, "ConfigMap", "coredns")["data"]["Corefile"].as_str().unwrap();
    assert_eq!(corefile, coredns::corefile("cluster.local"));
}

#[test]
fn local_path_uses_the_host_directory_and_the_test_image() {
    let mut s = spec(false, 1);
    s.local_path_dir = PathBuf::from("/srv/hosts/m1/var/lib/hakube/local-path");
    let objs = objects(&s);
    let data = &find(&objs, "ConfigMap", "local-path-config")["data"];
    let config: Value = serde_json::from_str(data["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        config,
        json!({"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES",
                                "paths": ["/srv/hosts/m1/var/lib/hakube/local-path"]}]})
    );
    let helper: Value = serde_norway::from_str(data["helperPod.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(helper["spec"]["containers"][0]["image"], "hakube.local/busybox:1.36.1");
    assert_eq!(helper["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(helper["spec"]["priorityClassName"], "system-node-critical");
    assert!(data["setup"].as_str().unwrap().contains("mkdir -m 0777 -p \"$VOL_DIR\""));
    assert!(data["teardown"].as_str().unwrap().contains("rm -rf \"$VOL_DIR\""));
    let container = &find(&objs, "Deployment", "local-path-provisioner")["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(
        args,
        ["--debug", "start", "--config", "/etc/config/config.json", "--helper-image", "hakube.local/busybox:1.36.1"]
    );
    let class = find(&objs, "StorageClass", "local-path");
    assert_eq!(class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"], "true");
    assert_eq!(class["volumeBindingMode"], "WaitForFirstConsumer");
}

#[test]
fn ha_short_of_three_nodes_warns() {
    assert_eq!(warnings(&spec(true, 3)), Vec::<String>::new());
    assert_eq!(warnings(&spec(false, 1)), Vec::<String>::new());
    let w = warnings(&spec(true, 2));
    assert_eq!(w.len(), 1);
    assert!(w[0].starts_with("CoreDNS runs 2 replicas on 2 schedulable nodes; HA wants 3"), "{}", w[0]);
    assert!(warnings(&spec(true, 1))[0].starts_with("CoreDNS runs 1 replica on 1 schedulable node;"));
    assert!(warnings(&spec(true, 0))[0].starts_with("CoreDNS runs 1 replica on no schedulable node yet;"));
}

#[test]
fn images_from_bundle_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("coredns-image"), "hakube.local/coredns:v1.14.7\n").unwrap();
    std::fs::write(dir.path().join("test-image"), "hakube.local/busybox:1.36.1\n").unwrap();
    let e = images_from_bundle(dir.path()).unwrap_err().to_string();
    assert!(e.contains("local-path-provisioner-image"), "{e}");
    assert!(e.contains(&dir.path().display().to_string()), "{e}");

    std::fs::write(dir.path().join("local-path-provisioner-image"), "two words\n").unwrap();
    let e = images_from_bundle(dir.path()).unwrap_err().to_string();
    assert!(e.contains("local-path-provisioner-image") && e.contains("not one image reference"), "{e}");

    std::fs::write(dir.path().join("local-path-provisioner-image"), "hakube.local/local-path-provisioner:v0.0.30\n")
        .unwrap();
    assert_eq!(images_from_bundle(dir.path()).unwrap(), images());
}

#[test]
fn status_reads_ready_against_desired() {
    let dep = |replicas: Option<u32>, ready: u32| {
        Ok(Some(Deployment {
            spec: objects::DeploymentSpec { replicas },
            status: objects::DeploymentStatus { ready_replicas: ready },
            ..Default::default()
        }))
    };
    let s = AddonStatus::from_read("coredns", "kube-system", dep(Some(2), 2));
    assert_eq!((s.ready, s.desired, s.message.as_str(), s.is_ready()), (2, 2, "ready", true));
    let s = AddonStatus::from_read("coredns", "kube-system", dep(Some(3), 1));
    assert_eq!((s.message.as_str(), s.is_ready()), ("1 of 3 replicas ready", false));
    let s = AddonStatus::from_read("local-path-provisioner", "local-path-storage", dep(None, 1));
    assert_eq!((s.desired, s.is_ready()), (1, true));
    let s = AddonStatus::from_read("coredns", "kube-system", Ok(None));
    assert_eq!((s.message.as_str(), s.is_ready()), ("not applied yet", false));
    let err = KubeError::Unreachable {
        what: "Deployment kube-system/coredns".into(),
        server: "10.0.0.11:6443".into(),
        message: "connection refused".into(),
    };
    let s = AddonStatus::from_read("coredns", "kube-system", Err(err));
    assert!(s.message.contains("10.0.0.11:6443") && !s.is_ready(), "{}", s.message);
}
