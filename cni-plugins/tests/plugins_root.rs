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

fn main() {
    let args = Arguments::from_args();
    let trials = vec![root_trial("loopback_add_check_del", loopback_add_check_del)];
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
