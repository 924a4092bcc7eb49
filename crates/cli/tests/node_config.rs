//! The node config is refused, before anything starts, when it names a setting that its
//! config source never reads (such a node would otherwise serve an empty store without a
//! word), or a value out of range; and what it says of the process's threads holds.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::{pylon_command, Pylon, WAIT};

/// Every listener on a free port, so that a node that is not refused starts cleanly.
const LISTENERS: &str =
    "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n  https: {listen: []}\n\
                         control: {listen: \"127.0.0.1:0\"}\nmetrics: {listen: \"127.0.0.1:0\"}\n\
                         admin: {listen: \"127.0.0.1:0\"}\n";

const ROUTES: &str = "routes:\n  - {id: r, uri: /*, upstream: {nodes: {\"127.0.0.1:1980\": 1}}}\n";

/// A temp dir holding `node.yaml` (the listeners and `config`) and `apisix.yaml`.
fn node_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.yaml"),
        format!("{LISTENERS}config:\n{config}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("apisix.yaml"), ROUTES).unwrap();
    dir
}

/// `pylon run -c node.yaml` in `dir`, which must exit on its own (bounded): exit code, stderr.
fn run_refused(dir: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["run", "-c", "node.yaml"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "pylon started instead of refusing the config; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const FILE_UNDER_EMBEDDED: &str = "config.file: set, but config.source is embedded; \
                                   config.file is read only with config.source: yaml";

#[test]
fn a_file_without_source_yaml_is_refused_by_run() {
    // The default source is embedded: this is the bench configs' mistake.
    let dir = node_dir("  file: apisix.yaml\n");
    let (code, stderr) = run_refused(dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(FILE_UNDER_EMBEDDED), "{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "nothing was started: no data dir"
    );
}

#[test]
fn a_file_without_source_yaml_is_refused_by_validate() {
    let dir = node_dir("  source: embedded\n  file: apisix.yaml\n");
    let (code, stdout, stderr) = pylon_command(dir.path(), &["validate", "-c", "node.yaml"], &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains(FILE_UNDER_EMBEDDED), "{stderr}");

    let dir = node_dir(
        "  source: etcd\n  file: apisix.yaml\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n",
    );
    let (code, _, stderr) = pylon_command(
        dir.path(),
        &["validate", "-c", "node.yaml", "apisix.yaml"],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "config.file: set, but config.source is etcd; \
             config.file is read only with config.source: yaml"
        ),
        "{stderr}"
    );
}

#[test]
fn etcd_settings_without_source_etcd_are_refused() {
    let dir = node_dir("  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n");
    let (code, stderr) = run_refused(dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "config.etcd: set, but config.source is embedded; \
             config.etcd is read only with config.source: etcd"
        ),
        "{stderr}"
    );

    // Both mistakes at once are both reported.
    let dir = node_dir("  source: yaml\n  file: apisix.yaml\n  etcd: {prefix: /x}\n");
    let (code, _, stderr) = pylon_command(dir.path(), &["validate", "-c", "node.yaml"], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "config.etcd: set, but config.source is yaml; \
             config.etcd is read only with config.source: etcd"
        ),
        "{stderr}"
    );
}

#[test]
fn durations_too_long_to_keep_are_refused_with_their_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.yaml"),
        LISTENERS.replace(
            "proxy:\n",
            "proxy:\n  client_header_timeout: 1e300\n  upstream: {connect_timeout: 1e20}\n",
        ),
    )
    .unwrap();
    let (code, stderr) = run_refused(dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    for expected in [
        "proxy.client_header_timeout: must be at most 31536000 seconds (a year)",
        "proxy.upstream.connect_timeout: must be at most 31536000 seconds (a year)",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
    }
}

#[test]
fn settings_of_the_chosen_source_are_accepted() {
    let dir = node_dir("  source: yaml\n  file: apisix.yaml\n");
    let (code, stdout, stderr) = pylon_command(dir.path(), &["validate", "-c", "node.yaml"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("apisix.yaml: valid (1 routes"), "{stdout}");

    let dir = node_dir("  source: etcd\n  etcd: {endpoints: [\"http://127.0.0.1:2379\"]}\n");
    let (code, _, stderr) = pylon_command(
        dir.path(),
        &["validate", "-c", "node.yaml", "apisix.yaml"],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn the_shipped_node_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let routes = root.join("conf/apisix.yaml");
    for node in [
        "conf/config.yaml",
        "bench/pylon-node.yaml",
        "bench/protocols-node.yaml",
    ] {
        let node = root.join(node);
        let (code, stdout, stderr) = pylon_command(
            &root,
            &[
                "validate",
                "-c",
                node.to_str().unwrap(),
                routes.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, Some(0), "{}: {stdout}{stderr}", node.display());
    }
}

/// A thread's nice value, from `/proc/<pid>/task/<tid>/stat` (field 19).
fn nice(stat: &str) -> i32 {
    let after_name = &stat[stat.rfind(')').expect("stat has a name") + 2..];
    after_name.split(' ').nth(16).unwrap().parse().unwrap()
}

#[test]
fn the_control_side_runs_below_the_workers_priority() {
    let base = nice(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let pylon = Pylon::start(ROUTES, "  workers: 2\n  control_nice: 7\n");
    let tasks = format!("/proc/{}/task", pylon.pid());
    let mut workers = 0;
    for task in std::fs::read_dir(&tasks).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap();
        let stat = std::fs::read_to_string(task.join("stat")).unwrap();
        // The workers and the access log's writer, which they hand their lines to, keep the
        // process's priority; the control thread and the threads it starts run below it.
        if name.starts_with("pylon-worker") || name.starts_with("pylon-access") {
            workers += usize::from(name.starts_with("pylon-worker"));
            assert_eq!(nice(&stat), base, "{name}");
        } else {
            assert_eq!(nice(&stat), (base + 7).min(19), "{name}");
        }
    }
    assert_eq!(workers, 2, "both workers found in {tasks}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.yaml"),
        LISTENERS.replace("proxy:\n", "proxy:\n  control_nice: 20\n"),
    )
    .unwrap();
    let (code, stderr) = run_refused(dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("proxy.control_nice: must be 0..19"),
        "{stderr}"
    );
}
