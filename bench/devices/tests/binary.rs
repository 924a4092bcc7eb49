//! The `pylon-devices` binary against the fake gateway: its JSON lines and its exit.

mod fake_gateway;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use fake_gateway::{FakeGateway, GatewayOptions};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn spawn(gateway: &FakeGateway, count: usize, mode: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pylon-devices"))
        .args(["--addr", &gateway.addr.to_string(), "--app", "app"])
        .args([
            "--count",
            &count.to_string(),
            "--token",
            "t",
            "--tags",
            "a,b",
        ])
        .args(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

fn next_line(stdout: &mut BufReader<ChildStdout>) -> Value {
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn expect_id_times_the_push_from_go() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let report = std::env::temp_dir().join(format!("pylon-devices-{}.jsonl", std::process::id()));
    let report_arg = report.to_str().unwrap();
    let (mut child, mut stdout) = spawn(
        &gateway,
        50,
        &["--expect-id", "m-1", "--report", report_arg],
    );
    let connected = next_line(&mut stdout);
    assert_eq!(connected["connected"], 50);
    assert_eq!(connected["failed"], 0);
    assert_eq!(
        gateway.recorded(|r| r.auths[0].0["tags"].clone()),
        json!(["a", "b"])
    );

    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    for i in 0..50 {
        assert!(gateway.push(
            "app",
            &format!("dev-{i}"),
            json!({ "id": "m-1", "data": {} })
        ));
    }
    let timing = next_line(&mut stdout);
    assert_eq!(timing["id"], "m-1");
    assert_eq!(timing["received"], 50);
    assert_eq!(timing["expected"], 50);
    assert!(timing["first_ms"].as_f64().unwrap() <= timing["last_ms"].as_f64().unwrap());
    assert!(child.wait().unwrap().success());

    let lines = std::fs::read_to_string(&report).unwrap();
    std::fs::remove_file(&report).unwrap();
    let lines: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    assert_eq!(lines[7]["device"], "dev-7");
    assert_eq!(lines[7]["connected"], true);
    assert!(lines.iter().all(|line| line["ms"].is_number()));
    assert!(gateway.wait(WAIT, |r| r.acks.values().map(Vec::len).sum::<usize>() == 50));
}

#[test]
fn count_pushes_reports_each_second_and_the_total() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let (mut child, mut stdout) = spawn(&gateway, 5, &["--count-pushes", "3"]);
    assert_eq!(next_line(&mut stdout)["connected"], 5);
    for i in 0..10 {
        let device = format!("dev-{}", i % 5);
        assert!(gateway.push("app", &device, json!({ "id": format!("m-{i}"), "data": i })));
    }
    let seconds: Vec<Value> = (0..3).map(|_| next_line(&mut stdout)).collect();
    assert_eq!(seconds[2]["second"], 3);
    let total = next_line(&mut stdout);
    assert_eq!(total["seconds"], 3);
    // Loopback delivers ten small pushes well within the three-second window.
    assert_eq!(total["pushes"], 10);
    let per_second: u64 = seconds.iter().map(|s| s["pushes"].as_u64().unwrap()).sum();
    assert_eq!(per_second, 10);
    assert!(child.wait().unwrap().success());
}

#[test]
fn hold_secs_exits_after_holding() {
    let gateway = FakeGateway::start(GatewayOptions::node("gw-1"));
    let (mut child, mut stdout) = spawn(&gateway, 3, &["--hold-secs", "0"]);
    assert_eq!(next_line(&mut stdout)["connected"], 3);
    assert!(child.wait().unwrap().success());
}

#[test]
fn ws_speaks_websocket() {
    let gateway = FakeGateway::start(GatewayOptions {
        websocket: true,
        ..GatewayOptions::node("gw-ws")
    });
    let (mut child, mut stdout) = spawn(&gateway, 4, &["--ws", "/push", "--hold-secs", "0"]);
    assert_eq!(next_line(&mut stdout)["connected"], 4);
    assert!(child.wait().unwrap().success());
    assert_eq!(gateway.recorded(|r| r.auths.len()), 4);
}
