//! `pylon config dump|diff|apply`: the gateway's whole configuration as a standalone YAML
//! document (the format of `conf/apisix.yaml`), so that a team can keep it in git, review a
//! change as a diff, and apply it in one atomic step through any node's Admin API.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::admin_client::AdminClient;

const CONFIG_PATH: &str = "/pylon/admin/config";

/// Prints the whole configuration as YAML.
pub fn dump(client: &AdminClient) -> anyhow::Result<()> {
    let answer = client.request("GET", CONFIG_PATH, None)?.json()?;
    let revision = answer.get("revision").cloned().unwrap_or(Value::Null);
    let config = answer
        .get("config")
        .context("the Admin API's answer has no `config`")?;
    print!(
        "# pylon config dump, store revision {revision}\n{}",
        serde_yaml::to_string(config)?
    );
    Ok(())
}

/// Shows what `apply` would change; changes nothing.
pub fn diff(client: &AdminClient, file: &Path, prune: bool) -> anyhow::Result<()> {
    let answer = post(client, file, prune, true)?;
    print_changes(&answer, "would change");
    Ok(())
}

/// Makes the gateway's configuration what `file` says, in one transaction.
pub fn apply(client: &AdminClient, file: &Path, prune: bool) -> anyhow::Result<()> {
    let answer = post(client, file, prune, false)?;
    print_changes(&answer, "changed");
    Ok(())
}

fn post(client: &AdminClient, file: &Path, prune: bool, dry_run: bool) -> anyhow::Result<Value> {
    let document = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let path = format!("{CONFIG_PATH}?dry_run={dry_run}&prune={prune}");
    client
        .request("POST", &path, Some(&document))?
        .json()
        .with_context(|| format!("{} was not applied", file.display()))
}

fn print_changes(answer: &Value, verb: &str) {
    let changes = answer
        .get("changes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for change in changes {
        let op = change.get("op").and_then(Value::as_str).unwrap_or("?");
        let key = change.get("key").and_then(Value::as_str).unwrap_or("?");
        let sign = match op {
            "create" => '+',
            "delete" => '-',
            _ => '~',
        };
        println!("{sign} {key} ({op})");
    }
    let revision = answer.get("revision").cloned().unwrap_or(Value::Null);
    match changes.len() {
        0 => println!("no changes (store revision {revision})"),
        n => println!("{n} resource(s) {verb} (store revision {revision})"),
    }
}
