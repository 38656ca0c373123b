//! `portmap`: host ports to container ports, with the reference plugin's
//! nat-table layout so either plugin can remove what the other made:
//!
//! ```text
//! PREROUTING, OUTPUT: -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
//! CNI-HOSTPORT-DNAT:  -p tcp -m comment --comment "dnat name: ..." -m multiport --dports 8080 -j CNI-DN-<hash>
//! CNI-DN-<hash>:      mark hairpin (-s <pod net>) and localhost (-s 127.0.0.1) traffic, then DNAT
//! CNI-HOSTPORT-SETMARK: -j MARK --set-xmark <1<<markMasqBit>
//! POSTROUTING (first): -j CNI-HOSTPORT-MASQ;  CNI-HOSTPORT-MASQ: -m mark --mark .. -j MASQUERADE
//! ```
//!
//! Chained after a plugin that gives the container addresses; mappings come
//! from `runtimeConfig.portMappings`. DEL removes exactly the container's
//! `CNI-DN-` chain and the jumps to it; the shared chains stay.

use std::net::IpAddr;

use serde::Deserialize;

use crate::iptables::{self, Batch, Family, Iptables, TableState};
use crate::netlink::Netlink;
use crate::netns;
use crate::result::{CniResult, IpPrefix};
use crate::skel::{CmdArgs, ErrorCode, Plugin, PluginError};

/// The `portmap` plugin.
#[derive(Debug, Default)]
pub struct PortMap;

/// Shared chain names; never to change, or upgrades strand rules.
pub const TOP_LEVEL_DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";
/// Sets the masquerade mark.
pub const SET_MARK_CHAIN: &str = "CNI-HOSTPORT-SETMARK";
/// Masquerades marked packets.
pub const MARK_MASQ_CHAIN: &str = "CNI-HOSTPORT-MASQ";
/// Chain of old plugin versions, torn down on DEL.
pub const OLD_TOP_LEVEL_SNAT_CHAIN: &str = "CNI-HOSTPORT-SNAT";
/// Default mark bit (Kubernetes uses 14 and 15).
pub const DEFAULT_MARK_BIT: i64 = 13;

/// One `portMappings` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PortMapEntry {
    /// Port on the host.
    #[serde(rename = "hostPort")]
    pub host_port: i64,
    /// Port in the container.
    #[serde(rename = "containerPort")]
    pub container_port: i64,
    /// `tcp`, `udp` or `sctp`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Only this host address, if set.
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

fn default_protocol() -> String {
    "tcp".to_owned()
}

#[derive(Debug, Deserialize, Default)]
struct RuntimeConfig {
    #[serde(default, rename = "portMappings")]
    port_mappings: Vec<PortMapEntry>,
}

#[derive(Debug, Deserialize)]
struct RawConf {
    name: String,
    #[serde(default)]
    snat: Option<bool>,
    #[serde(default, rename = "conditionsV4")]
    conditions_v4: Option<Vec<String>>,
    #[serde(default, rename = "conditionsV6")]
    conditions_v6: Option<Vec<String>>,
    #[serde(default, rename = "markMasqBit")]
    mark_masq_bit: Option<i64>,
    #[serde(default, rename = "externalSetMarkChain")]
    external_set_mark_chain: Option<String>,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: RuntimeConfig,
}

/// The checked config.
#[derive(Debug, Clone, PartialEq)]
pub struct PortMapConf {
    /// Network name.
    pub name: String,
    /// Masquerade hairpin and localhost traffic.
    pub snat: bool,
    /// Extra matches for IPv4 entry rules.
    pub conditions_v4: Vec<String>,
    /// Extra matches for IPv6 entry rules.
    pub conditions_v6: Vec<String>,
    /// The mark bit.
    pub mark_masq_bit: u32,
    /// Someone else's chain that sets the mark (then ours are not made).
    pub external_set_mark_chain: Option<String>,
    /// The mappings.
    pub mappings: Vec<PortMapEntry>,
}

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::InvalidNetworkConfig, msg)
}

impl PortMapConf {
    /// Parses and checks the plugin config.
    pub fn parse(config: &serde_json::Value) -> Result<Self, PluginError> {
        let raw = RawConf::deserialize(config).map_err(|err| {
            PluginError::new(
                ErrorCode::Decode,
                format!("failed to parse config: failed to parse network configuration: {err}"),
            )
        })?;
        if raw.mark_masq_bit.is_some() && raw.external_set_mark_chain.is_some() {
            return Err(invalid(
                "Cannot specify externalSetMarkChain and markMasqBit",
            ));
        }
        let bit = raw.mark_masq_bit.unwrap_or(DEFAULT_MARK_BIT);
        if !(0..=31).contains(&bit) {
            return Err(invalid("MasqMarkBit must be between 0 and 31"));
        }
        for pm in &raw.runtime_config.port_mappings {
            if !(1..=65535).contains(&pm.container_port) {
                return Err(invalid(format!(
                    "Invalid container port number: {}",
                    pm.container_port
                )));
            }
            if !(1..=65535).contains(&pm.host_port) {
                return Err(invalid(format!(
                    "Invalid host port number: {}",
                    pm.host_port
                )));
            }
            if let Some(ip) = pm.host_ip.as_deref().filter(|ip| !ip.is_empty())
                && ip.parse::<IpAddr>().is_err()
            {
                return Err(invalid(format!("Invalid host IP: {ip}")));
            }
        }
        Ok(Self {
            name: raw.name,
            snat: raw.snat.unwrap_or(true),
            conditions_v4: raw.conditions_v4.unwrap_or_default(),
            conditions_v6: raw.conditions_v6.unwrap_or_default(),
            mark_masq_bit: bit as u32,
            external_set_mark_chain: raw.external_set_mark_chain,
            mappings: raw.runtime_config.port_mappings,
        })
    }

    fn mark(&self) -> String {
        let value = 1u32 << self.mark_masq_bit;
        format!("{value:#x}/{value:#x}")
    }

    fn set_mark_chain(&self) -> &str {
        self.external_set_mark_chain
            .as_deref()
            .unwrap_or(SET_MARK_CHAIN)
    }
}

/// The container's first IPv4 and IPv6 address on `ifname`, from the
/// previous result (addresses of other interfaces skipped).
pub fn container_ips(result: &CniResult, ifname: &str) -> (Option<IpPrefix>, Option<IpPrefix>) {
    let (mut v4, mut v6) = (None, None);
    for ip in &result.ips {
        let slot = if ip.address.addr.is_ipv4() {
            &mut v4
        } else {
            &mut v6
        };
        if slot.is_some() {
            continue;
        }
        if let Some(index) = ip.interface
            && let Some(iface) = result.interfaces.get(index)
            && (iface.name != ifname || iface.sandbox.as_deref().unwrap_or("").is_empty())
        {
            continue;
        }
        *slot = Some(ip.address);
    }
    (v4, v6)
}

/// The container's `CNI-DN-` chain.
pub fn dnat_chain(network: &str, container_id: &str) -> String {
    iptables::chain_name("CNI-DN-", network, container_id)
}

/// The old `CNI-SN-` chain of earlier plugin versions.
fn old_snat_chain(network: &str, container_id: &str) -> String {
    iptables::chain_name("CNI-SN-", network, container_id)
}

fn fmt_ip_port(ip: IpAddr, port: i64) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The entry rules (in `CNI-HOSTPORT-DNAT`) and the chain's own rules for
/// one family, in the reference's order.
pub fn dnat_rules(
    conf: &PortMapConf,
    container_id: &str,
    container: IpPrefix,
) -> (Vec<String>, Vec<String>) {
    let v6 = container.addr.is_ipv6();
    let chain = dnat_chain(&conf.name, container_id);
    let comment = iptables::trim_comment(&format!(
        "dnat name: \"{}\" id: \"{}\"",
        conf.name, container_id
    ));
    let mut protos: Vec<&str> = conf.mappings.iter().map(|m| m.protocol.as_str()).collect();
    protos.sort_unstable();
    protos.dedup();
    let conditions = if v6 {
        &conf.conditions_v6
    } else {
        &conf.conditions_v4
    };
    let mut entries = Vec::new();
    for proto in protos {
        let ports: Vec<String> = conf
            .mappings
            .iter()
            .filter(|m| m.protocol == proto)
            .map(|m| m.host_port.to_string())
            .collect();
        // multiport takes at most 15 ports.
        for group in ports.chunks(15) {
            let ports = group.join(",");
            let mut args = vec![
                "-m",
                "comment",
                "--comment",
                &comment,
                "-m",
                "multiport",
                "-p",
                proto,
                "--destination-ports",
                &ports,
            ];
            args.extend(conditions.iter().map(String::as_str));
            args.extend(["-j", chain.as_str()]);
            entries.push(iptables::rule(&args));
        }
    }
    let set_mark = conf.set_mark_chain();
    let net = container.to_string();
    let mut rules = Vec::new();
    for m in &conf.mappings {
        let host_ip = m.host_ip.as_deref().filter(|ip| !ip.is_empty());
        let mut base = vec![
            "-p".to_owned(),
            m.protocol.clone(),
            "--dport".to_owned(),
            m.host_port.to_string(),
        ];
        if let Some(host_ip) = host_ip.and_then(|ip| ip.parse::<IpAddr>().ok()) {
            if host_ip.is_ipv6() != v6 {
                continue;
            }
            if !host_ip.is_unspecified() {
                base.extend(["-d".to_owned(), host_ip.to_string()]);
            }
        }
        let with = |extra: &[&str]| -> String {
            let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
            args.extend_from_slice(extra);
            iptables::rule(&args)
        };
        if conf.snat {
            rules.push(with(&["-s", &net, "-j", set_mark]));
            if !v6 {
                rules.push(with(&["-s", "127.0.0.1", "-j", set_mark]));
            }
        }
        let to = fmt_ip_port(container.addr, m.container_port);
        rules.push(with(&["-j", "DNAT", "--to-destination", &to]));
    }
    (entries, rules)
}

/// Adds the shared chains' rules that are missing to `batch`.
fn ensure_shared(
    ipt: &Iptables,
    state: &TableState,
    conf: &PortMapConf,
    batch: &mut Batch,
) -> Result<(), PluginError> {
    if conf.snat && conf.external_set_mark_chain.is_none() {
        let mark = conf.mark();
        ipt.ensure_chain(state, "nat", SET_MARK_CHAIN)?;
        let set_mark = iptables::rule(&[
            "-m",
            "comment",
            "--comment",
            "CNI portfwd masquerade mark",
            "-j",
            "MARK",
            "--set-xmark",
            &mark,
        ]);
        if !state.has_rule(SET_MARK_CHAIN, &set_mark) {
            batch.append(SET_MARK_CHAIN, &set_mark);
        }
        ipt.ensure_chain(state, "nat", MARK_MASQ_CHAIN)?;
        let masq = iptables::rule(&["-m", "mark", "--mark", &mark, "-j", "MASQUERADE"]);
        if !state.has_rule(MARK_MASQ_CHAIN, &masq) {
            batch.append(MARK_MASQ_CHAIN, &masq);
        }
        let entry = iptables::rule(&[
            "-m",
            "comment",
            "--comment",
            "CNI portfwd requiring masquerade",
            "-j",
            MARK_MASQ_CHAIN,
        ]);
        if !state.has_rule("POSTROUTING", &entry) {
            // First, or the bridge plugin's masquerade rules would win.
            batch.insert_first("POSTROUTING", &entry);
        }
    }
    ipt.ensure_chain(state, "nat", TOP_LEVEL_DNAT_CHAIN)?;
    let entry = iptables::rule(&[
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        TOP_LEVEL_DNAT_CHAIN,
    ]);
    for chain in ["PREROUTING", "OUTPUT"] {
        if !state.has_rule(chain, &entry) {
            batch.append(chain, &entry);
        }
    }
    Ok(())
}

fn forward_ports(
    conf: &PortMapConf,
    container_id: &str,
    container: IpPrefix,
) -> Result<(), PluginError> {
    let family = Family::of(&container.addr);
    let ipt = Iptables::new(family);
    if conf.snat && family == Family::V4 {
        // Let 127/8 cross into the pod network for localhost hostPorts.
        let oif = Netlink::open()?
            .route_get_oif(container.addr)
            .ok()
            .flatten();
        if let Some(oif) = oif
            && let Some(link) = Netlink::open()?.link_by_index(oif)?
        {
            netns::sysctl_write(&format!("net/ipv4/conf/{}/route_localnet", link.name), "1")
                .map_err(|err| {
                    PluginError::new(
                        ErrorCode::Internal,
                        format!("unable to enable route_localnet: {err}"),
                    )
                })?;
        }
    }
    let _lock = iptables::lock()?;
    let state = ipt.save("nat")?;
    let chain = dnat_chain(&conf.name, container_id);
    let (entries, rules) = dnat_rules(conf, container_id, container);
    let mut batch = Batch::default();
    batch.declare_chain(&chain);
    ensure_shared(&ipt, &state, conf, &mut batch)?;
    for old in state.jumps(TOP_LEVEL_DNAT_CHAIN, &chain) {
        batch.delete(TOP_LEVEL_DNAT_CHAIN, &old.spec);
    }
    for rule in &rules {
        batch.append(&chain, rule);
    }
    for entry in &entries {
        batch.append(TOP_LEVEL_DNAT_CHAIN, entry);
    }
    ipt.apply("nat", &batch).map_err(|err| {
        PluginError::from_error(ErrorCode::Internal, &err)
            .with_details(format!("unable to setup DNAT for {container}"))
    })
}

/// Removes the container's chains and the jumps to them, in one family.
fn unforward_ports(ipt: &Iptables, network: &str, container_id: &str) -> Result<(), PluginError> {
    let _lock = iptables::lock()?;
    let Ok(state) = ipt.save("nat") else {
        return Ok(());
    };
    let mut batch = Batch::default();
    for chain in [
        dnat_chain(network, container_id),
        old_snat_chain(network, container_id),
    ] {
        for old in state.all_jumps(&chain) {
            batch.delete(&old.chain, &old.spec);
        }
        if state.has_chain(&chain) {
            batch.flush(&chain);
            batch.delete_chain(&chain);
        }
    }
    ipt.apply("nat", &batch)?;
    Ok(())
}

impl Plugin for PortMap {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, PluginError> {
        let conf = PortMapConf::parse(&args.config)?;
        let prev = args.prev_result()?.ok_or_else(|| {
            PluginError::new(
                ErrorCode::InvalidNetworkConfig,
                "must be called as chained plugin",
            )
        })?;
        if conf.mappings.is_empty() {
            return Ok(prev);
        }
        let (v4, v6) = container_ips(&prev, &args.ifname);
        for ip in [v4, v6].into_iter().flatten() {
            if let Err(err) = forward_ports(&conf, &args.container_id, ip) {
                // Nothing half-made stays behind.
                for family in [Family::V4, Family::V6] {
                    let _ = unforward_ports(&Iptables::new(family), &conf.name, &args.container_id);
                }
                return Err(err);
            }
        }
        Ok(prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let conf = PortMapConf::parse(&args.config)?;
        if conf.mappings.is_empty() {
            return Ok(());
        }
        // Which families were used is not known here; a family without
        // usable iptables is skipped, as the reference does.
        let mut errors = Vec::new();
        for family in [Family::V4, Family::V6] {
            if let Err(err) =
                unforward_ports(&Iptables::new(family), &conf.name, &args.container_id)
            {
                errors.push(err);
            }
        }
        match errors.into_iter().next() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn check(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let conf = PortMapConf::parse(&args.config)?;
        let prev = args
            .prev_result()?
            .ok_or_else(|| PluginError::new(ErrorCode::Internal, "Required prevResult missing"))?;
        if conf.mappings.is_empty() {
            return Ok(());
        }
        let (v4, v6) = container_ips(&prev, &args.ifname);
        let chain = dnat_chain(&conf.name, &args.container_id);
        for ip in [v4, v6].into_iter().flatten() {
            let ipt = Iptables::new(Family::of(&ip.addr));
            let state = ipt.save("nat")?;
            if !state.has_chain(&chain) {
                return Err(PluginError::new(
                    ErrorCode::Internal,
                    format!("chain {chain} not found in iptables table nat"),
                ));
            }
            let (entries, rules) = dnat_rules(&conf, &args.container_id, ip);
            let have_rules = state.rules.iter().filter(|r| r.chain == chain).count();
            let have_entries = state.jumps(TOP_LEVEL_DNAT_CHAIN, &chain).len();
            if have_rules != rules.len() || have_entries != entries.len() {
                return Err(PluginError::new(
                    ErrorCode::Internal,
                    format!(
                        "rules in chain {chain} do not match: {have_rules} of {} rules, {have_entries} of {} entries",
                        rules.len(),
                        entries.len()
                    ),
                ));
            }
            for m in &conf.mappings {
                let to = fmt_ip_port(ip.addr, m.container_port);
                let expected = format!("--dport {} -j DNAT --to-destination {to}", m.host_port);
                let host_family_ok = m
                    .host_ip
                    .as_deref()
                    .and_then(|h| h.parse::<IpAddr>().ok())
                    .is_none_or(|h| h.is_ipv4() == ip.addr.is_ipv4());
                if host_family_ok
                    && !state
                        .rules
                        .iter()
                        .any(|r| r.chain == chain && r.spec.ends_with(&expected))
                {
                    return Err(PluginError::new(
                        ErrorCode::Internal,
                        format!(
                            "DNAT rule for host port {} not found in {chain}",
                            m.host_port
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(extra: serde_json::Value) -> PortMapConf {
        let mut base = json!({
            "name": "cnit-ref", "type": "portmap",
            "runtimeConfig": {"portMappings": [
                {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 18081, "containerPort": 81, "protocol": "udp", "hostIP": "127.0.0.1"}
            ]}
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        PortMapConf::parse(&base).unwrap()
    }

    #[test]
    fn rules_match_the_reference_layout() {
        let c = conf(json!({}));
        let (entries, rules) = dnat_rules(&c, "refabc", "10.240.99.2/24".parse().unwrap());
        assert_eq!(
            entries,
            [
                r#"-m comment --comment "dnat name: \"cnit-ref\" id: \"refabc\"" -m multiport -p tcp --destination-ports 18080 -j CNI-DN-15440f88a71c1407accc4"#,
                r#"-m comment --comment "dnat name: \"cnit-ref\" id: \"refabc\"" -m multiport -p udp --destination-ports 18081 -j CNI-DN-15440f88a71c1407accc4"#,
            ]
        );
        assert_eq!(
            rules,
            [
                "-p tcp --dport 18080 -s 10.240.99.2/24 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 18080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 18080 -j DNAT --to-destination 10.240.99.2:80",
                "-p udp --dport 18081 -d 127.0.0.1 -s 10.240.99.2/24 -j CNI-HOSTPORT-SETMARK",
                "-p udp --dport 18081 -d 127.0.0.1 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK",
                "-p udp --dport 18081 -d 127.0.0.1 -j DNAT --to-destination 10.240.99.2:81",
            ]
        );
        // IPv6: no localhost rule, bracketed destination, v4 hostIP skipped.
        let (_, rules) = dnat_rules(&c, "refabc", "fd00:240:99::2/64".parse().unwrap());
        assert_eq!(
            rules,
            [
                "-p tcp --dport 18080 -s fd00:240:99::2/64 -j CNI-HOSTPORT-SETMARK",
                "-p tcp --dport 18080 -j DNAT --to-destination [fd00:240:99::2]:80",
            ]
        );
    }

    #[test]
    fn options() {
        let c = conf(json!({"snat": false, "conditionsV4": ["!", "-s", "10.0.0.0/8"]}));
        let (entries, rules) = dnat_rules(&c, "x", "10.240.99.2/24".parse().unwrap());
        assert!(entries[0].ends_with(&format!(
            "--destination-ports 18080 ! -s 10.0.0.0/8 -j {}",
            dnat_chain("cnit-ref", "x")
        )));
        assert!(rules.iter().all(|r| !r.contains("SETMARK")));
        let c = conf(json!({"externalSetMarkChain": "KUBE-MARK-MASQ"}));
        let (_, rules) = dnat_rules(&c, "x", "10.240.99.2/24".parse().unwrap());
        assert!(rules[0].ends_with("-j KUBE-MARK-MASQ"));
        assert_eq!(conf(json!({"markMasqBit": 14})).mark(), "0x4000/0x4000");
        assert_eq!(conf(json!({})).mark(), "0x2000/0x2000");
        let bad = json!({"name": "n", "markMasqBit": 14, "externalSetMarkChain": "X"});
        assert_eq!(
            PortMapConf::parse(&bad).unwrap_err().code,
            ErrorCode::InvalidNetworkConfig
        );
        let bad = json!({"name": "n", "markMasqBit": 32});
        assert!(PortMapConf::parse(&bad).is_err());
        let bad = json!({"name": "n", "runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}});
        assert!(PortMapConf::parse(&bad).is_err());
    }

    #[test]
    fn many_ports_split_into_groups_of_15() {
        let mappings: Vec<serde_json::Value> = (0..20)
            .map(|i| json!({"hostPort": 20000 + i, "containerPort": 80 + i, "protocol": "tcp"}))
            .collect();
        let c =
            PortMapConf::parse(&json!({"name": "n", "runtimeConfig": {"portMappings": mappings}}))
                .unwrap();
        let (entries, rules) = dnat_rules(&c, "x", "10.240.99.2/24".parse().unwrap());
        assert_eq!(entries.len(), 2);
        assert_eq!(rules.len(), 60);
    }

    #[test]
    fn picks_sandbox_addresses() {
        let prev = CniResult::from_value(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [
                {"address": "10.240.99.1/24", "interface": 0},
                {"address": "10.240.99.2/24", "interface": 2},
                {"address": "fd00:240:99::2/64", "interface": 2}
            ]
        }))
        .unwrap();
        let (v4, v6) = container_ips(&prev, "eth0");
        assert_eq!(v4.unwrap().to_string(), "10.240.99.2/24");
        assert_eq!(v6.unwrap().to_string(), "fd00:240:99::2/64");
        assert_eq!(container_ips(&prev, "eth1"), (None, None));
    }
}
