//! `bridge`: a Linux bridge on the host, a veth pair per container with one
//! end in the container's namespace (named `CNI_IFNAME`) and the other on
//! the bridge, addresses from the IPAM plugin, optionally the gateway
//! address on the bridge (`isGateway`), a default route (`isDefaultGateway`)
//! and masquerading (`ipMasq`, the reference's `CNI-<hash>` chain).
//!
//! All link work is netlink; the container side runs on a thread that
//! enters the namespace and ends. ADD is all or nothing: a failure after
//! the address was taken releases it and removes the veth. DEL is
//! idempotent and also works when the namespace is gone.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::ipam;
use crate::iptables::{self, Batch, Family, Iptables, IptablesError};
use crate::netlink::{Link, Netlink, parse_mac};
use crate::netns::{self, NetNs, NetNsError};
use crate::result::{CniResult, Dns, Interface, IpPrefix, Route};
use crate::skel::{CmdArgs, Command, ErrorCode, Plugin, PluginError};

/// The `bridge` plugin.
#[derive(Debug, Default)]
pub struct Bridge;

const DEFAULT_BRIDGE: &str = "cni0";
const EEXIST: i32 = libc::EEXIST;

#[derive(Debug, Deserialize, Default)]
struct IpamRef {
    #[serde(default, rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize, Default)]
struct MacArgs {
    #[serde(default)]
    mac: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct ArgsSection {
    #[serde(default)]
    cni: MacArgs,
}

/// The bridge config, as the reference reads it.
#[derive(Debug, Deserialize)]
struct BridgeConf {
    name: String,
    #[serde(default = "default_bridge", rename = "bridge")]
    bridge: String,
    #[serde(default, rename = "isGateway")]
    is_gateway: bool,
    #[serde(default, rename = "isDefaultGateway")]
    is_default_gateway: bool,
    #[serde(default, rename = "forceAddress")]
    force_address: bool,
    #[serde(default, rename = "ipMasq")]
    ip_masq: bool,
    #[serde(default)]
    mtu: u32,
    #[serde(default, rename = "hairpinMode")]
    hairpin_mode: bool,
    #[serde(default, rename = "promiscMode")]
    promisc_mode: bool,
    #[serde(default)]
    vlan: i64,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    enabledad: bool,
    #[serde(default)]
    ipam: IpamRef,
    #[serde(default)]
    dns: Dns,
    #[serde(default)]
    args: ArgsSection,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: MacArgs,
}

fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_owned()
}

fn internal(msg: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::Internal, msg)
}

impl From<IptablesError> for PluginError {
    fn from(err: IptablesError) -> Self {
        PluginError::from_error(ErrorCode::Internal, &err)
    }
}

impl BridgeConf {
    fn load(args: &CmdArgs) -> Result<(Self, Option<String>), PluginError> {
        args.check_known_args(&[
            "MAC",
            "K8S_POD_NAMESPACE",
            "K8S_POD_NAME",
            "K8S_POD_INFRA_CONTAINER_ID",
            "K8S_POD_UID",
        ])?;
        let mut conf = BridgeConf::deserialize(&args.config).map_err(|err| {
            PluginError::new(ErrorCode::Decode, format!("failed to load netconf: {err}"))
        })?;
        if !(0..=4094).contains(&conf.vlan) {
            return Err(PluginError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("invalid VLAN ID {} (must be between 0 and 4094)", conf.vlan),
            ));
        }
        if conf.bridge.is_empty() || conf.bridge.len() > 15 {
            return Err(PluginError::new(
                ErrorCode::InvalidNetworkConfig,
                format!("invalid bridge name {:?}", conf.bridge),
            ));
        }
        if conf.is_default_gateway {
            conf.is_gateway = true;
        }
        let mac = conf
            .runtime_config
            .mac
            .clone()
            .or_else(|| conf.args.cni.mac.clone())
            .or_else(|| args.arg("MAC").map(str::to_owned))
            .filter(|m| !m.is_empty());
        Ok((conf, mac))
    }

    fn layer3(&self) -> bool {
        !self.ipam.kind.is_empty()
    }
}

/// A veth name the reference would pick: `veth` and 8 random hex digits.
fn random_veth_name() -> String {
    let mut bytes = [0u8; 4];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = urandom.read_exact(&mut bytes);
    }
    format!("veth{}", hex::encode(bytes))
}

/// The first address after the network address: the implied gateway.
fn gateway_of(prefix: &IpPrefix) -> IpAddr {
    match prefix.addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.prefix_len))
                .unwrap_or(0);
            Ipv4Addr::from((u32::from(v4) & mask).wrapping_add(1)).into()
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.prefix_len))
                .unwrap_or(0);
            Ipv6Addr::from((u128::from(v6) & mask).wrapping_add(1)).into()
        }
    }
}

fn default_dst(v4: bool) -> IpPrefix {
    IpPrefix {
        addr: if v4 {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        },
        prefix_len: 0,
    }
}

/// The reference's `calcGateways`: every address on interface 2 (the
/// container end), gateways filled in for `isGateway`, a default route per
/// family for `isDefaultGateway`; returns the bridge addresses to set.
fn calc_gateways(result: &mut CniResult, conf: &BridgeConf) -> Vec<IpPrefix> {
    let mut bridge_addrs = Vec::new();
    let mut default_found = [false, false];
    for index in 0..result.ips.len() {
        let ip = &mut result.ips[index];
        ip.interface = Some(2);
        if ip.gateway.is_none() && conf.is_gateway {
            ip.gateway = Some(gateway_of(&ip.address));
        }
        let v4 = ip.address.addr.is_ipv4();
        let family = usize::from(!v4);
        let (gateway, prefix_len) = (ip.gateway, ip.address.prefix_len);
        if conf.is_default_gateway && !default_found[family] {
            let dst = default_dst(v4);
            default_found[family] = result.routes.iter().any(|r| r.gw.is_some() && r.dst == dst);
            if !default_found[family] {
                result.routes.push(Route::new(dst, gateway));
                default_found[family] = true;
            }
        }
        if conf.is_gateway
            && let Some(gw) = gateway
        {
            bridge_addrs.push(IpPrefix {
                addr: gw,
                prefix_len,
            });
        }
    }
    bridge_addrs
}

/// Creates the bridge unless it exists, checks it is one, sets it up.
fn ensure_bridge(nl: &mut Netlink, conf: &BridgeConf) -> Result<Link, PluginError> {
    let mtu = (conf.mtu > 0).then_some(conf.mtu);
    match nl.add_bridge(&conf.bridge, mtu, conf.vlan != 0) {
        Err(err) if err.errno() != Some(EEXIST) => {
            return Err(internal(format!(
                "failed to create bridge {:?}: could not add {:?}: {err}",
                conf.bridge, conf.bridge
            )));
        }
        _ => {}
    }
    let br = nl.link_by_name(&conf.bridge)?.ok_or_else(|| {
        internal(format!(
            "could not lookup {:?}: Link not found",
            conf.bridge
        ))
    })?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(internal(format!(
            "{:?} already exists but is not a bridge",
            conf.bridge
        )));
    }
    if conf.promisc_mode && !br.promisc {
        nl.set_promisc(br.index)?;
    }
    // We own the routes of this interface.
    let _ = netns::sysctl_write(&format!("net/ipv6/conf/{}/accept_ra", conf.bridge), "0");
    if !br.up {
        nl.set_up(br.index)?;
    }
    Ok(br)
}

/// The reference's `ensureAddr`: the gateway address on the bridge (or its
/// VLAN interface), replacing a different one only with `forceAddress`.
fn ensure_addr(
    nl: &mut Netlink,
    link: &Link,
    addr: IpPrefix,
    force: bool,
) -> Result<(), PluginError> {
    let existing = nl.addresses(Some(link.index))?;
    let same_family = existing
        .iter()
        .filter(|a| a.prefix.addr.is_ipv4() == addr.addr.is_ipv4() && a.global);
    for a in same_family.clone() {
        if a.prefix == addr {
            return Ok(());
        }
    }
    let net_contains =
        |net: &IpPrefix, ip: IpAddr| crate::plugins::host_local::config::subnet_contains(net, ip);
    for a in same_family {
        if addr.addr.is_ipv4()
            || net_contains(&a.prefix, addr.addr)
            || net_contains(&addr, a.prefix.addr)
        {
            if force {
                nl.del_address(link.index, a.prefix)?;
            } else {
                return Err(internal(format!(
                    "{:?} already has an IP address different from {addr}",
                    link.name
                )));
            }
        }
    }
    match nl.add_address(link.index, addr) {
        Err(err) if err.errno() != Some(EEXIST) => {
            return Err(internal(format!(
                "could not add IP address to {:?}: {err}",
                link.name
            )));
        }
        _ => {}
    }
    // Pin the bridge's MAC; otherwise it follows the lowest port MAC and
    // changes as ports come and go.
    if let Some(mac) = link.mac.as_deref().and_then(parse_mac) {
        nl.set_mac(link.index, &mac)?;
    }
    Ok(())
}

fn enable_forwarding(v4: bool) -> Result<(), PluginError> {
    let key = if v4 {
        "net/ipv4/ip_forward"
    } else {
        "net/ipv6/conf/all/forwarding"
    };
    if netns::sysctl_read(key).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    netns::sysctl_write(key, "1")
        .map_err(|err| internal(format!("failed to enable forwarding: {err}")))
}

/// What the container-side thread reports back.
struct ContainerSide {
    name: String,
    mac: Option<String>,
}

/// Creates the veth pair from inside the container's namespace (peer
/// straight into the host namespace), sets the sysctls, and configures
/// addresses and routes.
fn setup_container_side(
    conf: &BridgeConf,
    args: &CmdArgs,
    netns: &NetNs,
    host_ns_fd: i32,
    mac: Option<&[u8]>,
    result: Option<&CniResult>,
) -> Result<(ContainerSide, String), PluginError> {
    netns.run(|| {
        let mut nl = Netlink::open()?;
        let mtu = (conf.mtu > 0).then_some(conf.mtu);
        let mut host_name = String::new();
        for _ in 0..10 {
            host_name = random_veth_name();
            match nl.add_veth(&args.ifname, mac, &host_name, mtu, Some(host_ns_fd)) {
                Ok(()) => break,
                Err(err) if err.errno() == Some(EEXIST) => {
                    if nl.link_by_name(&args.ifname)?.is_some() {
                        return Err(internal(format!(
                            "container veth name provided ({}) already exists",
                            args.ifname
                        )));
                    }
                    // The random host name collided: pick another.
                    host_name.clear();
                }
                Err(err) => return Err(internal(format!("failed to make veth pair: {err}"))),
            }
        }
        if host_name.is_empty() {
            return Err(internal("failed to find a unique veth name"));
        }
        let link = nl
            .link_by_name(&args.ifname)?
            .ok_or_else(|| internal(format!("failed to lookup {:?}", args.ifname)))?;
        let ifname = &args.ifname;
        if conf.enabledad {
            let _ = netns::sysctl_write(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1");
            let _ = netns::sysctl_write(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1");
        } else {
            let _ = netns::sysctl_write(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
        }
        let _ = netns::sysctl_write(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1");
        match result {
            Some(result) => ipam::configure_iface(&mut nl, ifname, link.index, result, 2)?,
            None => nl.set_up(link.index)?,
        }
        Ok((
            ContainerSide {
                name: link.name,
                mac: link.mac,
            },
            host_name,
        ))
    })?
}

/// Waits until the host end is operationally up (a port that forwards),
/// as the reference does, polling finely instead of in 50 ms+ steps.
fn wait_port_up(nl: &mut Netlink, name: &str) -> Result<(), PluginError> {
    let deadline = Instant::now() + Duration::from_millis(2550);
    loop {
        let link = nl
            .link_by_name(name)?
            .ok_or_else(|| internal(format!("failed to lookup {name:?}")))?;
        if link.oper_up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(internal("bridge port in error state: down"));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The VLAN gateway interface `<bridge>.<vid>`: a veth whose peer is a
/// tagged port of the bridge, as the reference builds it.
fn ensure_vlan_interface(nl: &mut Netlink, br: &Link, vlan: u16) -> Result<Link, PluginError> {
    let name = format!("{}.{vlan}", br.name);
    if let Some(link) = nl.link_by_name(&name)? {
        return Ok(link);
    }
    let peer = random_veth_name();
    nl.add_veth(&name, None, &peer, (br.mtu > 0).then_some(br.mtu), None)?;
    let peer_link = nl
        .link_by_name(&peer)?
        .ok_or_else(|| internal(format!("failed to lookup {peer:?}")))?;
    nl.set_master_up(peer_link.index, br.index)?;
    nl.bridge_vlan_add(peer_link.index, vlan)?;
    let link = nl
        .link_by_name(&name)?
        .ok_or_else(|| internal(format!("failed to lookup {name:?}")))?;
    nl.set_up(link.index)?;
    Ok(link)
}

/// The masquerade chain of one container and family: `CNI-<hash>` with an
/// ACCEPT for the container's own networks and a MASQUERADE for the rest
/// (not multicast), entered from POSTROUTING for the container's address.
fn setup_ip_masq(
    family: Family,
    ips: &[IpPrefix],
    network: &str,
    container_id: &str,
) -> Result<(), PluginError> {
    let ipt = Iptables::new(family);
    let chain = iptables::chain_name("CNI-", network, container_id);
    let comment = iptables::comment(network, container_id);
    let multicast = match family {
        Family::V4 => "224.0.0.0/4",
        Family::V6 => "ff00::/8",
    };
    let _lock = iptables::lock()?;
    let state = ipt.save("nat")?;
    let mut batch = Batch::default();
    batch.declare_chain(&chain);
    for old in state.jumps("POSTROUTING", &chain) {
        batch.delete("POSTROUTING", &old.spec);
    }
    for ip in ips {
        let net = crate::plugins::host_local::config::network_of(ip);
        batch.append(
            &chain,
            &iptables::rule(&[
                "-d",
                &net.to_string(),
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "ACCEPT",
            ]),
        );
    }
    batch.append(
        &chain,
        &iptables::rule(&[
            "!",
            "-d",
            multicast,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "MASQUERADE",
        ]),
    );
    for ip in ips {
        let host_len = if ip.addr.is_ipv4() { 32 } else { 128 };
        batch.append(
            "POSTROUTING",
            &iptables::rule(&[
                "-s",
                &format!("{}/{host_len}", ip.addr),
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                &chain,
            ]),
        );
    }
    ipt.apply("nat", &batch)?;
    Ok(())
}

/// Removes a container's masquerade chain and every jump to it.
fn teardown_ip_masq(family: Family, network: &str, container_id: &str) -> Result<(), PluginError> {
    let ipt = Iptables::new(family);
    let chain = iptables::chain_name("CNI-", network, container_id);
    let _lock = iptables::lock()?;
    let Ok(state) = ipt.save("nat") else {
        // No usable ip(6)tables: nothing of ours can be there.
        return Ok(());
    };
    if !state.has_chain(&chain) && state.all_jumps(&chain).is_empty() {
        return Ok(());
    }
    let mut batch = Batch::default();
    for old in state.all_jumps(&chain) {
        batch.delete(&old.chain, &old.spec);
    }
    if state.has_chain(&chain) {
        batch.flush(&chain);
        batch.delete_chain(&chain);
    }
    ipt.apply("nat", &batch)?;
    Ok(())
}

impl Bridge {
    fn add_inner(
        &self,
        args: &CmdArgs,
        conf: &BridgeConf,
        mac: Option<&str>,
        ipam_taken: &mut bool,
        veth_made: &mut bool,
    ) -> Result<CniResult, PluginError> {
        let mac_bytes = match mac {
            Some(text) => Some(parse_mac(text).ok_or_else(|| {
                PluginError::new(
                    ErrorCode::InvalidNetworkConfig,
                    format!("invalid MAC address {text:?}"),
                )
            })?),
            None => None,
        };
        let mut nl = Netlink::open()?;
        let br = ensure_bridge(&mut nl, conf)?;
        let host_ns = NetNs::current()?;
        let netns = NetNs::open(&args.netns)?;

        // Addresses first, so the container side is configured in one trip.
        let mut result = CniResult::new(Vec::new(), Vec::new(), Vec::new(), conf.dns.clone());
        let mut bridge_addrs = Vec::new();
        if conf.layer3() {
            let ipam_result = ipam::exec(args, &conf.ipam.kind, Command::Add)?
                .ok_or_else(|| internal("IPAM plugin returned no result"))?;
            *ipam_taken = true;
            if ipam_result.ips.is_empty() {
                return Err(internal("IPAM plugin returned missing IP config"));
            }
            result.ips = ipam_result.ips;
            result.routes = ipam_result.routes;
            bridge_addrs = calc_gateways(&mut result, conf);
        }

        let (container, host_name) = setup_container_side(
            conf,
            args,
            &netns,
            host_ns.as_raw_fd(),
            mac_bytes.as_deref(),
            conf.layer3().then_some(&result),
        )?;
        *veth_made = true;

        let host = nl
            .link_by_name(&host_name)?
            .ok_or_else(|| internal(format!("failed to lookup {host_name:?}")))?;
        let _ = netns::sysctl_write(&format!("net/ipv6/conf/{host_name}/accept_ra"), "0");
        nl.set_master_up(host.index, br.index).map_err(|err| {
            internal(format!(
                "failed to connect {host_name:?} to bridge {}: {err}",
                conf.bridge
            ))
        })?;
        if conf.hairpin_mode {
            nl.set_hairpin(host.index, true).map_err(|err| {
                internal(format!(
                    "failed to setup hairpin mode for {host_name}: {err}"
                ))
            })?;
        }
        if conf.vlan != 0 {
            nl.bridge_vlan_add(host.index, conf.vlan as u16)
                .map_err(|err| {
                    internal(format!(
                        "failed to setup vlan tag on interface {host_name:?}: {err}"
                    ))
                })?;
        }

        let mut extra_interfaces = Vec::new();
        if conf.layer3() {
            wait_port_up(&mut nl, &host_name)?;
            if conf.is_gateway {
                let mut families_done = [false, false];
                for addr in &bridge_addrs {
                    let target = if conf.vlan != 0 {
                        let vlan_link = ensure_vlan_interface(&mut nl, &br, conf.vlan as u16)?;
                        if extra_interfaces.is_empty() {
                            extra_interfaces.push(Interface {
                                name: vlan_link.name.clone(),
                                mac: vlan_link.mac.clone(),
                                ..Interface::default()
                            });
                        }
                        vlan_link
                    } else {
                        // As fetched before the port was added: its MAC is
                        // the one to pin.
                        br.clone()
                    };
                    ensure_addr(&mut nl, &target, *addr, conf.force_address).map_err(|err| {
                        internal(format!("failed to set bridge addr: {}", err.msg))
                    })?;
                    let family = usize::from(addr.addr.is_ipv6());
                    if !families_done[family] {
                        enable_forwarding(addr.addr.is_ipv4())?;
                        families_done[family] = true;
                    }
                }
            }
            if conf.ip_masq {
                for family in [Family::V4, Family::V6] {
                    let ips: Vec<IpPrefix> = result
                        .ips
                        .iter()
                        .map(|ip| ip.address)
                        .filter(|a| Family::of(&a.addr) == family)
                        .collect();
                    if !ips.is_empty() {
                        setup_ip_masq(family, &ips, &conf.name, &args.container_id)?;
                    }
                }
            }
        }

        // The bridge's MAC may have changed with its first port or address.
        let br_now = nl.link_by_index(br.index)?.unwrap_or(br);
        result.interfaces = vec![
            Interface {
                name: br_now.name,
                mac: br_now.mac,
                ..Interface::default()
            },
            Interface {
                name: host_name,
                mac: host.mac,
                ..Interface::default()
            },
            Interface {
                name: container.name,
                mac: container.mac,
                sandbox: Some(args.netns.clone()),
                ..Interface::default()
            },
        ];
        result.interfaces.extend(extra_interfaces);
        Ok(result)
    }

    /// Deletes the container's interface; returns its global addresses.
    fn delete_container_link(args: &CmdArgs) -> Result<Option<Vec<IpPrefix>>, PluginError> {
        let netns = match NetNs::open(&args.netns) {
            Ok(netns) => netns,
            Err(NetNsError::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        netns.run(|| {
            let mut nl = Netlink::open()?;
            let Some(link) = nl.link_by_name(&args.ifname)? else {
                return Ok(Some(Vec::new()));
            };
            let addrs: Vec<IpPrefix> = nl
                .addresses(Some(link.index))?
                .into_iter()
                .filter(|a| a.global && !a.prefix.addr.is_loopback())
                .map(|a| a.prefix)
                .collect();
            nl.del_link(link.index)
                .map_err(|err| internal(format!("failed to delete {:?}: {err}", args.ifname)))?;
            Ok(Some(addrs))
        })?
    }
}

impl Plugin for Bridge {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, PluginError> {
        let (conf, mac) = BridgeConf::load(args)?;
        if conf.hairpin_mode && conf.promisc_mode {
            return Err(PluginError::new(
                ErrorCode::InvalidNetworkConfig,
                "cannot set hairpin mode and promiscuous mode at the same time.",
            ));
        }
        if conf.macspoofchk {
            return Err(PluginError::new(
                ErrorCode::UnsupportedField,
                "macspoofchk is not supported by this bridge plugin",
            ));
        }
        let mut ipam_taken = false;
        let mut veth_made = false;
        let outcome = self.add_inner(args, &conf, mac.as_deref(), &mut ipam_taken, &mut veth_made);
        if outcome.is_err() {
            // Leave nothing behind: the veth (its peer goes with it), the
            // masquerade rules and the address.
            if veth_made {
                let _ = Self::delete_container_link(args);
            }
            if conf.ip_masq {
                let _ = teardown_ip_masq(Family::V4, &conf.name, &args.container_id);
                let _ = teardown_ip_masq(Family::V6, &conf.name, &args.container_id);
            }
            if ipam_taken {
                let _ = ipam::exec(args, &conf.ipam.kind, Command::Del);
            }
        }
        outcome
    }

    fn del(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let (conf, _) = BridgeConf::load(args)?;
        let mut errors = Vec::new();
        let addrs = if args.netns.is_empty() {
            None
        } else {
            match Self::delete_container_link(args) {
                Ok(addrs) => addrs,
                Err(err) => {
                    errors.push(err);
                    None
                }
            }
        };
        if conf.layer3() {
            if let Err(err) = ipam::exec(args, &conf.ipam.kind, Command::Del) {
                errors.push(err);
            }
            if conf.ip_masq {
                // Without the addresses (namespace gone) both families are
                // looked at; the chain name alone finds our rules.
                let families: Vec<Family> = match &addrs {
                    Some(addrs) if !addrs.is_empty() => {
                        let mut f: Vec<Family> =
                            addrs.iter().map(|a| Family::of(&a.addr)).collect();
                        f.dedup();
                        f
                    }
                    _ => vec![Family::V4, Family::V6],
                };
                for family in families {
                    if let Err(err) = teardown_ip_masq(family, &conf.name, &args.container_id) {
                        errors.push(err);
                    }
                }
            }
        }
        match errors.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    fn check(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let (conf, _) = BridgeConf::load(args)?;
        let netns = NetNs::open(&args.netns)?;
        if conf.layer3() {
            ipam::exec(args, &conf.ipam.kind, Command::Check)?;
        }
        let prev = args
            .prev_result()?
            .ok_or_else(|| internal("Required prevResult missing"))?;
        let mut nl = Netlink::open()?;
        let br = nl.link_by_name(&conf.bridge)?.ok_or_else(|| {
            internal(format!(
                "CNI created bridge {} in host namespace was not found",
                conf.bridge
            ))
        })?;
        if br.kind.as_deref() != Some("bridge") {
            return Err(internal(format!(
                "Interface {} does not have link type of bridge",
                br.name
            )));
        }
        if br.promisc != conf.promisc_mode {
            return Err(internal(format!(
                "Bridge interface {} configured Promisc Mode {} doesn't match current state: {} ",
                br.name, conf.promisc_mode, br.promisc
            )));
        }
        let cont = prev
            .interfaces
            .iter()
            .find(|i| i.name == args.ifname && i.sandbox.as_deref() == Some(args.netns.as_str()))
            .ok_or_else(|| {
                internal(format!(
                    "CNI created interface in container {} not found",
                    args.ifname
                ))
            })?;
        let expected_mac = cont.mac.clone();
        let ifname = args.ifname.clone();
        let prev_ref = &prev;
        let (cont_index, peer_index) = netns.run(move || {
            let mut nl = Netlink::open()?;
            let link = nl.link_by_name(&ifname)?.ok_or_else(|| {
                internal(format!(
                    "CNI created interface in container {ifname} not found"
                ))
            })?;
            if link.kind.as_deref() != Some("veth") {
                return Err(internal(format!(
                    "Error: Container interface {ifname} not of type veth"
                )));
            }
            if let Some(mac) = &expected_mac
                && link.mac.as_deref() != Some(mac.as_str())
            {
                return Err(internal(format!(
                    "Interface {ifname} Mac {mac} doesn't match container Mac: {:?}",
                    link.mac
                )));
            }
            let have = nl.addresses(Some(link.index))?;
            for ip in prev_ref.ips.iter().filter(|ip| {
                ip.interface
                    .is_none_or(|i| prev_ref.interfaces.get(i).is_some_and(|x| x.name == ifname))
            }) {
                if !have.iter().any(|a| a.prefix == ip.address) {
                    return Err(internal(format!(
                        "Failed to match addr {} on interface {ifname}",
                        ip.address
                    )));
                }
            }
            for family_v6 in [false, true] {
                let routes = nl.routes(family_v6)?;
                for want in prev_ref
                    .routes
                    .iter()
                    .filter(|r| r.dst.addr.is_ipv6() == family_v6)
                {
                    if !routes
                        .iter()
                        .any(|r| r.dst == want.dst && (want.gw.is_none() || r.gw == want.gw))
                    {
                        return Err(internal(format!(
                            "Failed to find a route {} via {:?}",
                            want.dst, want.gw
                        )));
                    }
                }
            }
            Ok::<_, PluginError>((link.index, link.peer_index))
        })??;
        let veth_found = nl.links()?.into_iter().any(|l| {
            l.kind.as_deref() == Some("veth")
                && l.master == Some(br.index)
                && l.peer_index == Some(cont_index)
                && Some(l.index) == peer_index
        });
        if !veth_found {
            return Err(internal(format!(
                "CNI veth created for bridge {} was not found",
                conf.bridge
            )));
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let (conf, _) = BridgeConf::load(args)?;
        if conf.layer3() {
            ipam::exec(args, &conf.ipam.kind, Command::Gc)?;
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let (conf, _) = BridgeConf::load(args)?;
        if conf.layer3() {
            ipam::exec(args, &conf.ipam.kind, Command::Status)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::IpConfig;
    use serde_json::json;

    fn conf(extra: serde_json::Value) -> BridgeConf {
        let mut base = json!({"name": "n", "cniVersion": "1.0.0", "type": "bridge", "ipam": {"type": "host-local"}});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        BridgeConf::deserialize(&base).unwrap()
    }

    fn result(ips: &[&str]) -> CniResult {
        CniResult::new(
            Vec::new(),
            ips.iter()
                .map(|ip| IpConfig {
                    address: ip.parse().unwrap(),
                    gateway: None,
                    interface: None,
                })
                .collect(),
            Vec::new(),
            Dns::default(),
        )
    }

    #[test]
    fn defaults() {
        let c = conf(json!({}));
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway && !c.ip_masq && c.layer3());
        let l2 = BridgeConf::deserialize(&json!({"name": "n"})).unwrap();
        assert!(!l2.layer3());
    }

    #[test]
    fn gateways_and_default_routes() {
        let c = conf(json!({"isDefaultGateway": true, "isGateway": true}));
        let mut r = result(&["10.240.20.5/24", "fd00:240:20::5/64"]);
        let bridge = calc_gateways(&mut r, &c);
        assert_eq!(r.ips[0].gateway, Some("10.240.20.1".parse().unwrap()));
        assert_eq!(r.ips[1].gateway, Some("fd00:240:20::1".parse().unwrap()));
        assert!(r.ips.iter().all(|ip| ip.interface == Some(2)));
        let routes: Vec<String> = r
            .routes
            .iter()
            .map(|r| format!("{} {:?}", r.dst, r.gw.map(|g| g.to_string())))
            .collect();
        assert_eq!(
            routes,
            [
                "0.0.0.0/0 Some(\"10.240.20.1\")",
                "::/0 Some(\"fd00:240:20::1\")"
            ]
        );
        let bridge: Vec<String> = bridge.iter().map(|a| a.to_string()).collect();
        assert_eq!(bridge, ["10.240.20.1/24", "fd00:240:20::1/64"]);

        // Without isGateway: no gateway invented, no bridge address.
        let plain = conf(json!({}));
        let mut r = result(&["10.240.20.5/24"]);
        assert!(calc_gateways(&mut r, &plain).is_empty());
        assert_eq!(r.ips[0].gateway, None);
        assert!(r.routes.is_empty());
    }

    #[test]
    fn veth_names() {
        let name = random_veth_name();
        assert!(name.starts_with("veth") && name.len() == 12, "{name}");
        assert_ne!(name, random_veth_name());
    }
}
