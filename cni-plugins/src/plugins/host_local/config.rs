//! host-local's configuration: the `ipam` section of the network config
//! (`ranges`, the single-range shorthand `subnet`/`rangeStart`/`rangeEnd`/
//! `gateway`, `routes`, `dataDir`, `resolvConf`), plus requested addresses
//! from `CNI_ARGS` (`IP=`), `args.cni.ips` and `runtimeConfig.ips`, and
//! extra ranges from `runtimeConfig.ipRanges`.
//!
//! Every range is checked and completed as the reference plugin does it
//! (gateway defaults to the subnet's first address, `rangeStart` to the
//! first host, `rangeEnd` to the last host, IPv4 broadcast excluded), and
//! no two ranges may overlap.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::result::{IpPrefix, Route};

/// Default `dataDir`, as in the reference plugin.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// Why an IPAM config is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config does not have the expected shape.
    #[error("failed to decode IPAM config: {0}")]
    Decode(#[source] serde_json::Error),
    /// No `ipam` section.
    #[error("IPAM config missing 'ipam' key")]
    MissingIpam,
    /// No range given anywhere.
    #[error("no IP ranges specified")]
    NoRanges,
    /// A subnet is not `address/prefix`.
    #[error("invalid CIDR address: {0}")]
    InvalidCidr(String),
    /// An address is not an IP address.
    #[error("invalid IP address: {0}")]
    InvalidIp(String),
    /// A range set is invalid.
    #[error("invalid range set {index}: {reason}")]
    InvalidRangeSet {
        /// Position in the list of range sets.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Two range sets overlap.
    #[error("range set {0} overlaps with {1}")]
    Overlap(usize, usize),
}

/// One contiguous allocation range inside a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet, host bits clear.
    pub subnet: IpPrefix,
    /// First allocatable address, inclusive.
    pub start: IpAddr,
    /// Last allocatable address, inclusive.
    pub end: IpAddr,
    /// The gateway (never handed out).
    pub gateway: IpAddr,
}

/// Ranges of one address family; an ADD takes one address from each set.
pub type RangeSet = Vec<Range>;

/// The completed host-local config.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConfig {
    /// Network name: the store's directory under `data_dir`.
    pub name: String,
    /// Range sets in order; index N keeps `last_reserved_ip.N`.
    pub ranges: Vec<RangeSet>,
    /// Routes to return.
    pub routes: Vec<Route>,
    /// Store root.
    pub data_dir: PathBuf,
    /// resolv.conf to turn into the result's DNS.
    pub resolv_conf: Option<PathBuf>,
    /// Addresses the runtime asked for.
    pub requested: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct RawNet {
    #[serde(default)]
    name: String,
    #[serde(default)]
    ipam: Option<RawIpam>,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: Option<RawRuntimeConfig>,
    #[serde(default)]
    args: Option<RawArgs>,
}

#[derive(Deserialize, Default)]
struct RawRuntimeConfig {
    #[serde(default, rename = "ipRanges")]
    ip_ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Deserialize, Default)]
struct RawArgs {
    #[serde(default)]
    cni: Option<RawCniArgs>,
}

#[derive(Deserialize, Default)]
struct RawCniArgs {
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Deserialize)]
struct RawIpam {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default, rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(default, rename = "rangeEnd")]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default, rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(default, rename = "resolvConf")]
    resolv_conf: Option<String>,
}

#[derive(Deserialize, Clone)]
struct RawRange {
    subnet: String,
    #[serde(default, rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(default, rename = "rangeEnd")]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

/// An address as a number, for arithmetic on either family.
pub fn to_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of the same family as `like` with value `bits`.
pub fn from_bits(bits: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((bits as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(bits.into()),
    }
}

/// The next address, wrapping within the family.
pub fn next_ip(ip: IpAddr) -> IpAddr {
    let max = if ip.is_ipv4() {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    let bits = to_bits(ip);
    from_bits(if bits == max { 0 } else { bits + 1 }, ip)
}

fn host_bits(prefix: &IpPrefix) -> u32 {
    let width = if prefix.addr.is_ipv4() { 32 } else { 128 };
    width - u32::from(prefix.prefix_len)
}

fn mask_bits(prefix: &IpPrefix) -> u128 {
    let host = host_bits(prefix);
    if host >= 128 {
        0
    } else {
        !((1u128 << host) - 1)
    }
}

/// Whether `ip` is inside the network `prefix`.
pub fn subnet_contains(prefix: &IpPrefix, ip: IpAddr) -> bool {
    prefix.addr.is_ipv4() == ip.is_ipv4()
        && to_bits(ip) & mask_bits(prefix) == to_bits(prefix.addr) & mask_bits(prefix)
}

/// The network of an interface address (host bits cleared).
pub fn network_of(prefix: &IpPrefix) -> IpPrefix {
    IpPrefix {
        addr: from_bits(to_bits(prefix.addr) & mask_bits(prefix), prefix.addr),
        prefix_len: prefix.prefix_len,
    }
}

fn parse_ip(text: &str) -> Result<IpAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::InvalidIp(text.to_owned()))
}

/// An address that may come as `ip` or `ip/prefix` (`CNI_ARGS IP=`, `ips`).
fn parse_requested(text: &str) -> Result<IpAddr, ConfigError> {
    let addr = text.split_once('/').map_or(text, |(addr, _)| addr);
    parse_ip(addr)
}

impl Range {
    fn canonicalize(raw: &RawRange) -> Result<Self, String> {
        let subnet: IpPrefix = raw
            .subnet
            .parse()
            .map_err(|_| format!("invalid CIDR address: {}", raw.subnet))?;
        let width = if subnet.addr.is_ipv4() { 32 } else { 128 };
        if subnet.prefix_len > width - 2 {
            return Err(format!("Network {subnet} too small to allocate from"));
        }
        let network = from_bits(to_bits(subnet.addr) & mask_bits(&subnet), subnet.addr);
        if network != subnet.addr {
            return Err(format!(
                "Network has host bits set. For a subnet mask of length {} the network address is {network}",
                subnet.prefix_len
            ));
        }
        let parse = |text: &str| -> Result<IpAddr, String> {
            let ip: IpAddr = text
                .parse()
                .map_err(|_| format!("invalid IP address: {text}"))?;
            if ip.is_ipv4() != subnet.addr.is_ipv4() {
                return Err(format!("{ip} is not in network {subnet}"));
            }
            Ok(ip)
        };
        let gateway = match &raw.gateway {
            Some(gw) => parse(gw)?,
            None => next_ip(network),
        };
        let start = match &raw.range_start {
            Some(start) => {
                let start = parse(start)?;
                if !subnet_contains(&subnet, start) {
                    return Err(format!("RangeStart {start} not in network {subnet}"));
                }
                start
            }
            None => next_ip(network),
        };
        let end = match &raw.range_end {
            Some(end) => {
                let end = parse(end)?;
                if !subnet_contains(&subnet, end) || to_bits(end) < to_bits(start) {
                    return Err(format!("RangeEnd {end} not in network {subnet}"));
                }
                end
            }
            None => {
                let last = to_bits(network) | !mask_bits(&subnet) & max_bits(network);
                // The IPv4 broadcast address is never a host.
                let last = if network.is_ipv4() { last - 1 } else { last };
                from_bits(last, network)
            }
        };
        Ok(Self {
            subnet,
            start,
            end,
            gateway,
        })
    }

    /// Whether `ip` lies in this range (subnet and start..=end).
    pub fn contains(&self, ip: IpAddr) -> bool {
        subnet_contains(&self.subnet, ip)
            && to_bits(ip) >= to_bits(self.start)
            && to_bits(ip) <= to_bits(self.end)
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.subnet.addr.is_ipv4() == other.subnet.addr.is_ipv4()
            && (self.contains(other.start)
                || self.contains(other.end)
                || other.contains(self.start)
                || other.contains(self.end))
    }
}

fn max_bits(like: IpAddr) -> u128 {
    if like.is_ipv4() {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// `start-end,start-end`, as the reference prints a range set.
pub fn range_set_string(set: &RangeSet) -> String {
    set.iter()
        .map(Range::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The range of `set` holding `ip`.
pub fn range_for(set: &RangeSet, ip: IpAddr) -> Option<&Range> {
    set.iter().find(|r| r.contains(ip))
}

fn canonicalize_set(raw: &[RawRange]) -> Result<RangeSet, String> {
    if raw.is_empty() {
        return Err("empty range set".into());
    }
    let set: RangeSet = raw
        .iter()
        .map(Range::canonicalize)
        .collect::<Result<_, _>>()?;
    if set
        .iter()
        .any(|r| r.subnet.addr.is_ipv4() != set[0].subnet.addr.is_ipv4())
    {
        return Err("mixed address families".into());
    }
    for (i, a) in set.iter().enumerate() {
        for b in &set[i + 1..] {
            if a.overlaps(b) {
                return Err(format!("subnets {a} and {b} overlap"));
            }
        }
    }
    Ok(set)
}

impl IpamConfig {
    /// Reads the config from the whole network config and the `CNI_ARGS` `IP`.
    pub fn parse(config: &Value, ip_arg: Option<&str>) -> Result<Self, ConfigError> {
        let raw = RawNet::deserialize(config).map_err(ConfigError::Decode)?;
        let ipam = raw.ipam.ok_or(ConfigError::MissingIpam)?;
        let runtime = raw.runtime_config.unwrap_or_default();

        let mut requested = Vec::new();
        if let Some(ip) = ip_arg.filter(|ip| !ip.is_empty()) {
            requested.push(parse_requested(ip)?);
        }
        for ip in raw
            .args
            .and_then(|a| a.cni)
            .map(|c| c.ips)
            .unwrap_or_default()
        {
            requested.push(parse_requested(&ip)?);
        }
        for ip in &runtime.ips {
            requested.push(parse_requested(ip)?);
        }

        // Runtime ranges first, then the shorthand, then `ranges`.
        let mut raw_sets: Vec<Vec<RawRange>> = runtime.ip_ranges.clone();
        if let Some(subnet) = ipam.subnet.as_ref().filter(|s| !s.is_empty()) {
            raw_sets.push(vec![RawRange {
                subnet: subnet.clone(),
                range_start: ipam.range_start.clone(),
                range_end: ipam.range_end.clone(),
                gateway: ipam.gateway.clone(),
            }]);
        }
        raw_sets.extend(ipam.ranges.iter().cloned());
        if raw_sets.is_empty() {
            return Err(ConfigError::NoRanges);
        }
        let mut ranges = Vec::new();
        for (index, raw_set) in raw_sets.iter().enumerate() {
            let set = canonicalize_set(raw_set).map_err(|reason| {
                if reason.starts_with("invalid CIDR") {
                    ConfigError::InvalidCidr(
                        raw_set
                            .iter()
                            .find(|r| r.subnet.parse::<IpPrefix>().is_err())
                            .map(|r| r.subnet.clone())
                            .unwrap_or_default(),
                    )
                } else {
                    ConfigError::InvalidRangeSet { index, reason }
                }
            })?;
            ranges.push(set);
        }
        for (i, a) in ranges.iter().enumerate() {
            for (offset, b) in ranges[i + 1..].iter().enumerate() {
                if a.iter().any(|ra| b.iter().any(|rb| ra.overlaps(rb))) {
                    return Err(ConfigError::Overlap(i, i + 1 + offset));
                }
            }
        }
        Ok(Self {
            name: raw.name,
            ranges,
            routes: ipam.routes,
            data_dir: ipam
                .data_dir
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned())
                .into(),
            resolv_conf: ipam.resolv_conf.filter(|r| !r.is_empty()).map(Into::into),
            requested,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(ipam: Value) -> Result<IpamConfig, ConfigError> {
        IpamConfig::parse(
            &json!({"name": "net", "cniVersion": "1.0.0", "ipam": ipam}),
            None,
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn shorthand_subnet_gets_reference_defaults() {
        let conf = parse(json!({"type": "host-local", "subnet": "10.240.1.0/24"})).unwrap();
        assert_eq!(conf.ranges.len(), 1);
        let range = &conf.ranges[0][0];
        assert_eq!(range.start, ip("10.240.1.1"));
        assert_eq!(range.end, ip("10.240.1.254"));
        assert_eq!(range.gateway, ip("10.240.1.1"));
        assert_eq!(conf.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(range_set_string(&conf.ranges[0]), "10.240.1.1-10.240.1.254");
    }

    #[test]
    fn dual_stack_ranges_with_bounds() {
        let conf = parse(json!({
            "ranges": [
                [{"subnet": "10.240.2.0/24", "rangeStart": "10.240.2.10", "rangeEnd": "10.240.2.20", "gateway": "10.240.2.254"}],
                [{"subnet": "fd00:240:2::/64"}]
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:240:2::1"}],
            "dataDir": "/tmp/x",
            "resolvConf": "/etc/resolv.conf"
        }))
        .unwrap();
        let v4 = &conf.ranges[0][0];
        assert_eq!(
            (v4.start, v4.end, v4.gateway),
            (ip("10.240.2.10"), ip("10.240.2.20"), ip("10.240.2.254"))
        );
        let v6 = &conf.ranges[1][0];
        assert_eq!(v6.start, ip("fd00:240:2::1"));
        assert_eq!(v6.end, ip("fd00:240:2::ffff:ffff:ffff:ffff"));
        assert_eq!(conf.routes.len(), 2);
        assert_eq!(conf.routes[1].gw, Some(ip("fd00:240:2::1")));
        assert_eq!(conf.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
    }

    #[test]
    fn rejects_bad_ranges() {
        let bad = [
            json!({"subnet": "10.240.3.0/33"}),
            json!({"subnet": "10.240.3.0"}),
            json!({"subnet": "not-a-cidr/24"}),
            json!({"subnet": "10.240.3.1/24"}),
            json!({"subnet": "10.240.3.0/31"}),
            json!({"subnet": "10.240.3.0/24", "rangeStart": "10.240.4.1"}),
            json!({"subnet": "10.240.3.0/24", "rangeEnd": "10.240.3.300"}),
            json!({"subnet": "10.240.3.0/24", "gateway": "fd00::1"}),
        ];
        for raw in bad {
            let err = parse(json!({"ranges": [[raw.clone()]]}));
            assert!(err.is_err(), "{raw} accepted");
        }
        assert!(matches!(
            parse(json!({"ranges": [[{"subnet": "10.240.3.0/33"}]]})),
            Err(ConfigError::InvalidCidr(_))
        ));
        assert!(matches!(parse(json!({})), Err(ConfigError::NoRanges)));
        assert!(matches!(
            IpamConfig::parse(&json!({"name": "n"}), None),
            Err(ConfigError::MissingIpam)
        ));
        assert!(matches!(
            parse(json!({"ranges": "x"})),
            Err(ConfigError::Decode(_))
        ));
        let mixed = json!({"ranges": [[{"subnet": "10.240.3.0/24"}, {"subnet": "fd00::/64"}]]});
        assert!(matches!(
            parse(mixed),
            Err(ConfigError::InvalidRangeSet { .. })
        ));
        let overlap =
            json!({"ranges": [[{"subnet": "10.240.3.0/24"}], [{"subnet": "10.240.3.0/25"}]]});
        assert!(matches!(parse(overlap), Err(ConfigError::Overlap(0, 1))));
    }

    #[test]
    fn requested_addresses_from_every_source() {
        let config = json!({
            "name": "n",
            "ipam": {"subnet": "10.240.5.0/24"},
            "args": {"cni": {"ips": ["10.240.5.7"]}},
            "runtimeConfig": {"ips": ["10.240.5.8/24"], "ipRanges": [[{"subnet": "10.240.6.0/24"}]]}
        });
        let conf = IpamConfig::parse(&config, Some("10.240.5.9")).unwrap();
        assert_eq!(
            conf.requested,
            [ip("10.240.5.9"), ip("10.240.5.7"), ip("10.240.5.8")]
        );
        // Runtime ranges come first.
        assert_eq!(conf.ranges[0][0].subnet.to_string(), "10.240.6.0/24");
        assert!(IpamConfig::parse(&config, Some("nope")).is_err());
    }

    #[test]
    fn address_arithmetic() {
        assert_eq!(next_ip(ip("10.0.0.255")), ip("10.0.1.0"));
        assert_eq!(next_ip(ip("255.255.255.255")), ip("0.0.0.0"));
        assert_eq!(next_ip(ip("fd00::ffff")), ip("fd00::1:0"));
        let net: IpPrefix = "10.240.0.0/16".parse().unwrap();
        assert!(subnet_contains(&net, ip("10.240.255.1")));
        assert!(!subnet_contains(&net, ip("10.241.0.1")));
        assert!(!subnet_contains(&net, ip("fd00::1")));
        let all: IpPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(subnet_contains(&all, ip("1.2.3.4")));
    }
}
