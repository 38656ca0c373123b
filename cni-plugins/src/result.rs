//! CNI result types (what a plugin prints on a successful ADD), parsed from
//! spec versions 0.1.0 up to 1.1.0 into one shape, and written back in any
//! of the versions our plugins speak ([`CniResult::to_value`]).
//!
//! The parsed fields are for the runtime's own use (pod IPs, DNS); the
//! original JSON is kept in [`CniResult::raw`] because that, not our
//! re-encoding, is what the next plugin must see as `prevResult`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};

use crate::version;

/// Errors turning plugin output into a [`CniResult`].
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// The output is not JSON, or not shaped like a CNI result.
    #[error("malformed CNI result")]
    Json(#[source] serde_json::Error),
    /// An address is not `ip/prefix-length`.
    #[error("invalid CIDR address {value:?}")]
    InvalidPrefix {
        /// The text that failed to parse.
        value: String,
    },
}

/// An address with its prefix length, as CNI writes it (`10.1.0.5/16`).
/// Unlike a network, the host bits are kept: this is the interface's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    /// The address, host bits included.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix_len: u8,
}

impl FromStr for IpPrefix {
    type Err = ResultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ResultError::InvalidPrefix {
            value: s.to_owned(),
        };
        let (addr, len) = s.split_once('/').ok_or_else(invalid)?;
        let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
        let prefix_len: u8 = len.parse().map_err(|_| invalid())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(invalid());
        }
        Ok(Self { addr, prefix_len })
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An interface a plugin created or configured.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Interface {
    /// Interface name (`eth0`, `cni0`, `veth1234`).
    pub name: String,
    /// Hardware address, when the interface has one.
    #[serde(default)]
    pub mac: Option<String>,
    /// MTU (CNI 1.1).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; absent for host-side ones.
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Socket path for userspace interfaces (CNI 1.1).
    #[serde(default, rename = "socketPath")]
    pub socket_path: Option<String>,
    /// PCI address of a device interface (CNI 1.1).
    #[serde(default, rename = "pciID")]
    pub pci_id: Option<String>,
}

/// One IP address assignment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: IpPrefix,
    /// Default gateway for this address, if any.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`] of the interface holding the address.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// One route a plugin installed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Route {
    /// Destination network.
    pub dst: IpPrefix,
    /// Next hop; absent means the interface's default gateway.
    #[serde(default)]
    pub gw: Option<IpAddr>,
    /// Route MTU (CNI 1.1).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Advertised MSS (CNI 1.1).
    #[serde(default)]
    pub advmss: Option<u32>,
    /// Route priority (CNI 1.1).
    #[serde(default)]
    pub priority: Option<u32>,
    /// Routing table (CNI 1.1).
    #[serde(default)]
    pub table: Option<u32>,
    /// Route scope (CNI 1.1).
    #[serde(default)]
    pub scope: Option<u32>,
}

/// DNS settings a plugin suggests for the container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Dns {
    /// Name server addresses.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default)]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default)]
    pub options: Vec<String>,
}

impl Route {
    /// A route to `dst`, via `gw` if given, with no CNI 1.1 extras.
    pub fn new(dst: IpPrefix, gw: Option<IpAddr>) -> Self {
        Self {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

impl Dns {
    /// Whether nothing is set; an empty `dns` is left out of a result.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// Why a result cannot be written in a requested version.
#[derive(Debug, thiserror::Error)]
#[error("cannot write a CNI result in version {version:?}: supported are {supported:?}")]
pub struct ConvertError {
    /// The requested version.
    pub version: String,
    /// What can be written.
    pub supported: &'static [&'static str],
}

/// The result of a network ADD.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    /// Spec version the result is written in.
    pub cni_version: String,
    /// Interfaces created or configured.
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    pub ips: Vec<IpConfig>,
    /// Routes installed.
    pub routes: Vec<Route>,
    /// DNS settings.
    pub dns: Dns,
    /// The result exactly as the plugin printed it.
    pub raw: Value,
}

/// The 0.3.0 and later shape. `ips[].version` (0.3/0.4) is ignored: the
/// address itself says which family it is.
#[derive(Deserialize)]
struct CurrentWire {
    #[serde(default, rename = "cniVersion")]
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

/// The 0.1.0/0.2.0 shape: one optional block per address family.
#[derive(Deserialize)]
struct LegacyWire {
    #[serde(default, rename = "cniVersion")]
    cni_version: String,
    #[serde(default)]
    ip4: Option<LegacyIp>,
    #[serde(default)]
    ip6: Option<LegacyIp>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Deserialize)]
struct LegacyIp {
    ip: IpPrefix,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

impl CniResult {
    /// Parses a plugin's result JSON, keeping it as [`CniResult::raw`].
    pub fn from_value(raw: Value) -> Result<Self, ResultError> {
        let is_legacy =
            raw.get("ips").is_none() && (raw.get("ip4").is_some() || raw.get("ip6").is_some());
        if is_legacy {
            let wire = LegacyWire::deserialize(&raw).map_err(ResultError::Json)?;
            let mut ips = Vec::new();
            let mut routes = Vec::new();
            for block in [wire.ip4, wire.ip6].into_iter().flatten() {
                ips.push(IpConfig {
                    address: block.ip,
                    gateway: block.gateway,
                    interface: None,
                });
                routes.extend(block.routes);
            }
            return Ok(Self {
                cni_version: wire.cni_version,
                interfaces: Vec::new(),
                ips,
                routes,
                dns: wire.dns,
                raw,
            });
        }
        let wire = CurrentWire::deserialize(&raw).map_err(ResultError::Json)?;
        Ok(Self {
            cni_version: wire.cni_version,
            interfaces: wire.interfaces,
            ips: wire.ips,
            routes: wire.routes,
            dns: wire.dns,
            raw,
        })
    }

    /// A result built by a plugin (no raw JSON of its own yet).
    pub fn new(
        interfaces: Vec<Interface>,
        ips: Vec<IpConfig>,
        routes: Vec<Route>,
        dns: Dns,
    ) -> Self {
        Self {
            cni_version: version::CURRENT_VERSION.to_owned(),
            interfaces,
            ips,
            routes,
            dns,
            raw: Value::Null,
        }
    }

    /// The result as JSON in spec version `target`: 0.3.x/0.4.0 carry
    /// `ips[].version` and lack the 1.1 fields; 1.0.0 lacks the 1.1 fields
    /// (interface `mtu`/`socketPath`/`pciID`, route `mtu`/`advmss`/
    /// `priority`/`table`/`scope`); 1.1.0 has everything. Empty lists and an
    /// empty `dns` are left out, as libcni's encoder does.
    pub fn to_value(&self, target: &str) -> Result<Value, ConvertError> {
        if !version::is_supported(target) {
            return Err(ConvertError {
                version: target.to_owned(),
                supported: version::SUPPORTED_VERSIONS,
            });
        }
        let legacy = target.starts_with("0.");
        let full = target != "1.0.0" && !legacy;
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(target));
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|iface| {
                let mut obj = Map::new();
                obj.insert("name".into(), json!(iface.name));
                put_opt(
                    &mut obj,
                    "mac",
                    iface.mac.as_deref().filter(|m| !m.is_empty()),
                );
                put_opt(
                    &mut obj,
                    "sandbox",
                    iface.sandbox.as_deref().filter(|s| !s.is_empty()),
                );
                if full {
                    put_opt(&mut obj, "mtu", iface.mtu.filter(|&m| m > 0));
                    put_opt(&mut obj, "socketPath", iface.socket_path.as_deref());
                    put_opt(&mut obj, "pciID", iface.pci_id.as_deref());
                }
                Value::Object(obj)
            })
            .collect();
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut obj = Map::new();
                if legacy {
                    let family = if ip.address.addr.is_ipv4() { "4" } else { "6" };
                    obj.insert("version".into(), json!(family));
                }
                put_opt(&mut obj, "interface", ip.interface);
                obj.insert("address".into(), json!(ip.address.to_string()));
                put_opt(&mut obj, "gateway", ip.gateway.map(|g| g.to_string()));
                Value::Object(obj)
            })
            .collect();
        if !ips.is_empty() {
            out.insert("ips".into(), Value::Array(ips));
        }
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|route| {
                let mut obj = Map::new();
                obj.insert("dst".into(), json!(route.dst.to_string()));
                put_opt(&mut obj, "gw", route.gw.map(|g| g.to_string()));
                if full {
                    put_opt(&mut obj, "mtu", route.mtu.filter(|&v| v > 0));
                    put_opt(&mut obj, "advmss", route.advmss.filter(|&v| v > 0));
                    put_opt(&mut obj, "priority", route.priority.filter(|&v| v > 0));
                    put_opt(&mut obj, "table", route.table);
                    put_opt(&mut obj, "scope", route.scope);
                }
                Value::Object(obj)
            })
            .collect();
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        if !self.dns.is_empty() {
            let mut obj = Map::new();
            if !self.dns.nameservers.is_empty() {
                obj.insert("nameservers".into(), json!(self.dns.nameservers));
            }
            put_opt(&mut obj, "domain", self.dns.domain.as_deref());
            if !self.dns.search.is_empty() {
                obj.insert("search".into(), json!(self.dns.search));
            }
            if !self.dns.options.is_empty() {
                obj.insert("options".into(), json!(self.dns.options));
            }
            out.insert("dns".into(), Value::Object(obj));
        }
        Ok(Value::Object(out))
    }

    /// Parses a plugin's stdout.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ResultError> {
        Self::from_value(serde_json::from_slice(bytes).map_err(ResultError::Json)?)
    }

    /// IPs (no prefix) assigned to interface `ifname` (by the `interface`
    /// index), falling back to all IPs if none carry an index.
    ///
    /// An interface inside the sandbox wins over a host-side one of the same
    /// name, since a host may well have its own `eth0`; a name match without
    /// `sandbox` is accepted only when no sandboxed interface has that name,
    /// for plugins that leave `sandbox` out.
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpAddr> {
        if self.ips.iter().all(|ip| ip.interface.is_none()) {
            return self.ips.iter().map(|ip| ip.address.addr).collect();
        }
        let named: Vec<usize> = self
            .interfaces
            .iter()
            .enumerate()
            .filter(|(_, iface)| iface.name == ifname)
            .map(|(index, _)| index)
            .collect();
        let in_sandbox: Vec<usize> = named
            .iter()
            .copied()
            .filter(|&index| {
                self.interfaces[index]
                    .sandbox
                    .as_deref()
                    .is_some_and(|s| !s.is_empty())
            })
            .collect();
        let wanted = if in_sandbox.is_empty() {
            named
        } else {
            in_sandbox
        };
        self.ips
            .iter()
            .filter(|ip| ip.interface.is_some_and(|index| wanted.contains(&index)))
            .map(|ip| ip.address.addr)
            .collect()
    }
}

fn put_opt<T: Serialize>(obj: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(value) = value {
        obj.insert(key.into(), json!(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the reference bridge plugin prints for a 0.4.0 list.
    fn bridge_result_040() -> Value {
        json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1a2b3c4d", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/pod"}
            ],
            "ips": [
                {"version": "4", "interface": 2, "address": "10.22.0.5/16", "gateway": "10.22.0.1"},
                {"version": "6", "interface": 2, "address": "fd00::5/64", "gateway": "fd00::1"}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
        })
    }

    #[test]
    fn parses_040_result_with_version_fields() {
        let result = CniResult::from_value(bridge_result_040()).unwrap();
        assert_eq!(result.cni_version, "0.4.0");
        assert_eq!(result.interfaces.len(), 3);
        assert_eq!(
            result.interfaces[2].sandbox.as_deref(),
            Some("/var/run/netns/pod")
        );
        assert_eq!(result.ips[0].address.to_string(), "10.22.0.5/16");
        assert_eq!(result.ips[0].gateway, Some("10.22.0.1".parse().unwrap()));
        assert_eq!(result.ips[1].address.prefix_len, 64);
        assert_eq!(result.routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(result.routes[0].gw, None);
        assert_eq!(result.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(result.raw, bridge_result_040());
    }

    #[test]
    fn parses_100_result() {
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x", "mtu": 1450}],
            "ips": [{"address": "192.168.1.7/24", "gateway": "192.168.1.1", "interface": 0}],
            "routes": [{"dst": "10.0.0.0/8", "gw": "192.168.1.254", "priority": 5}],
            "dns": {}
        });
        let result = CniResult::from_value(raw).unwrap();
        assert_eq!(result.interfaces[0].mtu, Some(1450));
        assert_eq!(result.ips[0].interface, Some(0));
        assert_eq!(result.routes[0].gw, Some("192.168.1.254".parse().unwrap()));
        assert_eq!(result.routes[0].priority, Some(5));
        assert_eq!(result.dns, Dns::default());
        assert_eq!(
            result.pod_ips("eth0"),
            ["192.168.1.7".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn parses_legacy_020_result() {
        let raw = json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
            "dns": {}
        });
        let result = CniResult::from_value(raw).unwrap();
        assert_eq!(result.ips.len(), 1);
        assert_eq!(result.ips[0].gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(result.routes.len(), 1);
        assert_eq!(
            result.pod_ips("eth0"),
            ["10.1.0.5".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "fd00::1/129",
            "x/24",
            "10.0.0.1/-1",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad} parsed");
        }
        let raw = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]});
        assert!(matches!(
            CniResult::from_value(raw),
            Err(ResultError::Json(_))
        ));
    }

    #[test]
    fn pod_ips_picks_the_sandbox_interface() {
        let mut raw = bridge_result_040();
        // A host-side interface that happens to be called eth0 too.
        raw["interfaces"][0]["name"] = json!("eth0");
        raw["ips"]
            .as_array_mut()
            .unwrap()
            .push(json!({"version": "4", "interface": 0, "address": "10.22.0.1/16"}));
        let result = CniResult::from_value(raw).unwrap();
        let expected: Vec<IpAddr> = vec!["10.22.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(result.pod_ips("eth0"), expected);
        assert!(result.pod_ips("eth1").is_empty());
    }

    #[test]
    fn pod_ips_falls_back_to_all_without_indexes() {
        let raw = json!({
            "cniVersion": "0.3.1",
            "ips": [
                {"version": "4", "address": "10.0.0.2/24"},
                {"version": "6", "address": "fd00::2/64"}
            ]
        });
        let result = CniResult::from_value(raw).unwrap();
        assert_eq!(result.pod_ips("eth0").len(), 2);
    }

    #[test]
    fn from_slice_rejects_non_json() {
        assert!(matches!(
            CniResult::from_slice(b"not json"),
            Err(ResultError::Json(_))
        ));
    }

    #[test]
    fn converts_between_versions() {
        let raw = json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01", "mtu": 1500},
                {"name": "eth0", "sandbox": "/run/netns/x", "mac": "aa:bb:cc:dd:ee:03"}
            ],
            "ips": [
                {"interface": 1, "address": "10.240.0.5/24", "gateway": "10.240.0.1"},
                {"interface": 1, "address": "fd00:240::5/64"}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.240.0.1", "priority": 7, "table": 100}],
            "dns": {"nameservers": ["10.96.0.10"]}
        });
        let result = CniResult::from_value(raw.clone()).unwrap();
        assert_eq!(result.to_value("1.1.0").unwrap(), raw);

        let v100 = result.to_value("1.0.0").unwrap();
        assert_eq!(v100["cniVersion"], "1.0.0");
        assert!(v100["interfaces"][0].get("mtu").is_none());
        assert_eq!(
            v100["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "10.240.0.1"})
        );
        assert!(v100["ips"][0].get("version").is_none());

        let v040 = result.to_value("0.4.0").unwrap();
        assert_eq!(v040["ips"][0]["version"], "4");
        assert_eq!(v040["ips"][1]["version"], "6");
        assert_eq!(v040["ips"][1].get("gateway"), None);
        // Round trip through the older shape keeps what it can express.
        let back = CniResult::from_value(v040)
            .unwrap()
            .to_value("1.0.0")
            .unwrap();
        assert_eq!(back, v100);

        assert!(result.to_value("0.2.0").is_err());
        assert!(result.to_value("2.0.0").is_err());
    }

    #[test]
    fn empty_parts_are_left_out() {
        let result = CniResult::new(Vec::new(), Vec::new(), Vec::new(), Dns::default());
        assert_eq!(
            result.to_value("1.0.0").unwrap(),
            json!({"cniVersion": "1.0.0"})
        );
    }
}
