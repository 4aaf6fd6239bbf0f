//! The conformance kit: Kubernetes' own end-to-end suite (`e2e.test`, and
//! `ginkgo`, which runs it in parallel) built from the k8s.io/kubernetes
//! module of the bundle's version, and every image its `[Conformance]` tests
//! run, built here under the exact reference the suite asks for (no registry
//! is reachable, so nothing may be pulled).
//!
//! Where the images come from (upstream builds them on Alpine and Debian
//! bases from Dockerfiles; here no base image can be pulled):
//! - a Debian bookworm root made with `debootstrap --variant=minbase`, with
//!   what the images' Dockerfiles install (dig and nslookup, curl, netcat,
//!   iproute2, iperf, socat, bash, util-linux, and nginx-light for the nginx
//!   images): the base layer of agnhost, kitten, nautilus, nginx,
//!   glibc-dns-testing and nonroot, stored once;
//! - upstream's busybox 1.37.0 built from source (defconfig, static; the
//!   release tarball from Debian's mirror, pinned by digest): busybox, and
//!   the base of nonewprivs, etcd and sample-apiserver;
//! - Go programs built from the same modules as `e2e.test`: agnhost,
//!   nonewprivs' `nnp`, and k8s.io/sample-apiserver; the bundle's etcd and
//!   CoreDNS binaries;
//! - the bundle's pause image, tagged as the suite's at import.
//!
//! The suite names two agnhost versions (the current one and a previous one,
//! which update tests roll from and to); both are the agnhost built here.
//! Images that no conformance test runs are not built; `IMAGES.missing` in
//! the kit lists them.
//!
//! Cached like the bundle: `<cache>/conformance/<bundle key>_c<RECIPE>`, built
//! in a staging directory and renamed into place, under a lock. Go's build
//! cache is the bundle's, so the packages the two share compile once.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Value};

use super::archive::{self, Image, Layer};
use crate::proc::{self, bounded_group, msg, to_log};

/// Bump when anything that ends up in a kit changes.
pub const RECIPE: u32 = 3;

/// What the Debian base of the images has: the packages agnhost's and
/// glibc-dns-testing's Dockerfiles install, and nginx.
const BASE_PACKAGES: &[&str] = &[
    "bind9-dnsutils",
    "curl",
    "netcat-openbsd",
    "iproute2",
    "iperf",
    "socat",
    "bash",
    "util-linux",
    "nginx-light",
    "ca-certificates",
];
const SUITE: &str = "bookworm";
/// Upstream's busybox release the busybox image is built from (the suite
/// names 1.37.0 and 1.36.1; one release serves both tags), as Debian's
/// source package ships it, pinned by its digest.
const BUSYBOX_VERSION: &str = "1.37.0";
const BUSYBOX_TARBALL: &str = "busybox_1.37.0.orig.tar.bz2";
const BUSYBOX_SHA256: &str = "3311dff32e746499f4df0d5df04d7eb396382d7e108bb9250e7b519b837043a4";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const E2E_REGISTRY: &str = "registry.k8s.io/e2e-test-images/";

/// A built kit.
pub struct Kit {
    pub dir: PathBuf,
}

impl Kit {
    pub fn e2e(&self) -> PathBuf {
        self.dir.join("e2e.test")
    }
    pub fn ginkgo(&self) -> PathBuf {
        self.dir.join("ginkgo")
    }
    pub fn images(&self) -> PathBuf {
        self.dir.join("images.tar")
    }
    /// The references the archive holds, and the one to tag from the bundle's pause image.
    pub fn references(&self) -> Result<Vec<String>> {
        let text = fs::read_to_string(self.dir.join("IMAGES")).context("the kit has no IMAGES")?;
        Ok(text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect())
    }
    pub fn pause_reference(&self) -> Result<String> {
        Ok(fs::read_to_string(self.dir.join("PAUSE")).context("the kit has no PAUSE")?.trim().to_owned())
    }
    fn complete(dir: &Path) -> bool {
        ["e2e.test", "ginkgo", "images.tar", "IMAGES", "PAUSE", "MANIFEST"].iter().all(|f| dir.join(f).is_file())
    }
}

/// The cache root: `HAKUBE_CACHE_DIR`, else /var/cache/hakube.
fn cache_dir() -> PathBuf {
    std::env::var_os("HAKUBE_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/cache/hakube".into())
}

/// The kit for `bundle`'s Kubernetes version: the cached one, else built now.
pub fn ensure(bundle: &Path, rebuild: bool) -> Result<Kit> {
    let version = fs::read_to_string(bundle.join("VERSION"))
        .with_context(|| format!("{} has no VERSION: is it a bundle (scripts/kube-bundle.sh)?", bundle.display()))?
        .trim()
        .to_owned();
    let root = cache_dir().join("conformance");
    // Keyed by the bundle's own key (version and recipe): the kit carries
    // its etcd and CoreDNS, and is built from its Kubernetes module.
    let bundle_key = bundle.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| version.clone());
    let key = format!("{bundle_key}_c{RECIPE}");
    let dir = root.join(&key);
    if !rebuild && Kit::complete(&dir) {
        msg!("conformance kit: cache hit: {}", dir.display());
        return Ok(Kit { dir });
    }
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let _lock = lock(&root.join(".lock"))?;
    if !rebuild && Kit::complete(&dir) {
        msg!("conformance kit: built meanwhile by another run: {}", dir.display());
        return Ok(Kit { dir });
    }
    let t0 = Instant::now();
    msg!(
        "conformance kit: building {} (cold on 2 cores: 15 to 30 minutes; logs in {}/work/logs)",
        dir.display(),
        root.display()
    );
    let build = Build::new(&root, bundle, &version)?;
    let staging = root.join(format!(".staging.{key}.{}", std::process::id()));
    let result = build.run(&staging);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e.context(format!("building the conformance kit failed (logs: {})", build.logs.display())));
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    fs::rename(&staging, &dir)?;
    let _ = fs::remove_dir_all(&build.work);
    msg!("conformance kit built in {}: {}", secs(t0.elapsed()), dir.display());
    Ok(Kit { dir })
}

fn lock(path: &Path) -> Result<Flock<fs::File>> {
    let file = fs::File::create(path).with_context(|| format!("cannot open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((file, _)) => {
            msg!("another run is building the conformance kit ({} is held); waiting for it", path.display());
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| anyhow!("cannot lock {}: {e}", path.display()))
        }
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// What upstream's go.mod says that the wrapper module must repeat.
#[derive(Debug, PartialEq)]
pub struct Upstream {
    pub go: String,
    pub godebug: Vec<String>,
    /// Modules upstream maps to `./staging/...` (published as v0.MINOR.PATCH).
    pub staging: Vec<String>,
    /// The ginkgo version the suite is built with (its CLI must match).
    pub ginkgo: String,
}

pub fn parse_upstream(gomod: &str) -> Result<Upstream> {
    let mut go = None;
    let mut godebug = Vec::new();
    let mut staging = Vec::new();
    let mut ginkgo = None;
    let mut block = "";
    for line in gomod.lines() {
        let line = line.split("//").next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [")"] => block = "",
            [kw, "("] => block = if *kw == "godebug" { "godebug" } else { "other" },
            ["go", v] if block.is_empty() => go = Some(v.to_string()),
            ["godebug", kv] => godebug.push(kv.to_string()),
            [kv] if block == "godebug" => godebug.push(kv.to_string()),
            ["replace", m, "=>", to] | [m, "=>", to] if to.starts_with("./staging/") => staging.push(m.to_string()),
            ["require", "github.com/onsi/ginkgo/v2", v] | ["github.com/onsi/ginkgo/v2", v] => {
                ginkgo = Some(v.to_string())
            }
            _ => {}
        }
    }
    let go = go.ok_or_else(|| anyhow!("no go line in k8s.io/kubernetes's go.mod"))?;
    let ginkgo = ginkgo.ok_or_else(|| anyhow!("k8s.io/kubernetes's go.mod requires no github.com/onsi/ginkgo/v2"))?;
    if staging.is_empty() {
        bail!("k8s.io/kubernetes's go.mod maps nothing to ./staging/: has the module's layout changed?");
    }
    Ok(Upstream { go, godebug, staging, ginkgo })
}

/// The wrapper module's go.mod: upstream's own (so every module the suite
/// and its tests import is already in the build list, at upstream's
/// version, and nothing has to be looked up), under another module path,
/// requiring k8s.io/kubernetes itself, with the staging modules taken at
/// their published tags instead of upstream's `./staging` directories.
pub fn wrapper_go_mod(upstream_gomod: &str, kubernetes: &str, staging: &[String], staging_tag: &str) -> String {
    let mut out = String::new();
    for line in upstream_gomod.lines() {
        let code = line.split("//").next().unwrap_or("");
        if code.trim_start().starts_with("module ") {
            out.push_str("module hakube.invalid/conformance-build\n");
        } else if code.contains("=> ./staging/") {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!("\nrequire k8s.io/kubernetes {kubernetes}\n\nreplace (\n"));
    for m in staging {
        out.push_str(&format!("\t{m} => {m} {staging_tag}\n"));
    }
    out.push_str(")\n");
    out
}

/// What each image the suite names is made of, by its repository.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Recipe {
    Agnhost,
    /// agnhost's test-webserver with a picture (kitten, nautilus).
    Picture(&'static str),
    Busybox,
    Nginx,
    /// The Debian base as it is (glibc-dns-testing: dig and nslookup).
    Debian,
    NonRoot,
    NoNewPrivs,
    SampleApiserver,
    Etcd,
    /// The bundle's pause image, tagged at import.
    Pause,
}

/// The recipe of `reference`, or None for an image no conformance test runs
/// (or one a test must fail to pull: the private and the invalid registry's).
pub fn recipe(reference: &str) -> Option<Recipe> {
    let (repo, _tag) = reference.rsplit_once(':')?;
    if let Some(name) = repo.strip_prefix(E2E_REGISTRY) {
        return Some(match name {
            "agnhost" => Recipe::Agnhost,
            "kitten" => Recipe::Picture("kitten"),
            "nautilus" => Recipe::Picture("nautilus"),
            "busybox" => Recipe::Busybox,
            "nginx" => Recipe::Nginx,
            "glibc-dns-testing" => Recipe::Debian,
            "nonroot" => Recipe::NonRoot,
            "nonewprivs" => Recipe::NoNewPrivs,
            "sample-apiserver" => Recipe::SampleApiserver,
            _ => return None,
        });
    }
    match repo {
        "registry.k8s.io/etcd" => Some(Recipe::Etcd),
        "registry.k8s.io/pause" => Some(Recipe::Pause),
        _ => None,
    }
}

struct Build {
    bundle: PathBuf,
    version: String,
    work: PathBuf,
    logs: PathBuf,
    go_bin: PathBuf,
    gocache: PathBuf,
    arch: String,
}

impl Build {
    fn new(root: &Path, bundle: &Path, version: &str) -> Result<Build> {
        let work = root.join("work");
        if work.exists() {
            fs::remove_dir_all(&work).with_context(|| format!("cannot remove the last build's {}", work.display()))?;
        }
        let logs = work.join("logs");
        fs::create_dir_all(&logs)?;
        let go_bin = std::env::var_os("HAKUBE_GO")
            .map(PathBuf::from)
            .or_else(|| which("go"))
            .or_else(|| Some(PathBuf::from("/usr/local/go/bin/go")).filter(|p| p.is_file()))
            .ok_or_else(|| anyhow!("no Go: install Go 1.26 or newer, or set HAKUBE_GO to its go command"))?;
        let arch =
            proc::output(Command::new(&go_bin).args(["env", "GOHOSTARCH"]), "go env GOHOSTARCH")?.trim().to_owned();
        Ok(Build {
            bundle: bundle.to_path_buf(),
            version: version.to_owned(),
            work,
            logs,
            go_bin,
            gocache: cache_dir().join("kube-bundle/go-build"),
            arch,
        })
    }

    /// A go command in the wrapper module, with the bundle's settings.
    fn go(&self, args: &[&str]) -> Command {
        // -C, not current_dir: proc::bounded carries only the program, its
        // arguments and its environment.
        let mut cmd = Command::new(&self.go_bin);
        cmd.arg("-C").arg(self.work.join("mod")).args(args);
        for var in ["GOROOT", "GOBIN", "GOEXPERIMENT", "GOOS", "GOARCH", "CC", "CGO_CFLAGS", "CGO_LDFLAGS", "GODEBUG"] {
            cmd.env_remove(var);
        }
        cmd.envs([
            ("GOTOOLCHAIN", "local"),
            ("GOFLAGS", "-trimpath -modcacherw -mod=mod"),
            ("GOWORK", "off"),
            ("CGO_ENABLED", "0"),
            ("GOAMD64", "v1"),
            ("LC_ALL", "C"),
            ("TZ", "UTC"),
        ]);
        cmd.env("GOCACHE", &self.gocache);
        cmd
    }

    /// Runs one step, its output to `logs/<log>.log`, reporting its duration.
    fn step(&self, name: &str, log: &str, limit: Duration, cmd: Command) -> Result<()> {
        let t0 = Instant::now();
        msg!("{name} ...");
        let log = self.logs.join(format!("{log}.log"));
        let status = to_log(bounded_group(limit, cmd), &log)?.status().with_context(|| format!("cannot run {name}"))?;
        if !status.success() {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{name} failed ({status}) after {}; the end of {}:\n    {}",
                secs(t0.elapsed()),
                log.display(),
                tail.join("\n    ")
            );
        }
        msg!("{name}: done in {}", secs(t0.elapsed()));
        Ok(())
    }

    fn run(&self, staging: &Path) -> Result<()> {
        fs::create_dir_all(staging)?;
        let bin = self.work.join("bin");
        fs::create_dir_all(&bin)?;
        let (module_dir, time) = self.wrapper()?;
        let mtime = proc::output(Command::new("date").args(["-u", "-d", &time, "+%s"]), "date")?
            .trim()
            .parse::<i64>()
            .context("the module's time")?;
        let created =
            proc::output(Command::new("date").args(["-u", "-d", &format!("@{mtime}"), "+%Y-%m-%dT%H:%M:%SZ"]), "date")?
                .trim()
                .to_owned();
        self.build_go(&bin)?;
        fs::copy(bin.join("e2e.test"), staging.join("e2e.test"))?;
        fs::copy(bin.join("ginkgo"), staging.join("ginkgo"))?;

        let listed =
            proc::output(Command::new(staging.join("e2e.test")).arg("--list-images"), "e2e.test --list-images")?;
        let (built, missing): (Vec<&str>, Vec<&str>) =
            listed.lines().filter(|l| !l.is_empty()).partition(|r| recipe(r).is_some());
        let pause = built
            .iter()
            .find(|r| recipe(r) == Some(Recipe::Pause))
            .ok_or_else(|| anyhow!("e2e.test --list-images names no pause image"))?;
        let images = self.images(&bin, &module_dir, &built, mtime)?;
        let t0 = Instant::now();
        msg!("writing the image archive ({} images) ...", images.len());
        archive::write(&staging.join("images.tar"), &self.work, &images, &self.arch, &created, mtime)?;
        msg!("image archive written in {}", secs(t0.elapsed()));

        let mut refs = String::from("# The images in images.tar (ctr images import).\n");
        for image in &images {
            refs.push_str(&image.reference);
            refs.push('\n');
        }
        fs::write(staging.join("IMAGES"), refs)?;
        fs::write(staging.join("PAUSE"), format!("{pause}\n"))?;
        let mut text =
            String::from("# Images e2e.test names that no conformance test runs, or that a test must fail to pull.\n");
        for r in &missing {
            text.push_str(r);
            text.push('\n');
        }
        fs::write(staging.join("IMAGES.missing"), text)?;
        let manifest = format!(
            "# hakube conformance kit, made by scripts/conformance.sh\nkubernetes {}\nginkgo {}\nbundle {}\nrecipe {RECIPE}\nbuilt-at {}\n",
            self.version,
            self.ginkgo_version()?,
            self.bundle.display(),
            proc::output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]), "date")?.trim()
        );
        fs::write(staging.join("MANIFEST"), manifest)?;
        Ok(())
    }

    fn ginkgo_version(&self) -> Result<String> {
        let gomod = fs::read_to_string(self.work.join("mod/go.mod"))?;
        Ok(gomod
            .lines()
            .find_map(|l| l.trim().strip_prefix("github.com/onsi/ginkgo/v2 "))
            .unwrap_or("?")
            .split_whitespace()
            .next()
            .unwrap_or("?")
            .to_owned())
    }

    /// The wrapper module, resolved; returns k8s.io/kubernetes's directory
    /// in the module cache and the time the proxy records for its version.
    fn wrapper(&self) -> Result<(PathBuf, String)> {
        let dir = self.work.join("mod");
        fs::create_dir_all(&dir)?;
        let short = Duration::from_secs(600);
        self.step("go mod init", "wrapper", short, self.go(&["mod", "init", "hakube.invalid/conformance-build"]))?;
        let module = format!("k8s.io/kubernetes@{}", self.version);
        let json = proc::output(self.go(&["mod", "download", "-json", &module]), &format!("go mod download {module}"))
            .with_context(|| format!("the Go module proxy does not serve {module}"))?;
        let info: Value = serde_json::from_str(&json).context("go mod download -json")?;
        let field = |k: &str| {
            info[k].as_str().map(str::to_owned).ok_or_else(|| anyhow!("go mod download -json {module} gave no {k}"))
        };
        let (gomod, module_dir, info) = (field("GoMod")?, PathBuf::from(field("Dir")?), field("Info")?);
        // The time the proxy records for the version: the images' dates.
        let info: Value =
            serde_json::from_str(&fs::read_to_string(&info).with_context(|| format!("cannot read {info}"))?)
                .with_context(|| format!("{info} is not JSON"))?;
        let time =
            info["Time"].as_str().ok_or_else(|| anyhow!("the proxy's .info for {module} has no Time"))?.to_owned();
        let upstream_text = fs::read_to_string(&gomod)?;
        let upstream = parse_upstream(&upstream_text)?;
        let staging_tag = format!("v0.{}", self.version.trim_start_matches("v1."));
        // Upstream's go.mod and go.sum as the wrapper's: every version is
        // upstream's (ginkgo's CLI the library's), and with a warm module
        // cache nothing is asked of the proxy (`go get` asked it for
        // version lists, which a machine whose proxy is out of reach cannot
        // answer). go adds the hashes of k8s.io/kubernetes and the staging
        // modules to go.sum as it builds (-mod=mod).
        fs::write(dir.join("go.mod"), wrapper_go_mod(&upstream_text, &self.version, &upstream.staging, &staging_tag))?;
        fs::copy(module_dir.join("go.sum"), dir.join("go.sum"))
            .with_context(|| format!("cannot copy {}/go.sum", module_dir.display()))?;
        fs::set_permissions(dir.join("go.sum"), fs::Permissions::from_mode(0o644))?;
        self.step(
            "go mod download (the modules upstream requires)",
            "get",
            Duration::from_secs(1800),
            self.go(&["mod", "download"]),
        )?;
        Ok((module_dir, time))
    }

    fn build_go(&self, bin: &Path) -> Result<()> {
        let v = &self.version;
        let (major, minor) = {
            let mut parts = v.trim_start_matches('v').split('.');
            (parts.next().unwrap_or("1").to_owned(), parts.next().unwrap_or("0").to_owned())
        };
        let mut ldflags = String::from("-s -w");
        for pkg in ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"] {
            ldflags.push_str(&format!(
                " -X {pkg}.gitVersion={v} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean"
            ));
        }
        let long = Duration::from_secs(3 * 3600);
        let e2e = bin.join("e2e.test");
        self.step(
            "go test -c e2e.test (the end-to-end suite; cold: 10 to 20 minutes)",
            "e2e",
            long,
            self.go(&[
                "test",
                "-c",
                "-tags",
                "providerless",
                "-ldflags",
                &ldflags,
                "-o",
                &e2e.to_string_lossy(),
                "k8s.io/kubernetes/test/e2e",
            ]),
        )?;
        let out = format!("{}/", bin.display());
        self.step(
            "go build ginkgo, agnhost, nonewprivs, sample-apiserver",
            "tools",
            long,
            self.go(&[
                "build",
                "-ldflags",
                &ldflags,
                "-o",
                &out,
                "github.com/onsi/ginkgo/v2/ginkgo",
                "k8s.io/kubernetes/test/images/agnhost",
                "k8s.io/kubernetes/test/images/nonewprivs",
                "k8s.io/sample-apiserver",
            ]),
        )?;
        Ok(())
    }

    /// The Debian root under most images.
    fn debian(&self) -> Result<PathBuf> {
        let root = self.work.join("debian");
        let mirror = proc::script_output(&format!("hakube_debian_mirror {SUITE}"))
            .context("no Debian mirror in apt's sources; set HAKUBE_DEBIAN_MIRROR")?;
        let mut cmd = Command::new("debootstrap");
        cmd.args(["--foreign", "--variant=minbase", "--components=main"]);
        cmd.arg(format!("--include={}", BASE_PACKAGES.join(",")));
        cmd.arg(SUITE).arg(&root).arg(&mirror);
        self.step(
            &format!("debootstrap the images' Debian base from {}", mirror.display()),
            "debian",
            Duration::from_secs(1800),
            cmd,
        )?;
        // No package may start a daemon while the root is configured.
        let policy = root.join("usr/sbin/policy-rc.d");
        fs::write(&policy, "#!/bin/sh\nexit 101\n")?;
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o755))?;
        let mut cmd = Command::new("unshare");
        cmd.args(["--fork", "--pid", "--kill-child", "--net"]);
        cmd.arg(format!("--mount-proc={}", root.join("proc").display()));
        cmd.arg("--").arg("chroot").arg(&root).args(["/debootstrap/debootstrap", "--second-stage"]);
        self.step("configure the Debian base (no network)", "debian", Duration::from_secs(1800), cmd)?;
        // (The second stage may have removed it already.)
        if policy.exists() {
            fs::remove_file(&policy).with_context(|| format!("cannot remove {}", policy.display()))?;
        }
        // What a container gets from its runtime, and what only the build used.
        for dir in ["dev", "proc", "sys", "run", "tmp", "var/cache/apt/archives", "var/lib/apt/lists", "var/log"] {
            let d = root.join(dir);
            if d.is_dir() {
                empty_dir(&d).with_context(|| format!("cannot empty {}", d.display()))?;
            }
        }
        let _ = fs::remove_dir_all(root.join("debootstrap"));
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        // The users and group agnhost's Dockerfile adds (tests check them).
        append(&root.join("etc/passwd"), "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n")?;
        append(
            &root.join("etc/group"),
            "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n",
        )?;
        // nginx's default site: port 80 on IPv4 only, so it starts in a pod with no IPv6.
        let site = root.join("etc/nginx/sites-available/default");
        fs::write(
            &site,
            "server {\n\tlisten 80 default_server;\n\troot /var/www/html;\n\tindex index.html index.nginx-debian.html;\n\tserver_name _;\n\tlocation / {\n\t\ttry_files $uri $uri/ =404;\n\t}\n}\n",
        )
        .with_context(|| format!("cannot write {}", site.display()))?;
        Ok(root)
    }

    /// Debian's static busybox, every applet a link.
    /// Upstream's busybox, built from its release (Debian's source package
    /// carries it byte for byte) with upstream's default configuration, as
    /// the suite's busybox image is. Debian's own busybox will not do: its
    /// ash drops environment variables whose names are not shell names
    /// (`data-1`), which upstream's passes on to children, and four
    /// conformance tests read such variables through `sh -c env`.
    fn build_busybox(&self) -> Result<PathBuf> {
        let dir = self.work.join("busybox-src");
        fs::create_dir_all(&dir)?;
        let mirror = proc::script_output(&format!("hakube_debian_mirror {SUITE}"))
            .context("no Debian mirror in apt's sources; set HAKUBE_DEBIAN_MIRROR")?;
        let tarball = dir.join(BUSYBOX_TARBALL);
        let url =
            format!("{}/pool/main/b/busybox/{BUSYBOX_TARBALL}", mirror.display().to_string().trim_end_matches('/'));
        let mut curl = Command::new("curl");
        curl.args(["-fsS", "--retry", "3", "-o"]).arg(&tarball).arg(&url);
        self.step(&format!("download busybox {BUSYBOX_VERSION} ({url})"), "busybox", Duration::from_secs(600), curl)?;
        let sum = hakube::runtime::images::sha256_file(&tarball).map_err(anyhow::Error::msg)?;
        if sum != BUSYBOX_SHA256 {
            bail!("{url} has SHA-256 {sum}, not the {BUSYBOX_SHA256} this kit's recipe pins: a corrupt download, or a mirror that serves another file");
        }
        let src = dir.join(format!("busybox-{BUSYBOX_VERSION}"));
        // defconfig, linked statically; without tc, which no longer builds
        // against current kernel headers (and no test runs).
        let script = "set -e; tar -xjf \"$1\" -C \"$2\"; cd \"$3\"; make defconfig; \
            sed -i 's/^# CONFIG_STATIC is not set/CONFIG_STATIC=y/; s/^CONFIG_TC=y/# CONFIG_TC is not set/' .config; \
            make -j\"$(nproc)\" busybox";
        let mut build = Command::new("bash");
        build.args(["-c", script, "bash"]).arg(&tarball).arg(&dir).arg(&src);
        self.step(
            &format!("build busybox {BUSYBOX_VERSION} (defconfig, static)"),
            "busybox",
            Duration::from_secs(1800),
            build,
        )?;
        Ok(src.join("busybox"))
    }

    /// A busybox root, every applet a link.
    fn busybox(&self) -> Result<PathBuf> {
        let bb = self.build_busybox()?;
        let root = self.work.join("busybox");
        for d in ["bin", "etc", "root", "tmp", "usr/local/bin"] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::copy(&bb, root.join("bin/busybox"))?;
        let applets = proc::output(Command::new(root.join("bin/busybox")).arg("--list"), "busybox --list")?;
        for a in applets.lines().filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/')) {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
        }
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )?;
        fs::write(root.join("etc/group"), "root:x:0:\nnobody:x:65534:\n")?;
        fs::set_permissions(root.join("root"), fs::Permissions::from_mode(0o700))?;
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        Ok(root)
    }

    /// A layer of the given files (path in the image, source, mode) and
    /// symlinks (path, target).
    fn files_layer(
        &self,
        name: &str,
        files: &[(&str, &Path, u32)],
        links: &[(&str, &str)],
        dirs: &[&str],
        mtime: i64,
    ) -> Result<Layer> {
        let root = self.work.join("layers").join(name);
        fs::create_dir_all(&root)?;
        for (to, from, mode) in files {
            let to = root.join(to.trim_start_matches('/'));
            fs::create_dir_all(to.parent().expect("a file in a directory"))?;
            fs::copy(from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(*mode))?;
        }
        for (at, target) in links {
            std::os::unix::fs::symlink(target, root.join(at.trim_start_matches('/')))?;
        }
        for d in dirs {
            fs::create_dir_all(root.join(d.trim_start_matches('/')))?;
        }
        archive::layer(&root, &self.work.join(format!("{name}.tar")), mtime)
    }

    fn images(&self, bin: &Path, module: &Path, refs: &[&str], mtime: i64) -> Result<Vec<Image>> {
        let debian = self.debian()?;
        let t0 = Instant::now();
        msg!("making the image layers ...");
        let base = archive::layer(&debian, &self.work.join("debian.tar"), mtime)?;
        let busybox = archive::layer(&self.busybox()?, &self.work.join("busybox.tar"), mtime)?;
        let images_src = module.join("test/images");
        let porter = images_src.join("agnhost/porter");
        let agnhost = self.files_layer(
            "agnhost",
            &[
                ("/agnhost", &bin.join("agnhost"), 0o755),
                ("/coredns", &self.bundle.join("coredns"), 0o755),
                ("/localhost.crt", &porter.join("localhost.crt"), 0o644),
                ("/localhost.key", &porter.join("localhost.key"), 0o644),
            ],
            &[("/agnhost-2", "agnhost")],
            &["/uploads"],
            mtime,
        )?;
        let mut pictures = BTreeMap::new();
        for name in ["kitten", "nautilus"] {
            let html = images_src.join(name).join("html");
            let jpg = format!("/{name}.jpg");
            let layer = self.files_layer(
                name,
                &[(&jpg, &html.join(format!("{name}.jpg")), 0o644), ("/data.json", &html.join("data.json"), 0o644)],
                &[],
                &[],
                mtime,
            )?;
            pictures.insert(name, layer);
        }
        let one =
            |name: &str, at: &str, from: &Path, mode: u32| self.files_layer(name, &[(at, from, mode)], &[], &[], mtime);
        let nnp = one("nonewprivs", "/usr/local/bin/nnp", &bin.join("nonewprivs"), 0o4755)?;
        let sample = one("sample-apiserver", "/sample-apiserver", &bin.join("sample-apiserver"), 0o755)?;
        let etcd = one("etcd", "/usr/local/bin/etcd", &self.bundle.join("etcd"), 0o755)?;
        msg!("image layers made in {}", secs(t0.elapsed()));

        let env = json!([PATH_ENV]);
        let mut images = Vec::new();
        for reference in refs {
            let (layers, config) = match recipe(reference).expect("only references with a recipe") {
                Recipe::Pause => continue,
                Recipe::Agnhost => {
                    (vec![&base, &agnhost], json!({"Env": env, "Entrypoint": ["/agnhost"], "Cmd": ["pause"]}))
                }
                Recipe::Picture(name) => (
                    vec![&base, &agnhost, &pictures[name]],
                    json!({"Env": env, "Entrypoint": ["/agnhost"], "Cmd": ["test-webserver"]}),
                ),
                Recipe::Busybox => (vec![&busybox], json!({"Env": env, "Cmd": ["sh"]})),
                Recipe::Nginx => (
                    vec![&base],
                    json!({"Env": env, "Cmd": ["nginx", "-g", "daemon off;"], "StopSignal": "SIGQUIT", "ExposedPorts": {"80/tcp": {}}}),
                ),
                Recipe::Debian => (vec![&base], json!({"Env": env, "Cmd": ["bash"]})),
                Recipe::NonRoot => (vec![&base], json!({"Env": env, "Cmd": ["bash"], "User": "1234"})),
                Recipe::NoNewPrivs => (vec![&busybox, &nnp], json!({"Env": env, "Cmd": ["nnp"]})),
                Recipe::SampleApiserver => {
                    (vec![&busybox, &sample], json!({"Env": env, "Entrypoint": ["/sample-apiserver"]}))
                }
                Recipe::Etcd => (vec![&busybox, &etcd], json!({"Env": env, "Cmd": ["/usr/local/bin/etcd"]})),
            };
            images.push(Image {
                reference: reference.to_string(),
                layers: layers.into_iter().cloned().collect(),
                config,
            });
        }
        Ok(images)
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.is_file())
}

fn empty_dir(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f =
        fs::OpenOptions::new().append(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapper_is_upstreams_module_with_staging_at_its_tags() {
        let gomod = "module k8s.io/kubernetes\n\ngo 1.26.0\n\nrequire (\n\tgithub.com/onsi/ginkgo/v2 v2.32.0\n)\n\n\
            replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tgithub.com/x/y => github.com/x/z v1.0.0\n)\n";
        let out = wrapper_go_mod(gomod, "v1.37.2", &["k8s.io/api".into()], "v0.37.2");
        assert!(out.starts_with("module hakube.invalid/conformance-build\n\ngo 1.26.0\n"), "{out}");
        assert!(out.contains("\tgithub.com/onsi/ginkgo/v2 v2.32.0\n"), "{out}");
        assert!(out.contains("\tgithub.com/x/y => github.com/x/z v1.0.0\n"), "{out}");
        assert!(!out.contains("./staging"), "{out}");
        assert!(
            out.ends_with("require k8s.io/kubernetes v1.37.2\n\nreplace (\n\tk8s.io/api => k8s.io/api v0.37.2\n)\n"),
            "{out}"
        );
    }

    #[test]
    fn upstream_go_mod_gives_go_godebug_staging_and_ginkgo() {
        let gomod = "module k8s.io/kubernetes\n\ngo 1.26.0\n\ngodebug default=go1.26\n\nrequire (\n\
            \tgithub.com/onsi/ginkgo/v2 v2.32.0\n\tgithub.com/onsi/gomega v1.40.0\n)\n\n\
            replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/client-go => ./staging/src/k8s.io/client-go // a comment\n\
            \tgithub.com/x/y => github.com/x/z v1.0.0\n)\n";
        let up = parse_upstream(gomod).unwrap();
        assert_eq!(
            up,
            Upstream {
                go: "1.26.0".into(),
                godebug: vec!["default=go1.26".into()],
                staging: vec!["k8s.io/api".into(), "k8s.io/client-go".into()],
                ginkgo: "v2.32.0".into(),
            }
        );
        let block = "go 1.26.0\ngodebug (\n\tdefault=go1.26\n\tx509sha1=1\n)\nrequire github.com/onsi/ginkgo/v2 v2.30.0\nreplace k8s.io/api => ./staging/src/k8s.io/api\n";
        let up = parse_upstream(block).unwrap();
        assert_eq!(up.godebug, ["default=go1.26", "x509sha1=1"]);
        assert_eq!(up.ginkgo, "v2.30.0");
        assert_eq!(up.staging, ["k8s.io/api"]);
        assert!(parse_upstream("go 1.26.0\nrequire github.com/onsi/ginkgo/v2 v2.30.0\n")
            .unwrap_err()
            .to_string()
            .contains("staging"));
    }

    #[test]
    fn every_image_a_conformance_test_runs_has_a_recipe_and_no_other() {
        assert_eq!(recipe("registry.k8s.io/e2e-test-images/agnhost:2.66.1"), Some(Recipe::Agnhost));
        assert_eq!(recipe("registry.k8s.io/e2e-test-images/agnhost:2.55"), Some(Recipe::Agnhost));
        assert_eq!(recipe("registry.k8s.io/e2e-test-images/kitten:1.8"), Some(Recipe::Picture("kitten")));
        assert_eq!(recipe("registry.k8s.io/etcd:3.7.0-0"), Some(Recipe::Etcd));
        assert_eq!(recipe("registry.k8s.io/pause:3.10.2"), Some(Recipe::Pause));
        // A test must fail to pull these: they may not exist here.
        assert_eq!(recipe("gcr.io/k8s-authenticated-test/agnhost:2.6"), None);
        assert_eq!(recipe("invalid.registry.k8s.io/invalid/alpine:3.1"), None);
        assert_eq!(recipe("registry.k8s.io/e2e-test-images/volume/nfs:1.6.0"), None);
        assert_eq!(recipe("no-tag"), None);
    }
}
