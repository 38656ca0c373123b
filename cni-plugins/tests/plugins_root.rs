//! Privileged integration tests of our plugin binaries (`loopback`,
//! `host-local`, `bridge`, `portmap`, `bandwidth`), run as real processes
//! against real network namespaces, bridges and iptables, side by side
//! with Debian's reference plugins in /usr/lib/cni.
//!
//! Needs root; otherwise every trial reports itself as ignored with the
//! reason. Each trial owns its namespaces, bridge (`cnit*`) and subnet
//! (inside 10.240.0.0/16 and fd00:240::/32), so trials may run in parallel;
//! guards remove what they made however a trial ends.

mod support;

use std::net::IpAddr;

use anyhow::{Context, ensure};
use libtest_mimic::Arguments;
use serde_json::json;

use support::*;

#[path = "plugins_root/chains.rs"]
mod chains;

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        root_trial("loopback_add_check_del", loopback_add_check_del),
        root_trial("host_local_matches_reference", host_local_matches_reference),
        root_trial(
            "host_local_shares_state_with_reference",
            host_local_shares_state_with_reference,
        ),
        root_trial("chain_matches_reference", chains::chain_matches_reference),
        root_trial(
            "bridge_options_match_reference",
            chains::bridge_options_match_reference,
        ),
        root_trial(
            "chain_state_crosses_plugin_sets",
            chains::chain_state_crosses_plugin_sets,
        ),
        root_trial(
            "connectivity_and_clean_del",
            chains::connectivity_and_clean_del,
        ),
        root_trial(
            "bad_input_codes_and_nothing_left",
            chains::bad_input_codes_and_nothing_left,
        ),
        root_trial(
            "add_del_500_cycles_leak_nothing",
            chains::add_del_500_cycles_leak_nothing,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

fn loopback_add_check_del() -> anyhow::Result<()> {
    let ns = Netns::create("lo")?;
    let config = json!({"cniVersion": "1.0.0", "name": "cnit-lo", "type": "loopback"});
    let env = ns.env("cnitlo", "eth0");
    let add = run_plugin(&ours(), "loopback", "ADD", &env, &config)?.success()?;
    let ips: Vec<String> = add["ips"]
        .as_array()
        .context("ips")?
        .iter()
        .map(|ip| ip["address"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(ips == ["127.0.0.1/8", "::1/128"], "ADD result: {add}");
    ensure!(add["interfaces"][0]["name"] == "lo", "{add}");
    let link = ns.exec(&["ip", "-o", "link", "show", "lo"])?;
    ensure!(link.contains(",UP"), "lo not up: {link}");
    let addr: IpAddr = "127.0.0.1".parse()?;
    ensure!(
        ns.exec(&["busybox", "ping", "-c1", "-W1", &addr.to_string()])
            .is_ok()
    );
    run_plugin(&ours(), "loopback", "CHECK", &env, &config)?.success()?;
    run_plugin(&ours(), "loopback", "DEL", &env, &config)?.success()?;
    let link = ns.exec(&["ip", "-o", "link", "show", "lo"])?;
    ensure!(!link.contains(",UP"), "lo still up after DEL: {link}");
    let check = run_plugin(&ours(), "loopback", "CHECK", &env, &config)?;
    ensure!(check.code().is_some(), "CHECK of a down lo passed");
    // DEL again, and once the namespace is gone: both succeed.
    run_plugin(&ours(), "loopback", "DEL", &env, &config)?.success()?;
    let path = ns.path();
    drop(ns);
    let gone = [("CNI_NETNS".to_owned(), path)];
    run_plugin(&ours(), "loopback", "DEL", &merge(&env, &gone), &config)?.success()?;
    // The reference agrees on the result for a fresh namespace.
    let ours_ns = Netns::create("lo2")?;
    let theirs_ns = Netns::create("lo3")?;
    let a = run_plugin(
        &ours(),
        "loopback",
        "ADD",
        &ours_ns.env("c", "eth0"),
        &config,
    )?
    .success()?;
    let b = run_plugin(
        REFERENCE_DIR.as_ref(),
        "loopback",
        "ADD",
        &theirs_ns.env("c", "eth0"),
        &config,
    )?
    .success()?;
    ensure!(
        without_sandbox(&a) == without_sandbox(&b),
        "ours {a}\nreference {b}"
    );
    Ok(())
}

fn host_local_config(data_dir: &std::path::Path, v4: &str, v6: &str) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "cnit-hl",
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "resolvConf": "/etc/resolv.conf",
            "ranges": [
                [{"subnet": v4, "rangeStart": v4.replace(".0/", ".10/").split('/').next().unwrap()}],
                [{"subnet": v6}]
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": v4.replace(".0/", ".254/").split('/').next().unwrap()}]
        }
    })
}

fn host_local_env(id: &str) -> Vec<(String, String)> {
    vec![
        ("CNI_CONTAINERID".into(), id.into()),
        ("CNI_NETNS".into(), "/proc/self/ns/net-not-used".into()),
        ("CNI_IFNAME".into(), "eth0".into()),
        ("CNI_ARGS".into(), "IgnoreUnknown=1;K8S_POD_NAME=x".into()),
    ]
}

/// The same config through both plugins, each with its own data dir:
/// the same addresses, gateways, routes and DNS, in the same order.
fn host_local_matches_reference() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for round in 0..3 {
        let mut results = Vec::new();
        for (set, bin) in plugin_sets() {
            let config =
                host_local_config(&dir.path().join(set), "10.240.10.0/24", "fd00:240:10::/64");
            let id = format!("cnithl{round}");
            let result = run_plugin(&bin, "host-local", "ADD", &host_local_env(&id), &config)?
                .success()
                .with_context(|| format!("{set} ADD"))?;
            results.push(result);
        }
        ensure!(
            without_sandbox(&results[0]) == without_sandbox(&results[1]),
            "round {round}: ours {}\nreference {}",
            results[0],
            results[1]
        );
        let ip = results[0]["ips"][0]["address"].as_str().unwrap_or_default();
        ensure!(
            ip == format!("10.240.10.{}/24", 10 + round),
            "round {round}: {ip}"
        );
    }
    for (set, _) in plugin_sets() {
        let files = ipam_files(&dir.path().join(set).join("cnit-hl"));
        ensure!(
            files
                == [
                    "10.240.10.10",
                    "10.240.10.11",
                    "10.240.10.12",
                    "fd00:240:10::2",
                    "fd00:240:10::3",
                    "fd00:240:10::4",
                    "last_reserved_ip.0",
                    "last_reserved_ip.1",
                    "lock"
                ],
            "{set} files: {files:?}"
        );
    }
    let ours_file = std::fs::read(dir.path().join("ours/cnit-hl/10.240.10.11"))?;
    let their_file = std::fs::read(dir.path().join("reference/cnit-hl/10.240.10.11"))?;
    ensure!(
        ours_file == their_file && ours_file == b"cnithl1\r\neth0",
        "{ours_file:?} vs {their_file:?}"
    );
    Ok(())
}

/// One data dir, both plugins taking turns: each sees and releases what
/// the other reserved, and the round-robin cursor is shared.
fn host_local_shares_state_with_reference() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = host_local_config(dir.path(), "10.240.11.0/28", "fd00:240:11::/120");
    let net = dir.path().join("cnit-hl");
    let reference = std::path::PathBuf::from(REFERENCE_DIR);
    let a = run_plugin(&ours(), "host-local", "ADD", &host_local_env("a"), &config)?.success()?;
    let b = run_plugin(
        &reference,
        "host-local",
        "ADD",
        &host_local_env("b"),
        &config,
    )?
    .success()?;
    let c = run_plugin(&ours(), "host-local", "ADD", &host_local_env("c"), &config)?.success()?;
    let v4 = |r: &serde_json::Value| {
        r["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(
        [v4(&a), v4(&b), v4(&c)] == ["10.240.11.10/28", "10.240.11.11/28", "10.240.11.12/28"],
        "{a}\n{b}\n{c}"
    );
    // CHECK across plugins.
    run_plugin(
        &reference,
        "host-local",
        "CHECK",
        &host_local_env("a"),
        &config,
    )?
    .success()?;
    run_plugin(
        &ours(),
        "host-local",
        "CHECK",
        &host_local_env("b"),
        &config,
    )?
    .success()?;
    // The reference releases ours, ours releases the reference's.
    run_plugin(
        &reference,
        "host-local",
        "DEL",
        &host_local_env("a"),
        &config,
    )?
    .success()?;
    run_plugin(&ours(), "host-local", "DEL", &host_local_env("b"), &config)?.success()?;
    let left = reserved_ips(&net);
    ensure!(left == ["10.240.11.12", "fd00:240:11::4"], "left: {left:?}");
    let check = run_plugin(
        &ours(),
        "host-local",
        "CHECK",
        &host_local_env("a"),
        &config,
    )?;
    ensure!(
        check.code().is_some(),
        "CHECK of a released attachment passed"
    );
    // Exhaust the v4 range (.10-.14, /28 ends at .14): then a clear error,
    // code 11, and nothing reserved for the failed container.
    for id in ["d", "e", "f", "g"] {
        run_plugin(&ours(), "host-local", "ADD", &host_local_env(id), &config)?.success()?;
    }
    let before = reserved_ips(&net);
    let full = run_plugin(&ours(), "host-local", "ADD", &host_local_env("h"), &config)?;
    let err = full.error()?;
    ensure!(err["code"] == 11, "{err}");
    ensure!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("no IP addresses available in range set: 10.240.11.10-10.240.11.14"),
        "{err}"
    );
    ensure!(reserved_ips(&net) == before, "failed ADD left reservations");
    // The reference agrees that the range is full.
    let theirs = run_plugin(
        &reference,
        "host-local",
        "ADD",
        &host_local_env("h"),
        &config,
    )?;
    ensure!(
        !theirs.status.success(),
        "reference found room: {}",
        theirs.stdout
    );
    for id in ["c", "d", "e", "f", "g"] {
        run_plugin(
            &reference,
            "host-local",
            "DEL",
            &host_local_env(id),
            &config,
        )?
        .success()?;
    }
    ensure!(
        reserved_ips(&net).is_empty(),
        "left: {:?}",
        reserved_ips(&net)
    );
    Ok(())
}
