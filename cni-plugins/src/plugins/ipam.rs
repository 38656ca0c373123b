//! Delegating to an IPAM plugin, as main plugins do: find the binary named
//! by `ipam.type` on `CNI_PATH`, run it with our environment and the same
//! config, and apply the addresses and routes it returns to an interface.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::netlink::{Netlink, RouteSpec};
use crate::netns;
use crate::result::CniResult;
use crate::skel::{CmdArgs, Command, ErrorCode, PluginError};

/// Finds plugin `kind` on `CNI_PATH`.
pub fn find_plugin(args: &CmdArgs, kind: &str) -> Result<PathBuf, PluginError> {
    if kind.is_empty() || kind.contains('/') {
        return Err(PluginError::new(
            ErrorCode::InvalidNetworkConfig,
            format!("invalid plugin type {kind:?}"),
        ));
    }
    args.path
        .iter()
        .map(|dir| dir.join(kind))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            let dirs: Vec<String> = args.path.iter().map(|p| p.display().to_string()).collect();
            PluginError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("failed to find plugin {kind:?} in path {dirs:?}"),
            )
        })
}

/// Runs the IPAM plugin `kind` with `command`; its result for ADD.
pub fn exec(
    args: &CmdArgs,
    kind: &str,
    command: Command,
) -> Result<Option<CniResult>, PluginError> {
    let path = find_plugin(args, kind)?;
    let verb = match command {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Gc => "GC",
        Command::Status => "STATUS",
        Command::Version => "VERSION",
    };
    let mut child = Process::new(&path)
        .env("CNI_COMMAND", verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|err| {
            PluginError::new(
                ErrorCode::IoFailure,
                format!("failed to run {}: {err}", path.display()),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin may exit without reading; its answer says what happened.
        let _ = stdin.write_all(&args.stdin);
    }
    let output = child.wait_with_output().map_err(|err| {
        PluginError::new(
            ErrorCode::IoFailure,
            format!("failed to run {}: {err}", path.display()),
        )
    })?;
    if !output.status.success() {
        // Pass the delegate's own error on, code and all.
        let value: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        let code = match value["code"].as_u64() {
            Some(1) => ErrorCode::IncompatibleVersion,
            Some(2) => ErrorCode::UnsupportedField,
            Some(3) => ErrorCode::UnknownContainer,
            Some(4) => ErrorCode::InvalidEnvironment,
            Some(5) => ErrorCode::IoFailure,
            Some(6) => ErrorCode::Decode,
            Some(7) => ErrorCode::InvalidNetworkConfig,
            Some(8) => ErrorCode::InvalidNetns,
            Some(11) => ErrorCode::TryAgainLater,
            _ => ErrorCode::Internal,
        };
        let msg = value["msg"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&output.stdout).trim().to_owned());
        let details = value["details"].as_str().unwrap_or_default();
        return Err(PluginError::new(code, msg).with_details(details));
    }
    if command != Command::Add {
        return Ok(None);
    }
    CniResult::from_slice(&output.stdout)
        .map(Some)
        .map_err(|err| PluginError::from_error(ErrorCode::Decode, &err))
}

/// Applies addresses (those of interface index `iface_index` in the
/// result) and routes to link `index`, in the calling thread's namespace:
/// IPv6 enabled where needed, the link set up, routes via the family's
/// first gateway unless they name their own.
pub fn configure_iface(
    nl: &mut Netlink,
    ifname: &str,
    index: u32,
    result: &CniResult,
    iface_index: usize,
) -> Result<(), PluginError> {
    let mut v4_gw: Option<IpAddr> = None;
    let mut v6_gw: Option<IpAddr> = None;
    let mut ipv6_enabled = false;
    for ip in &result.ips {
        if ip.interface.is_some_and(|i| i != iface_index) {
            continue;
        }
        if ip.address.addr.is_ipv6() && !ipv6_enabled {
            for dev in ["lo", ifname] {
                let key = format!("net/ipv6/conf/{dev}/disable_ipv6");
                if netns::sysctl_read(&key).is_ok_and(|v| v != "0") {
                    netns::sysctl_write(&key, "0").map_err(|err| {
                        PluginError::new(
                            ErrorCode::Internal,
                            format!("failed to enable IPv6 for interface {dev:?}: {err}"),
                        )
                    })?;
                }
            }
            ipv6_enabled = true;
        }
        nl.add_address(index, ip.address).map_err(|err| {
            PluginError::new(
                ErrorCode::Internal,
                format!("failed to add IP addr {} to {ifname:?}: {err}", ip.address),
            )
        })?;
        let slot = if ip.address.addr.is_ipv4() {
            &mut v4_gw
        } else {
            &mut v6_gw
        };
        if slot.is_none() {
            *slot = ip.gateway;
        }
    }
    nl.set_up(index)?;
    for route in &result.routes {
        let gw = route.gw.or(if route.dst.addr.is_ipv4() {
            v4_gw
        } else {
            v6_gw
        });
        let mut spec = RouteSpec::new(route.dst, gw, index);
        spec.mtu = route.mtu.filter(|&m| m > 0);
        spec.advmss = route.advmss.filter(|&m| m > 0);
        spec.priority = route.priority.filter(|&p| p > 0);
        spec.table = route.table;
        spec.scope = route.scope.and_then(|s| u8::try_from(s).ok());
        nl.add_route(&spec).map_err(|err| {
            let via = gw.map(|g| g.to_string()).unwrap_or_else(|| "<nil>".into());
            PluginError::new(
                ErrorCode::Internal,
                format!(
                    "failed to add route '{} via {via} dev {ifname}': {err}",
                    route.dst
                ),
            )
        })?;
    }
    Ok(())
}
