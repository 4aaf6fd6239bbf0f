//! An ordinary application on a real cluster: 3 masters and 2 workers in
//! `ha`, the bundle's Kubernetes with kube-proxy on every node, CoreDNS and
//! the local volume provisioner kept by hakube. What an application needs:
//! a Service by name from another node, a NodePort from another host, the
//! API from inside a pod through `kubernetes.default.svc`, fast NXDOMAIN,
//! a volume that outlives its pod, and DNS that survives a lost node.
//! kubectl (the bundle's) is the judge.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Running, ready pods with label `sel`: (name, node).
fn ready_pods(m: &Host, ns: &str, sel: &str) -> Vec<(String, String)> {
    let v = m.kubectl_json(&["get", "pods", "-n", ns, "-l", sel]);
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
            (s(&p["metadata"]["name"]), s(&p["spec"]["nodeName"]))
        })
        .collect()
}

/// `kubectl exec POD -- ARGS` (bounded by the exec'd command itself).
fn exec(m: &Host, pod: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["exec", pod, "--"];
    all.extend_from_slice(args);
    m.kubectl(&all)
}

/// The address `name` resolves to from inside `pod`, by busybox's
/// nslookup (its own DNS client, with the pod's search path), if any.
fn resolve(m: &Host, pod: &str, name: &str) -> Option<String> {
    let out = exec(m, pod, &["nslookup", name]);
    // busybox exits 1 when the AAAA query finds nothing: read the answer.
    let text = stdout(&out);
    let mut lines = text.lines().skip_while(|l| !l.starts_with("Name:"));
    lines.next()?;
    lines.next()?.strip_prefix("Address:").map(|a| a.trim().to_owned())
}

/// The body of `GET path` from `addr:port`, from inside `pod`. busybox's
/// static wget crashes in its glibc name-service lookups, so the request
/// goes through nc.
fn http_get(m: &Host, pod: &str, addr: &str, port: u16, path: &str) -> String {
    let script = format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {addr} {port}");
    let out = exec(m, pod, &["sh", "-c", &script]);
    let text = stdout(&out);
    match text.split_once("\r\n\r\n") {
        Some((_, body)) => body.trim().to_owned(),
        None => format!("no HTTP answer from {addr}:{port}: {text}{}", stderr(&out)),
    }
}

fn pod_manifest(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  serviceAccountName: node-reader
  containers:
  - name: c
    image: {image}
    imagePullPolicy: Never
    command: [sleep, '3600']
    volumeMounts: [{{name: bundle, mountPath: /bundle, readOnly: true}}]
  volumes:
  - name: bundle
    hostPath: {{path: {bundle}, type: Directory}}
",
        image = test_image(),
        bundle = bundle().display(),
    )
}

#[test]
fn an_application_runs_with_services_dns_and_volumes_and_dns_survives_a_lost_node() {
    let c = Cluster::new(3, 2);
    let m1 = c.m1();
    let all: Vec<String> = ["m1", "m2", "m3", "w1", "w2"].map(String::from).to_vec();
    wait_for("all five Nodes to be Ready", Duration::from_secs(300), || ready_nodes(m1) == all);

    // The server is the bundle's Kubernetes.
    let version = m1.kubectl_json(&["version"]);
    let server = version["serverVersion"]["gitVersion"].as_str().unwrap_or("").to_owned();
    let bundled = std::fs::read_to_string(bundle().join("VERSION")).unwrap().trim().to_owned();
    assert_eq!(server, bundled, "{version}");

    // CoreDNS in ha: three replicas, ready, on three distinct nodes.
    wait_for("three CoreDNS replicas ready", Duration::from_secs(240), || {
        ready_pods(m1, "kube-system", "k8s-app=kube-dns").len() == 3
    });
    let dns = ready_pods(m1, "kube-system", "k8s-app=kube-dns");
    let dns_nodes: std::collections::BTreeSet<_> = dns.iter().map(|p| p.1.clone()).collect();
    assert_eq!(dns_nodes.len(), 3, "CoreDNS replicas share a node: {dns:?}");
    let pdb = m1.kubectl_json(&["get", "pdb", "-n", "kube-system", "coredns"]);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{pdb}");

    // The application: a Deployment behind a ClusterIP Service and a
    // NodePort Service, and a client pod on a node that holds none of it.
    let dir = tempfile::tempdir().unwrap();
    let app = write(
        dir.path(),
        "app.yaml",
        &format!(
            "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      nodeSelector: {{kubernetes.io/hostname: w1}}
      # Not root: the container's root filesystem must be readable by
      # others (under the join script's umask 077 it was root's alone).
      securityContext: {{runAsUser: 1000, runAsNonRoot: true}}
      containers:
      - name: web
        image: {image}
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /tmp/www && echo hello-from-web > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www']
        readinessProbe: {{httpGet: {{path: /index.html, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-np}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: node-reader}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: node-reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node-reader}}
subjects: [{{kind: ServiceAccount, name: node-reader, namespace: default}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: system:node-reader}}
rules: [{{apiGroups: [''], resources: [nodes], verbs: [list]}}]
---
{client}",
            image = test_image(),
            client = pod_manifest("client", "w2"),
        ),
    );
    assert_ok(&m1.kubectl(&["apply", "-f", app.to_str().unwrap()]), "apply the application");
    wait_for("two web pods and the client ready", Duration::from_secs(180), || {
        ready_pods(m1, "default", "app=web").len() == 2 && ready_pods(m1, "default", "app=client").len() == 1
    });

    // By name, from a pod on another node, through the ClusterIP.
    let svc = m1.kubectl_json(&["get", "service", "web"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_owned();
    assert_eq!(resolve(m1, "client", "web.default.svc.cluster.local").as_deref(), Some(cluster_ip.as_str()));
    assert_eq!(resolve(m1, "client", "web").as_deref(), Some(cluster_ip.as_str()), "the pod's search path");
    assert_eq!(http_get(m1, "client", &cluster_ip, 80, "/index.html"), "hello-from-web");

    // Through the NodePort of a node that runs none of its pods, from
    // another host.
    let m2 = c.host("m2");
    let w2 = c.host("w2");
    let np = m2.exec("curl", &["-sS", "-m", "5", &format!("http://{}:30080/index.html", w2.addr)]);
    assert_eq!(stdout(&np).trim(), "hello-from-web", "NodePort on w2 from m2: {}", stderr(&np));

    // The API from inside a pod, with its service account's token, by name.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let list = exec(
        m1,
        "client",
        &[
            "sh",
            "-c",
            &format!(
                "/bundle/kubectl --server=https://kubernetes.default.svc --certificate-authority={sa}/ca.crt \
                 --token=\"$(cat {sa}/token)\" --request-timeout=10s get nodes -o name"
            ),
        ],
    );
    let names = stdout(&list);
    for n in &all {
        assert!(names.contains(&format!("node/{n}")), "a pod lists the Nodes: {names}{}", stderr(&list));
    }

    // A name that does not exist is told at once: NXDOMAIN, not a timeout.
    let nx = exec(m1, "client", &["nslookup", "does-not-exist.default.svc.cluster.local"]);
    let text = format!("{}{}", stdout(&nx), stderr(&nx));
    assert!(!nx.status.success() && text.contains("NXDOMAIN"), "{text}");

    // A StatefulSet's volume keeps its data across the pod's deletion.
    let sts = write(
        dir.path(),
        "sts.yaml",
        &format!(
            "apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 1
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: db
        image: {image}
        imagePullPolicy: Never
        command: [sh, -c, 'test -f /data/first || date > /data/first; exec sleep 3600']
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 64Mi}}}}
",
            image = test_image()
        ),
    );
    assert_ok(&m1.kubectl(&["apply", "-f", sts.to_str().unwrap()]), "apply the StatefulSet");
    wait_for("the StatefulSet's pod ready", Duration::from_secs(180), || {
        ready_pods(m1, "default", "app=db").len() == 1
    });
    let pvc = m1.kubectl_json(&["get", "pvc", "data-db-0"]);
    assert_eq!(pvc["status"]["phase"], "Bound", "{pvc}");
    assert_eq!(pvc["spec"]["storageClassName"], "local-path", "the default StorageClass: {pvc}");
    let first = stdout(&exec(m1, "db-0", &["cat", "/data/first"]));
    assert!(!first.trim().is_empty());
    assert_ok(&exec(m1, "db-0", &["sh", "-c", "echo kept > /data/second"]), "write to the volume");
    assert_ok(&m1.kubectl(&["delete", "pod", "db-0", "--wait=true"]), "delete the pod");
    wait_for("the StatefulSet's pod back", Duration::from_secs(180), || ready_pods(m1, "default", "app=db").len() == 1);
    assert_eq!(stdout(&exec(m1, "db-0", &["cat", "/data/first"])), first, "the volume outlived its pod");
    assert_eq!(stdout(&exec(m1, "db-0", &["cat", "/data/second"])).trim(), "kept");

    // hakube's status shows the add-ons ready.
    let status = m1.hakube(&["status"]);
    assert_ok(&status, "status");
    let text = stdout(&status);
    assert!(text.contains("coredns") && text.contains("local-path-provisioner"), "{text}");

    // kube-proxy killed on the client's node: restarted by its agent, and
    // the Service answers meanwhile (its rules stay in the kernel).
    let old = w2.state()["components"]["kube-proxy"]["pid"].as_u64().expect("kube-proxy runs on w2");
    sh("kill", &["-9", &old.to_string()]);
    let during = http_get(m1, "client", &cluster_ip, 80, "/index.html");
    assert_eq!(during, "hello-from-web", "while kube-proxy is down");
    wait_for("w2's kube-proxy restarted and healthy", Duration::from_secs(60), || {
        let s = w2.state();
        s["components"]["kube-proxy"]["pid"].as_u64().is_some_and(|p| p != old)
            && s["components"]["kube-proxy"]["healthy"] == true
    });

    // A CoreDNS node loses power (not the client's): DNS answers again
    // from the replicas left, every time, without waiting for a new one.
    let lost = dns.iter().map(|p| p.1.clone()).find(|n| n != "w2" && n != "m1").expect("a CoreDNS node to lose");
    let h = c.host(&lost);
    c.net.set_link(h, false);
    h.kill_all();
    wait_for("DNS answering ten times in a row without the lost node", Duration::from_secs(180), || {
        (0..10).all(|_| resolve(m1, "client", "web.default.svc.cluster.local").as_deref() == Some(cluster_ip.as_str()))
    });
}
