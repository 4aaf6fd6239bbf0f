use super::*;
use crate::config::tests::test_config as config;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[test]
fn apiserver_sans_cover_every_client_name() {
    let c = config("cluster: {loadBalancerAddress: 'lb.example.test:6443', certSans: [api.example.test, 192.0.2.7]}");
    let got: Vec<String> = spec::apiserver_sans(&c).iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "DNS:api.example.test",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
            "DNS:lb.example.test",
            "DNS:m1",
            "IP:10.0.0.11",
            "IP:10.96.0.1",
            "IP:127.0.0.1",
            "IP:192.0.2.7",
        ]
    );
}

#[test]
fn the_plan_has_kubeadms_file_set() {
    let c = config("{}");
    let names: Vec<_> = cluster_cert_specs(&c).into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "ca",
            "front-proxy-ca",
            "etcd/ca",
            "apiserver",
            "apiserver-kubelet-client",
            "front-proxy-client",
            "etcd/server",
            "etcd/peer",
            "etcd/healthcheck-client",
            "apiserver-etcd-client"
        ]
    );
}

fn issued(spec: &CertSpec, alg: KeyAlgorithm) -> (Ca, Key, Observed) {
    let ca_spec = cluster_cert_specs(&config("{}")).remove(0);
    let ca = Ca::create(&ca_spec, alg, now()).unwrap();
    let key = Key::generate(alg).unwrap();
    let pem = ca.issue(spec, &key, now()).unwrap();
    let observed = observe(pem.as_bytes(), Some(&ca.spki())).unwrap();
    (ca, key, observed)
}

#[test]
fn decide_keeps_a_matching_leaf_and_names_each_reason_to_reissue() {
    let c = config("{}");
    let spec = cluster_cert_specs(&c).into_iter().find(|s| s.name == "apiserver").unwrap();
    let (_ca, key, observed) = issued(&spec, KeyAlgorithm::EcdsaP256);
    assert!(observed.signed_by_issuer.unwrap());
    assert_eq!(decide_leaf(&spec, Some(&observed), Some(&key), KeyAlgorithm::EcdsaP256, now()), Decision::Keep);

    let lb = config("cluster: {loadBalancerAddress: 'lb2.example.test'}");
    let spec2 = cluster_cert_specs(&lb).into_iter().find(|s| s.name == "apiserver").unwrap();
    match decide_leaf(&spec2, Some(&observed), Some(&key), KeyAlgorithm::EcdsaP256, now()) {
        Decision::Reissue { reason, new_key: false } => assert_eq!(reason, "SANs changed: +DNS:lb2.example.test"),
        other => panic!("{other:?}"),
    }

    let other_key = Key::generate(KeyAlgorithm::EcdsaP256).unwrap();
    assert!(matches!(
        decide_leaf(&spec, Some(&observed), Some(&other_key), KeyAlgorithm::EcdsaP256, now()),
        Decision::Reissue { new_key: false, .. }
    ));
    assert!(matches!(
        decide_leaf(&spec, Some(&observed), Some(&key), KeyAlgorithm::Rsa2048, now()),
        Decision::Reissue { new_key: true, .. }
    ));
    let later = now() + LEAF_VALIDITY - Duration::days(10);
    assert!(matches!(
        decide_leaf(&spec, Some(&observed), Some(&key), KeyAlgorithm::EcdsaP256, later),
        Decision::Reissue { reason, .. } if reason.starts_with("expires")
    ));
    let foreign = Observed { signed_by_issuer: Some(false), ..observed.clone() };
    assert!(matches!(
        decide_leaf(&spec, Some(&foreign), Some(&key), KeyAlgorithm::EcdsaP256, now()),
        Decision::Reissue { reason, .. } if reason.contains("not signed")
    ));
    assert_eq!(decide_leaf(&spec, None, None, KeyAlgorithm::EcdsaP256, now()), Decision::Create);
}

#[test]
fn rsa_keys_sign_and_are_recognised() {
    let spec = kubeconfig_cert_spec(&config("{}"), "admin");
    let (ca, key, observed) = issued(&spec, KeyAlgorithm::Rsa2048);
    assert_eq!(ca.key.algorithm(), Some(KeyAlgorithm::Rsa2048));
    assert_eq!(key.algorithm(), Some(KeyAlgorithm::Rsa2048));
    assert_eq!(observed.organization.as_deref(), Some("system:masters"));
    assert_eq!(observed.signed_by_issuer, Some(true));
}

#[test]
fn ca_hash_is_sha256_of_the_spki() {
    let ca_spec = cluster_cert_specs(&config("{}")).remove(0);
    let ca = Ca::create(&ca_spec, KeyAlgorithm::EcdsaP256, now()).unwrap();
    let h = ca_hash(ca.cert_pem.as_bytes()).unwrap();
    let want = hex(ring::digest::digest(&ring::digest::SHA256, &ca.spki()).as_ref());
    assert_eq!(h, format!("sha256:{want}"));
}

#[test]
fn plan_refuses_a_ca_without_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::new(dir.path());
    let c = config("{}");
    let plan1 = plan(&paths, &c, now()).unwrap();
    crate::host::fs::apply_files(&plan1.files).unwrap();
    std::fs::remove_file(paths.pki("etcd/ca.key")).unwrap();
    let err = plan(&paths, &c, now()).unwrap_err().to_string();
    assert!(err.contains("etcd/ca.key is missing"), "{err}");
}

#[test]
fn plan_is_idempotent_and_reissues_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::new(dir.path());
    let c = config("{}");
    let first = plan(&paths, &c, now()).unwrap();
    assert!(first.decisions.iter().all(|(_, d)| *d == Decision::Create));
    crate::host::fs::apply_files(&first.files).unwrap();

    let second = plan(&paths, &c, now()).unwrap();
    assert_eq!(second.changed().count(), 0, "{:?}", second.decisions);

    let lb = config("cluster: {loadBalancerAddress: 'lb.example.test:6443'}");
    let third = plan(&paths, &lb, now()).unwrap();
    let changed: Vec<_> = third.changed().map(|(n, _)| n.as_str()).collect();
    assert_eq!(changed, ["apiserver"]);
    assert_eq!(third.backups.len(), 1, "the old apiserver.crt is kept");
    assert!(third.files.iter().all(|f| !f.path.ends_with("apiserver.key")), "the key is reused");
}

#[test]
fn secrets_get_one_encryption_key_made_once_by_the_first_master() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::new(dir.path());
    let c = config("{}");
    let write = |plan: &PkiPlan| {
        for f in &plan.files {
            crate::host::fs::write_atomic(&f.path, &f.contents, f.mode).unwrap();
        }
    };
    let first = plan(&paths, &c, now()).unwrap();
    let decision = |p: &PkiPlan| p.decisions.iter().find(|(n, _)| n == "encryption-config").unwrap().1.clone();
    assert_eq!(decision(&first), Decision::Create);
    let spec = first.files.iter().find(|f| f.path.ends_with(ENCRYPTION_CONFIG)).unwrap();
    assert_eq!(spec.mode, 0o600);
    assert_eq!(encryption_key_count(&spec.contents), Ok(1));
    write(&first);
    // A re-run keeps it byte for byte.
    let again = plan(&paths, &c, now()).unwrap();
    assert_eq!(decision(&again), Decision::Keep);
    assert!(!again.files.iter().any(|f| f.path.ends_with(ENCRYPTION_CONFIG)));
    // Two new clusters get two different keys.
    let other = tempfile::tempdir().unwrap();
    let other_plan = plan(&Paths::new(other.path()), &c, now()).unwrap();
    let other_spec = other_plan.files.iter().find(|f| f.path.ends_with(ENCRYPTION_CONFIG)).unwrap();
    assert_ne!(spec.contents, other_spec.contents);
    // A master whose etcd already ran cannot make one of its own.
    std::fs::remove_file(paths.pki(ENCRYPTION_CONFIG)).unwrap();
    std::fs::write(paths.etcd_bootstrapped_marker(), "").unwrap();
    let e = plan(&paths, &c, now()).unwrap_err().to_string();
    assert!(e.contains("Copy the file from another master"), "{e}");
    // A damaged one is named.
    std::fs::write(paths.pki(ENCRYPTION_CONFIG), encryption_config("c2hvcnQ=")).unwrap();
    let e = plan(&paths, &c, now()).unwrap_err().to_string();
    assert!(e.contains("is 5 bytes, not 32"), "{e}");
    for (bad, why) in [
        ("kind: Secret\n", "not an EncryptionConfiguration"),
        ("kind: EncryptionConfiguration\nresources: [{providers: [{identity: {}}]}]\n", "not secretbox"),
        ("kind: EncryptionConfiguration\nresources: [{providers: [{secretbox: {keys: []}}]}]\n", "no key"),
        (": :", "not YAML"),
    ] {
        let e = encryption_key_count(bad.as_bytes()).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}
