//! `tenantflow check-config` and `agent --config`: the lab's real config and snapshot are
//! explained exactly; bad input exits 64 naming the field and the fix.

use std::process::Command;

use tenantflow_tests::{agent_bin, prefix, require_root, Topology};
use xtask::lab::manifest;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .expect("run tenantflow");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lab's files, written for a lab that is not up (no namespaces needed).
struct Files(String);

impl Files {
    fn write(tag: &str) -> Self {
        require_root(); // the files live under /run like a real lab's
        let t = Topology::standard(&prefix(tag));
        manifest::write(&t).expect("write lab files");
        Files(t.prefix)
    }
    fn config(&self) -> String {
        manifest::config_path(&self.0).display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        manifest::remove(&self.0);
    }
}

#[test]
fn the_lab_config_and_snapshot_are_explained() {
    let f = Files::write("cc");
    let (code, out, err) = run(&["check-config", &f.config()]);
    assert_eq!(code, 0, "{err}");
    let tail: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("identity snapshot"))
        .collect();
    assert_eq!(
        tail,
        [
            "identity snapshot: 8 Pod, 5 Namespace, 2 Node, 1 Service",
            "  namespace alpha-jobs: tenant alpha, 1 pods",
            "  namespace alpha-web: tenant alpha, 2 pods",
            "  namespace beta-api: tenant beta, 2 pods",
            "  namespace egress-system: tenant platform, 1 pods",
            "  namespace kube-system: tenant platform, 2 pods",
            "  gateway pods in egress-system: 1",
        ]
    );
    assert!(
        out.starts_with(&format!("{}: valid\n", f.config())),
        "{out}"
    );
    assert!(out.contains("egress exempt: 10.225.0.0/24\n"), "{out}");
}

#[test]
fn bad_config_and_bad_snapshot_exit_64_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("tfcfg{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let snap = write(
        "snap.yaml",
        "kind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: web, namespace: a}, spec: {containers: []}, status: {podIP: 10.1.2.300}}\n",
    );
    let cases = [
        (
            write("a.yaml", "egress:\n  proxies: [\"10.0.0.0/33:80\"]\n"),
            "field `egress.proxies[0]`",
        ),
        (
            write("b.yaml", "tenancy:\n  namespace_regex: '^[a-z]+-'\n"),
            "has no named group `tenant`",
        ),
        (
            write("c.yaml", "network:\n  pod_cidr: [10.244.0.0/16]\n"),
            "field `network.pod_cidr`: unknown field `pod_cidr`, expected one of",
        ),
        (
            write("d.yaml", &format!("identity:\n  snapshot: {snap}\n")),
            "items[0] (Pod web): field `status.podIP`: \"10.1.2.300\" is not an IP address",
        ),
        (
            dir.join("missing.yaml").display().to_string(),
            "cannot read it",
        ),
    ];
    for (file, want) in &cases {
        let (code, out, err) = run(&["check-config", file]);
        assert_eq!((code, out.as_str()), (64, ""), "{file}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{file}\n got: {err}\nwant: {want}"
        );
        // The agent refuses the same file before touching the kernel.
        let (code, _, err) = run(&["agent", "--listen", "127.0.0.1:0", "--config", file]);
        assert_eq!(code, 64, "agent --config {file}: {err}");
        assert!(err.contains(want), "agent --config {file}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_otlp_and_all_node_flags_exit_64_naming_the_flag_and_the_fix() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--otlp-endpoint", "https://otel:4317"],
            "--otlp-endpoint https://otel:4317: https needs --otlp-ca",
        ),
        (
            &["--otlp-endpoint", "otel:4317"],
            "--otlp-endpoint otel:4317: it must start with http:// or https://",
        ),
        (
            &[
                "--otlp-endpoint",
                "http://otel:4317",
                "--otlp-header",
                "authorization: Bearer s3cret",
            ],
            "--otlp-header authorization: expected NAME=VALUE",
        ),
        (
            &[
                "--otlp-endpoint",
                "https://otel:4317",
                "--otlp-ca",
                "/nonexistent/ca.crt",
            ],
            "--otlp-ca /nonexistent/ca.crt:",
        ),
        (
            &["--otlp-endpoint", "http://otel:4317", "--otlp-queue", "0"],
            "--otlp-queue and --otlp-batch must be at least 1",
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec!["agent", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let (code, _, err) = run(&args);
        assert_eq!(code, 64, "{flags:?}: {err}");
        assert!(err.contains(want), "{flags:?}\n got: {err}\nwant: {want}");
        assert!(
            !err.contains("s3cret"),
            "a header value is never echoed: {err}"
        );
    }
    let (code, _, err) = run(&["flows", "--all-nodes"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("give --index URL (or TENANTFLOW_INDEX)"),
        "{err}"
    );
    let (code, _, err) = run(&["flows", "--all-nodes", "--index", "nowhere"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--index \"nowhere\": not a URL"), "{err}");
}

/// A port that accepts connections and never answers, on loopback.
fn silent_server() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

#[test]
fn the_cli_gives_up_on_an_agent_that_never_answers_and_says_why() {
    let (_held, url) = silent_server();
    let start = std::time::Instant::now();
    let (code, _, err) = run(&["flows", "--agent", &url, "--timeout", "1s"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did not answer in time"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_malformed_agent_url_is_bad_input_named_with_the_fix() {
    let (code, _, err) = run(&["flows", "--agent", "http://[::1"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--agent \"http://[::1\": not a URL"), "{err}");
    assert!(err.contains("http://127.0.0.1:9991"), "{err}");
    let (code, _, err) = run(&["agent", "--listen", "nowhere"]);
    assert_eq!(code, 64, "bad flag values exit 64 too: {err}");
}

/// `tenantflow flows --follow | head -1`: the reader goes away; the CLI stops quietly.
#[test]
fn follow_into_a_closed_pipe_exits_quietly() {
    use std::io::{Read, Write};
    let (l, url) = silent_server();
    std::thread::spawn(move || {
        let mut n = 0u64;
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            n += 1;
            let body = format!(
                r#"[{{"iface":"veth10","ifindex":4,"role":"pod","hook":"ingress","proto":"udp","src":"10.244.1.10","dst":"10.0.0.10","src_port":5000,"dst_port":53,"packets":{n},"bytes":{n},"tcp_flags":0,"first_seen_ms":0,"last_seen_ms":0}}]"#
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    for output in ["json", "table"] {
        let mut cli = Command::new(agent_bin())
            .args(["flows", "--agent", &url, "--observations", "--follow"])
            .args(["--interval", "20ms", "-o", output])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = cli.stdout.take().unwrap();
        let mut first = [0u8; 16];
        out.read_exact(&mut first).unwrap();
        drop(out); // `head` has what it wanted and exits
        let status = cli.wait().unwrap();
        let mut err = String::new();
        cli.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!(status.code(), Some(0), "{output}: {err}");
        assert!(!err.contains("panicked"), "{output}: {err}");
    }
}

/// Inputs that would never end or take the parser forever are refused before parsing.
#[test]
fn devices_and_absurdly_nested_files_are_refused_before_parsing() {
    let (code, _, err) = run(&["check-config", "/dev/zero"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("it is a device, not a regular file"), "{err}");
    let deep = std::env::temp_dir().join(format!("tf-deep-{}.yaml", std::process::id()));
    std::fs::write(
        &deep,
        format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", deep.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("it nests 65 levels"), "{err}");
    let _ = std::fs::remove_file(deep);
}

/// A later duplicate key would silently win, and aliases can make a small file stand for
/// gigabytes: both are refused before parsing, naming the place.
#[test]
fn duplicate_keys_and_expanding_aliases_exit_64_naming_them() {
    let dir = std::env::temp_dir().join(format!("tf-shape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("dup.yaml");
    std::fs::write(&cfg, "sensitive:\n  node_ports: {22: ssh, 22: other}\n").unwrap();
    let (code, _, err) = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("key \"22\" appears twice in one mapping (line 2, column 15)"),
        "{err}"
    );
    // A snapshot of 20 aliases doubling a pod: over a million pods from under 2 KB.
    let snap = dir.join("anchors.yaml");
    let mut y = String::from(
        "kind: List\nbase: &p0 {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: b}, status: {podIP: 10.244.1.5}}\n",
    );
    for i in 1..=20 {
        y.push_str(&format!("p{i}: &p{i} [*p{j}, *p{j}]\n", j = i - 1));
    }
    y.push_str("items: *p20\n");
    std::fs::write(&snap, &y).unwrap();
    let cfg = dir.join("snap.yaml");
    std::fs::write(&cfg, format!("identity:\n  snapshot: {}\n", snap.display())).unwrap();
    let (code, _, err) = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("it uses a YAML alias (line 3, column 10): aliases (*name) repeating parts of it are not accepted"),
        "{err}"
    );
    assert!(err.contains("anchors.yaml"), "names the file: {err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `tenantflow index` refuses what cannot work, before touching the API: a config naming
/// a snapshot (the index watches the API), no API to watch, a bad follower list for an
/// agent.
#[test]
fn the_index_and_index_mode_refuse_bad_input_with_exit_64() {
    let f = Files::write("cix");
    let (code, _, err) = run(&["index", "--config", &f.config()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(
            "identity.snapshot: the index watches the Kubernetes API; remove identity.snapshot"
        ),
        "{err}"
    );
    let empty = std::env::temp_dir().join(format!("tf-empty-kubeconfig-{}", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    let out = Command::new(agent_bin())
        .args(["index", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &empty)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("the index needs the Kubernetes API"), "{err}");
    let (code, _, err) = run(&["agent", "--identity-index", "tenantflow-index:9993"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--identity-index tenantflow-index:9993: give the index's base URL"),
        "{err}"
    );
    std::fs::remove_file(&empty).unwrap();
}

/// A snapshot as `kubectl get … -o yaml` writes it (block style), of `pods` real-size pods.
fn kubectl_yaml(pods: u64) -> String {
    use tenantflow_tests::kube_api::{realistic_pod, Size};
    let size = Size {
        pods,
        nodes: 10,
        namespaces: 10,
        services: 0,
    };
    let mut items: Vec<serde_json::Value> = (0..pods)
        .map(|i| serde_json::from_str(&realistic_pod(&size, i)).unwrap())
        .collect();
    items.extend((0..10).map(|i| {
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{i}")}})
    }));
    let list = serde_json::json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}});
    serde_norway::to_string(&list).unwrap()
}

/// Peak RSS of `tenantflow check-config` on a config naming `snapshot`, and its output.
fn check_peak(dir: &std::path::Path, snapshot: &std::path::Path) -> (u64, String) {
    let cfg = dir.join(format!(
        "{}.cfg.yaml",
        snapshot.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &cfg,
        format!("identity:\n  snapshot: {}\n", snapshot.display()),
    )
    .unwrap();
    let mut child = std::process::Command::new(agent_bin())
        .args(["check-config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        out
    });
    // VmHWM only grows: its last reading while the process lives is its peak, up to the
    // last few milliseconds (printing the answer). A zombie has none, and a reaped child's
    // ru_maxrss counts the test process it was forked from.
    let pid = child.id();
    let mut peak_kib = 0;
    let status = loop {
        if let Some(kib) = tenantflow_tests::proc_status(pid, "VmHWM") {
            peak_kib = kib;
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let out = reader.join().unwrap();
    assert!(status.success(), "{out}");
    assert!(peak_kib > 0, "no peak RSS read for check-config");
    (peak_kib * 1024, out)
}

/// A snapshot is decoded item by item by a parser that builds no tree: peak memory grows
/// with the file (which is read whole) and the store, not with the file times the cost of
/// a YAML tree (19 to 47 times the file before).
#[test]
fn snapshot_memory_follows_the_file_not_a_yaml_tree_of_it() {
    let dir = std::env::temp_dir().join(format!("tf-snapmem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let small = dir.join("small.yaml");
    let big = dir.join("big.yaml");
    std::fs::write(&small, kubectl_yaml(400)).unwrap();
    std::fs::write(&big, kubectl_yaml(1_600)).unwrap();
    let growth = std::fs::metadata(&big).unwrap().len() - std::fs::metadata(&small).unwrap().len();
    let (small_peak, out) = check_peak(&dir, &small);
    assert!(
        out.contains("identity snapshot: 400 Pod, 10 Namespace"),
        "{out}"
    );
    let (big_peak, out) = check_peak(&dir, &big);
    eprintln!("snapshot peaks: {small_peak} -> {big_peak} bytes, file growth {growth}");
    assert!(
        out.contains("identity snapshot: 1600 Pod, 10 Namespace"),
        "{out}"
    );
    // The file is held once while it is parsed, and decoding adds about half of it.
    assert!(
        big_peak.saturating_sub(small_peak) < 2 * growth,
        "peak grew {} KiB for {} KiB more file",
        big_peak.saturating_sub(small_peak) / 1024,
        growth / 1024
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A fake agent on a free port: each connection gets `answer(n)` written after its request
/// is read (n counts connections from 0).
fn fake_agent(answer: impl Fn(u64, &mut std::net::TcpStream) + Send + 'static) -> String {
    use std::io::Read;
    let (l, url) = silent_server();
    std::thread::spawn(move || {
        for (n, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            answer(n as u64, &mut s);
        }
    });
    url
}

const OBSERVATION: &str = r#"{"iface":"veth10","ifindex":4,"role":"pod","hook":"ingress","proto":"udp","src":"10.244.1.10","dst":"10.0.0.10","src_port":5000,"dst_port":53,"packets":1,"bytes":1,"tcp_flags":0,"first_seen_ms":0,"last_seen_ms":0}"#;

/// What a broken or hostile server can do to the CLI, each stopped with the reason: an
/// endless body, a paging marker that repeats, pages that come slowly forever.
#[test]
fn an_endless_looping_or_dripping_answer_is_cut_off_with_the_reason() {
    use std::io::Write;
    let endless = fake_agent(|_, s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n[");
        let chunk = format!("{OBSERVATION},").repeat(1000);
        while s.write_all(chunk.as_bytes()).is_ok() {}
    });
    let (code, _, err) = run(&["flows", "--agent", &endless, "--observations"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sent more than 64 MiB in one page"), "{err}");

    let looping = fake_agent(|_, s| {
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-tenantflow-next-after: 5\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]"
        );
    });
    let (code, _, err) = run(&["flows", "--agent", &looping]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("sent next-page marker 5 after 5: pages would repeat forever"),
        "{err}"
    );

    // Each page promptly answered but slowly, forever: --timeout bounds the whole answer.
    let dripping = fake_agent(|n, s| {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-tenantflow-next-after: {}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]",
            n + 1
        );
    });
    let (code, _, err) = run(&["flows", "--agent", &dripping, "--timeout", "2s"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "did not answer in time: one answer, every page of it, must arrive within --timeout 2s"
        ),
        "{err}"
    );
}

/// `--follow` while the agent restarts: nothing listens, then it answers; the CLI says it
/// is waiting (once) and goes on with the records, instead of exiting on the first refusal.
#[test]
fn follow_waits_for_a_restarting_agent() {
    use std::io::{BufRead, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut cli = Command::new(agent_bin())
        .args([
            "flows",
            "--agent",
            &format!("http://{addr}"),
            "--observations",
        ])
        .args(["--follow", "--interval", "100ms", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(cli.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(
        line.contains("nothing accepted the connection")
            && line.contains("retrying until it answers"),
        "{line}"
    );
    // The agent is back.
    let l = std::net::TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = format!("[{OBSERVATION}]");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let mut out = std::io::BufReader::new(cli.stdout.take().unwrap());
    let mut record = String::new();
    out.read_line(&mut record).unwrap();
    assert!(record.contains("\"src_port\":5000"), "{record}");
    line.clear();
    err.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "tenantflow: the agent answers again");
    let _ = cli.kill();
    let _ = cli.wait();
}

/// `flows --follow | head -1` with nothing changing: the CLI notices the reader left
/// without waiting for a change to print.
#[test]
fn follow_stops_when_the_reader_leaves_even_if_nothing_changes() {
    use std::io::{BufRead, Write};
    let url = fake_agent(|_, s| {
        let body = format!("[{OBSERVATION}]");
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let mut cli = Command::new(agent_bin())
        .args(["flows", "--agent", &url, "--observations", "--follow"])
        .args(["--interval", "1h", "-o", "table"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(cli.stdout.take().unwrap());
    let mut header = String::new();
    out.read_line(&mut header).unwrap();
    drop(out);
    // With an hour between polls, only noticing the closed pipe ends it.
    let ended = tenantflow_tests::eventually(std::time::Duration::from_secs(10), || {
        cli.try_wait().unwrap()
    });
    assert_eq!(ended.and_then(|s| s.code()), Some(0), "still running");
}

/// Egress rules by name and the outbound type are explained in words, each with how it
/// is judged.
#[test]
fn name_rules_and_the_outbound_type_are_explained() {
    let dir = std::env::temp_dir().join(format!("tfnames{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        "egress:\n  proxies: [proxy.corp.example, 10.50.0.4:3128]\n  exempt: [\"*.blob.core.windows.net\", 10.60.0.0/16]\n  outbound_type: user_defined_routing\n",
    )
    .unwrap();
    let (code, out, err) = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "egress proxy/firewall: 10.50.0.4/32 port 3128",
        "egress proxy/firewall by name: proxy.corp.example (an address its pod resolved from such a name)",
        "egress exempt: 10.60.0.0/16",
        "egress exempt by name: *.blob.core.windows.net (an address its pod resolved from such a name; one dialled without resolving stays judged by address)",
        "outbound: user-defined routing: every egress flow passes the firewall (mediated)",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in:\n{out}");
    }
    std::fs::write(&cfg, "egress:\n  exempt: [\"*.a.*\"]\n").unwrap();
    let (code, _, err) = run(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(
        err.contains("field `egress.exempt[0]`") && err.contains("`*` is allowed only"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
