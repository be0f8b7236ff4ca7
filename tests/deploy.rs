//! The deployment files in `deploy/` checked against tern itself: ports against the key table's
//! defaults, probe and scrape paths against a running tern, config mounts against the paths the
//! image reads, metric names against `tern::http::declared_metrics()`, the example configs
//! through `tern config check`, and each file through a real validator (yamllint,
//! podman-compose, kubernetes-validate, hadolint, systemd-analyze), which under CI=true must be
//! installed (scripts/install-test-deps.sh) and elsewhere is skipped when missing.
//!
//! The container image itself is built and run by tests/container.rs.

mod common;

use common::tools::required;
use common::{TempFile, Tern};
use serde_norway::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use tern::config::{Config, KEYS};

fn deploy_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(relative)
}

fn read(relative: &str) -> String {
    let path = deploy_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

/// `value[a][b]…`, panicking with the path when a step is missing.
fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |value, step| match value {
        Value::Sequence(items) => &items[step.parse::<usize>().unwrap()],
        _ => value
            .get(*step)
            .unwrap_or_else(|| panic!("{path:?}: no {step:?} in {value:?}")),
    })
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn u64_at(value: &Value, path: &[&str]) -> u64 {
    at(value, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number"))
}

fn items(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

/// The defaults the files must agree with, from the key table.
struct Defaults {
    turn: u16,
    tls: u16,
    http: u16,
}

fn defaults() -> Defaults {
    let config = Config::default();
    Defaults {
        turn: config.listening_port,
        tls: config.tls_listening_port,
        http: config.http_listen.port(),
    }
}

/// A config key's value in a TOML text, raw (keys tern does not declare yet are read too).
fn toml_key(text: &str, key: &str) -> Option<toml::Value> {
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}:\n{text}"));
    table.get(key).cloned()
}

fn toml_u64(text: &str, key: &str) -> u64 {
    match toml_key(text, key) {
        Some(toml::Value::Integer(n)) => u64::try_from(n).unwrap(),
        other => panic!("{key} = {other:?}"),
    }
}

/// Sockets tern may hold with `config_text`: one per relay port and per TCP/TLS connection (what
/// LimitNOFILE and the compose ulimit are sized for).
fn sockets_needed(config_text: &str) -> u64 {
    let config = tern::config::from_str(config_text)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    u64::from(config.max_port - config.min_port) + 1 + u64::from(config.max_connections)
}

/// Seconds of a compose duration such as `90s` or `2m`.
fn duration_secs(text: &str) -> u64 {
    let (number, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("duration {text:?}"));
    match unit {
        "s" | "" => number,
        "m" => number * 60,
        _ => panic!("duration unit in {text:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// One instruction of a Dockerfile: its keyword and arguments (continuation lines joined).
struct Instruction {
    keyword: String,
    args: String,
}

/// The Dockerfile's stages by name (`FROM … AS name`), each with its instructions after FROM.
fn dockerfile_stages() -> BTreeMap<String, (String, Vec<Instruction>)> {
    let text = read("Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages = BTreeMap::new();
    let mut stage: Option<String> = None;
    for line in logical.iter().filter(|line| !line.trim().is_empty()) {
        let (keyword, args) = line.split_once(' ').unwrap_or((line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => panic!("every stage is named: FROM {args}"),
            };
            stages.insert(name.clone(), (words[0].to_string(), Vec::new()));
            stage = Some(name);
        } else if let Some(stage) = &stage {
            stages.get_mut(stage).unwrap().1.push(Instruction {
                keyword,
                args: args.trim().to_string(),
            });
        }
    }
    stages
}

/// The paths the image reads its config from, in order: its `ENV TERN_CONFIG=`.
fn image_config_paths() -> Vec<String> {
    let stages = dockerfile_stages();
    let (_, runtime) = &stages["runtime"];
    let env = runtime
        .iter()
        .find(|i| i.keyword == "ENV" && i.args.starts_with("TERN_CONFIG="))
        .expect("the runtime stage sets TERN_CONFIG");
    env.args["TERN_CONFIG=".len()..]
        .split(',')
        .map(str::to_string)
        .collect()
}

#[test]
fn dockerfile_ports_user_health_check_and_config_paths() {
    let stages = dockerfile_stages();
    let (base, runtime) = &stages["runtime"];
    assert_eq!(base, "scratch", "the image holds the static binary alone");
    let find = |keyword: &str| -> &str {
        let found: Vec<&Instruction> = runtime.iter().filter(|i| i.keyword == keyword).collect();
        assert_eq!(found.len(), 1, "one {keyword} in the runtime stage");
        &found[0].args
    };
    let d = defaults();
    let exposed: BTreeSet<&str> = find("EXPOSE").split_whitespace().collect();
    let expected = [
        format!("{}/udp", d.turn),
        format!("{}/tcp", d.turn),
        format!("{}/tcp", d.tls),
        format!("{}/tcp", d.http),
    ];
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(exposed, expected, "EXPOSE matches tern's default ports");

    let user = find("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0, "the image runs as a non-root user");
    assert_eq!(find("ENTRYPOINT"), r#"["/tern"]"#);
    let health = find("HEALTHCHECK");
    assert!(
        health.ends_with(r#"CMD ["/tern", "health"]"#),
        "HEALTHCHECK runs tern health: {health}"
    );

    // tern's own file first, then where coTURN's image and package put theirs.
    assert_eq!(
        image_config_paths(),
        [
            "/etc/tern/turnserver.toml",
            "/etc/turnserver.conf",
            "/etc/coturn/turnserver.conf"
        ]
    );

    // Both ways to get the binary end in the same runtime stage, at the entrypoint's path.
    for target in ["prebuilt", "release"] {
        let (base, instructions) = &stages[target];
        assert_eq!(base, "runtime", "{target} builds on the runtime stage");
        assert!(
            instructions
                .iter()
                .any(|i| i.keyword == "COPY" && i.args.ends_with(" /tern")),
            "{target} copies the binary to /tern"
        );
    }
    let (_, build) = &stages["build"];
    assert!(
        build
            .iter()
            .any(|i| i.keyword == "RUN" && i.args.contains("+crt-static")),
        "the build stage links statically"
    );
}

#[test]
fn hadolint_passes_the_dockerfile() {
    if !tool("hadolint", &["--version"]) {
        return;
    }
    run_ok(Command::new("hadolint").arg(deploy_path("Dockerfile")));
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

/// The compose file's commented coTURN variant, uncommented.
fn compose_coturn_variant(compose: &str) -> String {
    let start = compose
        .find("Replace the `tern` service above with:")
        .expect("the compose file has the commented coTURN variant");
    let variant: String = compose[start..]
        .lines()
        .skip(1)
        .filter_map(|line| line.strip_prefix('#'))
        .filter(|line| !line.trim().is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    format!("services:\n{variant}")
}

/// Checks a compose `tern` service: host networking, config mounts where the image reads, and
/// time to drain before SIGKILL. Returns the mounted config's text, if it is in deploy/.
fn check_compose_tern(service: &Value, paths: &[String]) -> Option<String> {
    assert_eq!(str_at(service, &["network_mode"]), "host");
    assert_eq!(str_at(service, &["image"]), "tern:latest");
    let mut mounted = None;
    for volume in items(at(service, &["volumes"])) {
        let volume = volume.as_str().unwrap();
        let parts: Vec<&str> = volume.split(':').collect();
        let (source, target) = (parts[0], parts[1]);
        assert!(
            paths.iter().any(|path| path == target),
            "{target} is one of the paths the image reads ({paths:?})"
        );
        if let Ok(text) = std::fs::read_to_string(deploy_path(source)) {
            mounted = Some(text);
        }
    }
    let grace = duration_secs(str_at(service, &["stop_grace_period"]));
    if let Some(text) = &mounted {
        let drain = toml_u64(text, "drain-timeout");
        assert!(
            grace > drain,
            "stop_grace_period {grace}s leaves drain-timeout {drain}s time to run"
        );
    }
    mounted
}

#[test]
fn compose_file_mounts_probes_and_ports() {
    let text = read("docker-compose.yml");
    let compose = yaml(&text);
    let paths = image_config_paths();
    let tern = at(&compose, &["services", "tern"]);
    let config =
        check_compose_tern(tern, &paths).expect("the compose file mounts deploy/'s config");

    // The environment variables are tern's: TERN_<KEY> of a declared key.
    let env = at(tern, &["environment"]).as_mapping().unwrap();
    for name in env.keys().map(|k| k.as_str().unwrap()) {
        assert!(
            KEYS.iter().any(|key| key.env() == name),
            "{name} is not the variable of any tern key"
        );
    }
    let nofile = u64_at(tern, &["ulimits", "nofile", "hard"]);
    assert!(
        nofile >= sockets_needed(&config),
        "nofile {nofile} < sockets the config allows ({})",
        sockets_needed(&config)
    );

    // The app waits for the image's HEALTHCHECK, then asks tern's HTTP endpoint where the
    // mounted config puts it.
    let app = at(&compose, &["services", "app"]);
    assert_eq!(
        str_at(app, &["depends_on", "tern", "condition"]),
        "service_healthy"
    );
    assert_eq!(str_at(app, &["network_mode"]), "host");
    let http = match toml_key(&config, "http-listen") {
        Some(toml::Value::String(addr)) => addr,
        _ => Config::default().http_listen.to_string(),
    };
    let command = str_at(app, &["command", "0"]);
    assert!(
        command.contains(&format!("http://{http}{CREDENTIALS_PATH}")),
        "the app asks {http}: {command}"
    );
    assert!(command.contains("Authorization: Bearer"), "{command}");

    let variant = yaml(&compose_coturn_variant(&text));
    check_compose_tern(at(&variant, &["services", "tern"]), &paths);
}

/// podman-compose (from PyPI: Debian's has no `config`) accepts the file and its coTURN variant.
#[test]
fn podman_compose_accepts_the_compose_file() {
    if !tool("podman-compose", &["version"]) {
        return;
    }
    let text = read("docker-compose.yml");
    let variant = TempFile::new("compose-variant.yml", &compose_coturn_variant(&text));
    for file in [deploy_path("docker-compose.yml"), variant.0.clone()] {
        let output = run_ok(
            Command::new("podman-compose")
                .arg("-f")
                .arg(&file)
                .arg("config")
                .current_dir(deploy_path(""))
                .env("TURN_SECRET", "compose-check-secret")
                .env("TERN_API_KEY", "compose-check-api-key"),
        );
        assert!(output.contains("network_mode: host"), "{output}");
    }
    // The secrets are required: without them compose refuses rather than start tern on a
    // generated secret the app does not know.
    let output = Command::new("podman-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(deploy_path(""))
        .env_remove("TURN_SECRET")
        .env_remove("TERN_API_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("set TURN_SECRET"));
}

// ---------------------------------------------------------------------------------------------
// tern.service

/// `[Service]` (and the other sections') `Key=value` lines; a key may repeat.
fn unit_keys() -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in read("tern.service").lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            keys.entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
    }
    keys
}

#[test]
fn systemd_unit_has_the_keys_that_make_it_safe_and_graceful() {
    let keys = unit_keys();
    let one = |key: &str| -> &str {
        match keys.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("{key}: {other:?}"),
        }
    };
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("DynamicUser", "yes"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    assert!(one("ExecStart").starts_with("/usr/local/bin/tern --config /etc/tern/"));
    assert!(duration_secs(one("WatchdogSec")) > 0);
    // The notify socket is AF_UNIX: the address family filter must let it through.
    assert!(one("RestrictAddressFamilies").contains("AF_UNIX"));

    let config = read("turnserver.toml");
    let drain = toml_u64(&config, "drain-timeout");
    let stop = duration_secs(one("TimeoutStopSec"));
    assert!(
        stop > drain,
        "TimeoutStopSec {stop}s > drain-timeout {drain}s"
    );
    let nofile: u64 = one("LimitNOFILE").parse().unwrap();
    assert!(
        nofile >= sockets_needed(&config),
        "LimitNOFILE {nofile} < sockets the config allows ({})",
        sockets_needed(&config)
    );
}

/// `systemd-analyze verify` on the unit, with ExecStart pointing at the binary just built (it
/// checks that the command exists). Any warning fails the test: systemd only warns about an
/// unknown or misspelt key.
#[test]
fn systemd_analyze_verifies_the_unit() {
    if !tool("systemd-analyze", &["--version"]) {
        return;
    }
    let unit = read("tern.service").replace("/usr/local/bin/tern", env!("CARGO_BIN_EXE_tern"));
    let dir = std::env::temp_dir().join(format!("tern-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tern.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("tern.service"),
        "systemd-analyze verify: {:?}\n{stderr}",
        output.status
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// Every manifest in deploy/kubernetes/ (kustomization.yaml lists them) by kind.
fn kubernetes() -> BTreeMap<String, Value> {
    let kustomization = yaml(&read("kubernetes/kustomization.yaml"));
    let mut by_kind = BTreeMap::new();
    for file in items(at(&kustomization, &["resources"])) {
        let manifest = yaml(&read(&format!("kubernetes/{}", file.as_str().unwrap())));
        let kind = str_at(&manifest, &["kind"]).to_string();
        assert!(
            by_kind.insert(kind.clone(), manifest).is_none(),
            "one {kind}"
        );
    }
    let on_disk = std::fs::read_dir(deploy_path("kubernetes"))
        .unwrap()
        .count();
    assert_eq!(
        on_disk,
        by_kind.len() + 1,
        "kustomization.yaml lists every manifest"
    );
    by_kind
}

const CREDENTIALS_PATH: &str = "/api/v1/credentials";

#[test]
fn kubernetes_manifests_agree_with_tern_and_each_other() {
    let k8s = kubernetes();
    let d = defaults();
    let daemonset = &k8s["DaemonSet"];
    let pod = at(daemonset, &["spec", "template", "spec"]);
    assert_eq!(at(pod, &["hostNetwork"]), &Value::Bool(true));
    let container = at(pod, &["containers", "0"]);

    // Ports: tern's defaults, named, hostPort = containerPort (hostNetwork requires it).
    let mut ports = BTreeMap::new();
    for port in items(at(container, &["ports"])) {
        let number = u64_at(port, &["containerPort"]);
        assert_eq!(u64_at(port, &["hostPort"]), number);
        let protocol = str_at(port, &["protocol"]).to_string();
        ports.insert(str_at(port, &["name"]).to_string(), (number, protocol));
    }
    let expected: BTreeMap<String, (u64, String)> = [
        ("turn-udp", d.turn, "UDP"),
        ("turn-tcp", d.turn, "TCP"),
        ("turns", d.tls, "TCP"),
        ("http", d.http, "TCP"),
    ]
    .into_iter()
    .map(|(name, port, protocol)| (name.into(), (port.into(), protocol.into())))
    .collect();
    assert_eq!(ports, expected);

    // The HTTP endpoint listens on the node's address (the pod IP under hostNetwork, where
    // kubelet probes), on the port the probes and the Service use.
    let env: BTreeMap<&str, &Value> = items(at(container, &["env"]))
        .iter()
        .map(|var| (str_at(var, &["name"]), var))
        .collect();
    assert_eq!(
        str_at(env["HOST_IP"], &["valueFrom", "fieldRef", "fieldPath"]),
        "status.hostIP"
    );
    assert_eq!(
        str_at(env["TERN_HTTP_LISTEN"], &["value"]),
        format!("$(HOST_IP):{}", d.http)
    );
    // Secrets: every TERN_ variable is a key's, and each secretKeyRef names a key of the Secret.
    let secret = &k8s["Secret"];
    for (name, var) in &env {
        if *name == "HOST_IP" {
            continue;
        }
        assert!(KEYS.iter().any(|key| key.env() == *name), "{name}");
        if let Some(reference) = var.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
            assert_eq!(
                str_at(reference, &["name"]),
                str_at(secret, &["metadata", "name"])
            );
            let key = str_at(reference, &["key"]);
            at(secret, &["stringData", key]);
        }
    }

    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(str_at(container, &[probe, "httpGet", "path"]), path);
        assert_eq!(str_at(container, &[probe, "httpGet", "port"]), "http");
    }

    // The ConfigMap is mounted where the image reads tern's file first.
    let configmap = &k8s["ConfigMap"];
    let mount = at(container, &["volumeMounts", "0"]);
    let volume = items(at(pod, &["volumes"]))
        .iter()
        .find(|v| str_at(v, &["name"]) == str_at(mount, &["name"]))
        .expect("the mounted volume");
    assert_eq!(
        str_at(volume, &["configMap", "name"]),
        str_at(configmap, &["metadata", "name"])
    );
    let data = at(configmap, &["data"]).as_mapping().unwrap();
    let paths = image_config_paths();
    for file in data.keys().map(|k| k.as_str().unwrap()) {
        let mounted = format!("{}/{file}", str_at(mount, &["mountPath"]));
        assert_eq!(
            mounted, paths[0],
            "the ConfigMap's file is the image's first path"
        );
    }

    // SIGTERM drains for drain-timeout; Kubernetes must wait longer (the preStop wait too).
    let config = str_at(configmap, &["data", "turnserver.toml"]);
    let drain = toml_u64(config, "drain-timeout");
    let grace = u64_at(pod, &["terminationGracePeriodSeconds"]);
    // The preStop hook drains through `tern drain`, then waits.
    let hook: Vec<&str> = at(container, &["lifecycle", "preStop", "exec", "command"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&hook[..2], ["/tern", "drain"], "{hook:?}");
    let wait = hook.iter().position(|a| *a == "--wait").expect("--wait");
    let pre_stop: u64 = hook[wait + 1].parse().unwrap();
    assert!(
        grace > drain + pre_stop,
        "grace {grace} s, drain {drain} s + {pre_stop} s"
    );

    // Non-root, as the image.
    assert_eq!(u64_at(pod, &["securityContext", "runAsUser"]), 65534);
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]),
        &Value::Bool(true)
    );

    // The Service selects the pods and reaches the named HTTP port; the ServiceMonitor selects
    // the Service and scrapes that port's /metrics.
    let labels = at(daemonset, &["spec", "template", "metadata", "labels"]);
    let service = &k8s["Service"];
    for (key, value) in at(service, &["spec", "selector"]).as_mapping().unwrap() {
        assert_eq!(labels.get(key), Some(value), "Service selector {key:?}");
    }
    let service_port = at(service, &["spec", "ports", "0"]);
    assert_eq!(u64_at(service_port, &["port"]), u64::from(d.http));
    assert_eq!(str_at(service_port, &["targetPort"]), "http");
    let monitor = &k8s["ServiceMonitor"];
    let service_labels = at(service, &["metadata", "labels"]);
    for (key, value) in at(monitor, &["spec", "selector", "matchLabels"])
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            service_labels.get(key),
            Some(value),
            "ServiceMonitor selector {key:?}"
        );
    }
    let endpoint = at(monitor, &["spec", "endpoints", "0"]);
    assert_eq!(str_at(endpoint, &["port"]), str_at(service_port, &["name"]));
    assert_eq!(str_at(endpoint, &["path"]), "/metrics");
}

/// kubernetes-validate (schemas bundled) in strict mode; the ServiceMonitor (a CRD) and the
/// Kustomization have no bundled schema and are checked by the test above only.
#[test]
fn kubernetes_validate_accepts_the_manifests() {
    if !tool("kubernetes-validate", &["--version"]) {
        return;
    }
    let kustomization = yaml(&read("kubernetes/kustomization.yaml"));
    let mut command = Command::new("kubernetes-validate");
    command.arg("--strict");
    for file in items(at(&kustomization, &["resources"])) {
        command.arg(deploy_path(&format!(
            "kubernetes/{}",
            file.as_str().unwrap()
        )));
    }
    let output = run_ok(&mut command);
    for kind in ["configmap", "secret", "daemonset", "service"] {
        assert!(
            output.contains(&format!("passed for resource {kind}/")),
            "{output}"
        );
    }
}

#[test]
fn yamllint_passes_every_yaml_file() {
    if !tool("yamllint", &["--version"]) {
        return;
    }
    run_ok(
        Command::new("yamllint")
            .arg("--strict")
            .arg("-c")
            .arg(deploy_path(".yamllint.yml"))
            .arg(deploy_path("")),
    );
}

// ---------------------------------------------------------------------------------------------
// Metric names: the Grafana dashboard and the ServiceMonitor against the declarations

/// Each exposed metric name (`_total` on counters) with its label names.
fn declared_metrics() -> BTreeMap<String, BTreeSet<&'static str>> {
    tern::http::declared_metrics()
        .map(|def| {
            let labels = def.labels.iter().map(|label| label.name).collect();
            (def.exposed_name(), labels)
        })
        .collect()
}

/// Prometheus's own target labels, and the ServiceMonitor's `node`.
const TARGET_LABELS: &[&str] = &["instance", "job", "node"];

/// The identifiers in a PromQL expression or a legend format.
fn identifiers(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        .collect()
}

/// Label names an expression uses: in `by (…)` / `without (…)` and in `{name=…}` matchers.
fn labels_used(expr: &str) -> Vec<&str> {
    let mut labels = Vec::new();
    for keyword in ["by (", "without ("] {
        for (at, _) in expr.match_indices(keyword) {
            let rest = &expr[at + keyword.len()..];
            let group = &rest[..rest.find(')').unwrap()];
            labels.extend(group.split(',').map(str::trim));
        }
    }
    for (at, _) in expr.match_indices('{') {
        let rest = &expr[at + 1..];
        let matchers = &rest[..rest.find('}').unwrap()];
        for matcher in matchers.split(',') {
            let name = matcher.split(['=', '!', '~']).next().unwrap().trim();
            labels.push(name);
        }
    }
    labels
}

/// Every `(expr, legendFormat)` of the dashboard's panels and query variables.
fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                let legend = map.get("legendFormat").and_then(|l| l.as_str());
                out.push((expr.to_string(), legend.unwrap_or("").to_string()));
            }
            if let Some(query) = map.get("definition").and_then(|q| q.as_str()) {
                out.push((query.to_string(), String::new()));
            }
            map.values().for_each(|v| dashboard_queries(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[test]
fn grafana_dashboard_uses_declared_metric_and_label_names() {
    let declared = declared_metrics();
    let dashboard: serde_json::Value = serde_json::from_str(&read("grafana/tern.json")).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(
        queries.len() >= 20,
        "the dashboard's panels: {}",
        queries.len()
    );
    let mut used = BTreeSet::new();
    for (expr, legend) in &queries {
        let metrics: Vec<&str> = identifiers(expr)
            .into_iter()
            .filter(|word| word.starts_with("tern_"))
            .collect();
        assert!(!metrics.is_empty(), "{expr} reads no tern metric");
        let mut labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for metric in &metrics {
            let Some(metric_labels) = declared.get(*metric) else {
                panic!(
                    "{metric} (in {expr}) is not a declared metric: {:?}",
                    declared.keys()
                );
            };
            labels.extend(metric_labels);
            used.insert(metric.to_string());
        }
        let in_legend = legend
            .split("{{")
            .skip(1)
            .filter_map(|part| part.split("}}").next());
        for label in labels_used(expr).into_iter().chain(in_legend) {
            assert!(
                labels.contains(label),
                "label {label:?} of {expr} is not one of {labels:?}"
            );
        }
    }
    // The dashboard shows the allocations, the requests and the traffic at least.
    for metric in [
        "tern_allocations",
        "tern_requests_total",
        "tern_relayed_bytes_total",
    ] {
        assert!(used.contains(metric), "{metric} on the dashboard");
    }
}

#[test]
fn service_monitor_names_only_declared_metrics() {
    let declared = declared_metrics();
    let text = read("kubernetes/servicemonitor.yaml");
    for word in identifiers(&text)
        .into_iter()
        .filter(|w| w.starts_with("tern_"))
    {
        assert!(
            declared.contains_key(word),
            "{word} is not a declared metric"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Against a running tern

/// The paths the files point probes, scrapes and the app at are served by tern: GET answers
/// 200, and the credential endpoint answers (401 without a key, not 404).
#[test]
fn probe_scrape_and_credential_paths_are_served() {
    let k8s = kubernetes();
    let container = at(
        &k8s["DaemonSet"],
        &["spec", "template", "spec", "containers", "0"],
    );
    let mut paths: BTreeSet<String> = ["livenessProbe", "readinessProbe", "startupProbe"]
        .iter()
        .map(|probe| str_at(container, &[probe, "httpGet", "path"]).to_string())
        .collect();
    paths.insert(str_at(&k8s["ServiceMonitor"], &["spec", "endpoints", "0", "path"]).to_string());
    let tern = Tern::start(&format!("api-keys = [\"{API_KEY}\"]"));
    for path in &paths {
        let response = ureq::get(&tern.url(path)).call();
        assert!(
            response.as_ref().is_ok_and(|r| r.status() == 200),
            "GET {path}: {response:?}"
        );
    }
    let response = ureq::post(&tern.url(CREDENTIALS_PATH)).send_empty();
    assert!(
        matches!(response, Err(ureq::Error::StatusCode(401))),
        "POST {CREDENTIALS_PATH} without a key: {response:?}"
    );
    // With a key, as the compose file's app sends it.
    let response = ureq::post(&tern.url(CREDENTIALS_PATH))
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .send_json(serde_json::json!({"user": "alice", "ttl": 3600}));
    assert!(
        response.as_ref().is_ok_and(|r| r.status() == 200),
        "POST {CREDENTIALS_PATH}: {response:?}"
    );
}

const API_KEY: &str = "deploy-check-api-key";

/// The example configs load as tern reads them: `tern config check` exits 0.
#[test]
fn example_configs_pass_tern_config_check() {
    let k8s = kubernetes();
    let configmap = str_at(&k8s["ConfigMap"], &["data", "turnserver.toml"]).to_string();
    for (name, text) in [
        ("deploy/turnserver.toml", read("turnserver.toml")),
        ("deploy/kubernetes/configmap.yaml", configmap),
    ] {
        let file = TempFile::new("example-config.toml", &text);
        let output = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["config", "check"])
            .arg(&file.0)
            .env_remove("TERN_CONFIG")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------

/// Whether `program` runs (the rule of tests/common/tools.rs for a missing one).
fn tool(program: &str, args: &[&str]) -> bool {
    let found = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    required(found, program, "scripts/install-test-deps.sh installs it")
}

/// Runs `command`, failing the test on a non-zero exit with its output; its stdout + stderr.
fn run_ok(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{command:?}: {:?}\n{text}",
        output.status
    );
    text
}
