//! `bandwidth`: traffic shaping of a container's veth, chained after the
//! plugin that made it, with the reference plugin's host state so either
//! can undo or check what the other did:
//!
//! ```text
//! ingress (traffic into the container): tbf as root qdisc (1:) of the host-side veth
//! egress (traffic out of the container): ingress qdisc (ffff:) on the host-side veth,
//!     u32 match-all filter -> mirred egress redirect to IFB "bwp<sha512(network+id)>",
//!     tbf as root qdisc (1:) of the IFB
//! ```
//!
//! Rates and bursts are in bits (`ingressRate`, `ingressBurst`,
//! `egressRate`, `egressBurst`), from the plugin config or else from
//! `runtimeConfig.bandwidth`. The bucket is computed as the reference does
//! (25 ms latency, ticks from `/proc/net/psched`), so `tc` shows the same
//! qdiscs for both. DEL removes the IFB; the veth, and its qdiscs with it,
//! belong to the interface plugin.

use serde::Deserialize;
use sha2::{Digest, Sha512};

use crate::netlink::{Link, Netlink, Tbf};
use crate::netns::NetNs;
use crate::result::{CniResult, Interface};
use crate::skel::{CmdArgs, ErrorCode, Plugin, PluginError};

/// The `bandwidth` plugin.
#[derive(Debug, Default)]
pub struct Bandwidth;

/// Prefix of the IFB device names.
pub const IFB_PREFIX: &str = "bwp";
/// The queueing latency the bucket's limit allows for, as the reference.
const LATENCY_MS: f64 = 25.0;
/// `TIME_UNITS_PER_SEC` of the tc code: microseconds.
const TIME_UNITS_PER_SEC: f64 = 1_000_000.0;

/// One set of limits, in bits per second and bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct BandwidthEntry {
    /// Rate of traffic into the container; 0 is no limit.
    #[serde(default, rename = "ingressRate")]
    pub ingress_rate: u64,
    /// Burst of traffic into the container.
    #[serde(default, rename = "ingressBurst")]
    pub ingress_burst: u64,
    /// Rate of traffic out of the container; 0 is no limit.
    #[serde(default, rename = "egressRate")]
    pub egress_rate: u64,
    /// Burst of traffic out of the container.
    #[serde(default, rename = "egressBurst")]
    pub egress_burst: u64,
}

impl BandwidthEntry {
    fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    fn ingress(&self) -> Option<(u64, u64)> {
        (self.ingress_rate > 0 && self.ingress_burst > 0)
            .then_some((self.ingress_rate, self.ingress_burst))
    }

    fn egress(&self) -> Option<(u64, u64)> {
        (self.egress_rate > 0 && self.egress_burst > 0)
            .then_some((self.egress_rate, self.egress_burst))
    }
}

const ENTRY_KEYS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];

/// The limits that apply: the plugin config's own when it has any of the
/// four keys, else `runtimeConfig.bandwidth` (the reference's precedence).
pub fn parse_bandwidth(config: &serde_json::Value) -> Result<Option<BandwidthEntry>, PluginError> {
    let decode = |err: serde_json::Error| {
        PluginError::new(
            ErrorCode::Decode,
            format!("failed to parse network configuration: {err}"),
        )
    };
    let own = ENTRY_KEYS.iter().any(|key| config.get(key).is_some());
    let entry = if own {
        Some(BandwidthEntry::deserialize(config).map_err(decode)?)
    } else {
        match config
            .get("runtimeConfig")
            .and_then(|rc| rc.get("bandwidth"))
        {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(BandwidthEntry::deserialize(value).map_err(decode)?),
        }
    };
    if let Some(entry) = &entry {
        validate_rate_and_burst(entry.ingress_rate, entry.ingress_burst)?;
        validate_rate_and_burst(entry.egress_rate, entry.egress_burst)?;
    }
    Ok(entry)
}

fn validate_rate_and_burst(rate: u64, burst: u64) -> Result<(), PluginError> {
    let msg = if burst == 0 && rate != 0 {
        "if rate is set, burst must also be set"
    } else if rate == 0 && burst != 0 {
        "if burst is set, rate must also be set"
    } else if burst / 8 >= u64::from(u32::MAX) {
        "burst cannot be more than 4GB"
    } else {
        return Ok(());
    };
    Err(PluginError::new(ErrorCode::InvalidNetworkConfig, msg))
}

/// The IFB device of one attachment: `bwp` and the start of the SHA-512 of
/// network name and container id, 15 characters in all.
pub fn ifb_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let mut name = format!("{IFB_PREFIX}{}", hex::encode(digest));
    name.truncate(15);
    name
}

/// Microseconds per scheduler tick, from `/proc/net/psched` as tc reads
/// it (`t2us us2t clock_res hz`, hex).
fn tick_in_usec() -> f64 {
    let text = std::fs::read_to_string("/proc/net/psched").unwrap_or_default();
    let vals: Vec<f64> = text
        .split_whitespace()
        .filter_map(|word| u32::from_str_radix(word, 16).ok())
        .map(f64::from)
        .collect();
    match vals[..] {
        [t2us, us2t, clock_res, ..] if us2t > 0.0 => {
            // Kernels with a 1 GHz clock report t2us in the old unit.
            let t2us = if clock_res == 1e9 { us2t } else { t2us };
            t2us / us2t * (clock_res / TIME_UNITS_PER_SEC)
        }
        // The value every kernel since 2.6.x reports (64 ns ticks).
        _ => 15.625,
    }
}

/// Go's `uint32(f)` on amd64: truncate to 64 bits, keep the low 32. The
/// reference computes the bucket that way, and with the 4 GBit bursts
/// runtimes send for pod annotations the result wraps; matching it keeps
/// CHECK interchangeable.
fn go_u32(value: f64) -> u32 {
    value as i64 as u32
}

/// The token bucket for a rate and burst in bits, as the reference computes
/// it: rate and burst in bytes, the buffer as the burst's transmission time
/// in ticks, the limit as 25 ms of traffic plus the burst.
pub fn tbf_for(rate_bits: u64, burst_bits: u64, tick_in_usec: f64) -> Tbf {
    let rate = rate_bits / 8;
    let burst = burst_bits / 8;
    let burst_u32 = burst as u32;
    let time = go_u32(f64::from(burst_u32) * TIME_UNITS_PER_SEC / rate as f64);
    let buffer = go_u32(f64::from(time) * tick_in_usec);
    let latency = TIME_UNITS_PER_SEC * (LATENCY_MS / 1000.0);
    let limit = go_u32(rate as f64 * latency / TIME_UNITS_PER_SEC).wrapping_add(burst_u32);
    Tbf {
        rate,
        limit,
        buffer,
    }
}

fn internal(msg: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::Internal, msg)
}

/// The host end of the container's veth: the peer of `ifname` in the
/// container, which must be a host-side interface of the previous result.
fn host_interface(result: &CniResult, args: &CmdArgs) -> Result<(Netlink, Link), PluginError> {
    if result.interfaces.is_empty() {
        return Err(internal("no interfaces provided"));
    }
    let netns = NetNs::open(&args.netns)?;
    let ifname = args.ifname.clone();
    let peer = netns.run(move || -> Result<Option<u32>, PluginError> {
        let mut nl = Netlink::open()?;
        Ok(nl.link_by_name(&ifname)?.and_then(|link| link.peer_index))
    })??;
    let Some(peer) = peer else {
        return Err(internal(format!(
            "container interface {} has no veth peer",
            args.ifname
        )));
    };
    let mut nl = Netlink::open()?;
    let link = nl
        .link_by_index(peer)?
        .ok_or_else(|| internal(format!("veth peer with index {peer} is not in host ns")))?;
    let listed = result
        .interfaces
        .iter()
        .any(|i| i.sandbox.as_deref().unwrap_or("").is_empty() && i.name == link.name);
    if !listed {
        return Err(internal(
            "no veth peer of container interface found in host ns",
        ));
    }
    Ok((nl, link))
}

fn prev_result(args: &CmdArgs, msg: &str) -> Result<CniResult, PluginError> {
    args.prev_result()?
        .ok_or_else(|| PluginError::new(ErrorCode::InvalidNetworkConfig, msg))
}

/// Shapes egress through a new IFB; returns the IFB's interface entry.
fn shape_egress(
    nl: &mut Netlink,
    host: &Link,
    ifb: &str,
    tbf: &Tbf,
) -> Result<Interface, PluginError> {
    nl.add_ifb(ifb, host.mtu)?;
    let ifb_link = nl
        .link_by_name(ifb)?
        .ok_or_else(|| internal(format!("ifb device {ifb} vanished after creation")))?;
    nl.add_ingress_qdisc(host.index)?;
    nl.add_ingress_redirect(host.index, ifb_link.index)?;
    nl.add_tbf(ifb_link.index, tbf)?;
    Ok(Interface {
        name: ifb.to_owned(),
        mac: ifb_link.mac,
        ..Interface::default()
    })
}

/// Deletes the IFB `name` if it exists.
fn teardown_ifb(nl: &mut Netlink, name: &str) -> Result<(), PluginError> {
    match nl.link_by_name(name)? {
        Some(link) => match nl.del_link(link.index) {
            // Gone in between: what DEL wanted.
            Err(err) if err.errno() == Some(libc::ENODEV) => Ok(()),
            other => Ok(other?),
        },
        None => Ok(()),
    }
}

/// Checks that link `index` has a root tbf with exactly `want`.
fn check_tbf(nl: &mut Netlink, index: u32, device: &str, want: &Tbf) -> Result<(), PluginError> {
    let qdiscs = nl.qdiscs(index)?;
    let Some(root) = qdiscs.iter().find(|q| q.is_root()) else {
        return Err(internal(format!("Failed to find qdisc on {device}")));
    };
    let Some(have) = root.tbf.filter(|_| root.kind == "tbf") else {
        return Err(internal(format!(
            "root qdisc of {device} is {}, not tbf",
            root.kind
        )));
    };
    let mismatch = if have.rate != want.rate {
        "Rate"
    } else if have.limit != want.limit {
        "Limit"
    } else if have.buffer != want.buffer {
        "Buffer"
    } else {
        return Ok(());
    };
    Err(internal(format!("{mismatch} doesn't match on {device}")))
}

impl Plugin for Bandwidth {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, PluginError> {
        let entry = parse_bandwidth(&args.config)?;
        let prev = args.prev_result()?;
        let Some(entry) = entry.filter(|e| !e.is_zero()) else {
            return prev.ok_or_else(|| internal("must be called as chained plugin"));
        };
        let mut result = prev.ok_or_else(|| {
            PluginError::new(
                ErrorCode::InvalidNetworkConfig,
                "must be called as chained plugin",
            )
        })?;
        let (mut nl, host) = host_interface(&result, args)?;
        let ticks = tick_in_usec();
        if let Some((rate, burst)) = entry.ingress() {
            nl.add_tbf(host.index, &tbf_for(rate, burst, ticks))
                .map_err(|err| {
                    PluginError::from_error(ErrorCode::Internal, &err)
                        .with_details(format!("create qdisc on {}", host.name))
                })?;
        }
        if let Some((rate, burst)) = entry.egress() {
            let ifb = ifb_name(args.network_name(), &args.container_id);
            match shape_egress(&mut nl, &host, &ifb, &tbf_for(rate, burst, ticks)) {
                Ok(iface) => result.interfaces.push(iface),
                Err(err) => {
                    // The runtime's DEL would remove it too; a failed ADD
                    // should not have to wait for that.
                    let _ = teardown_ifb(&mut nl, &ifb);
                    return Err(err);
                }
            }
        }
        Ok(result)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), PluginError> {
        parse_bandwidth(&args.config)?;
        let mut nl = Netlink::open()?;
        teardown_ifb(&mut nl, &ifb_name(args.network_name(), &args.container_id))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let entry = parse_bandwidth(&args.config)?;
        let prev = prev_result(args, "must be called as a chained plugin")?;
        let (mut nl, host) = host_interface(&prev, args)?;
        let Some(entry) = entry.filter(|e| !e.is_zero()) else {
            return Ok(());
        };
        let ticks = tick_in_usec();
        if let Some((rate, burst)) = entry.ingress() {
            check_tbf(
                &mut nl,
                host.index,
                &host.name,
                &tbf_for(rate, burst, ticks),
            )?;
        }
        if let Some((rate, burst)) = entry.egress() {
            let ifb = ifb_name(args.network_name(), &args.container_id);
            let link = nl
                .link_by_name(&ifb)?
                .ok_or_else(|| internal(format!("get ifb device: {ifb} not found")))?;
            check_tbf(&mut nl, link.index, &ifb, &tbf_for(rate, burst, ticks))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ifb_name_matches_the_reference() {
        // `bwp` + sha512("bwnet" + "ctr1"), as the reference plugin named it.
        assert_eq!(ifb_name("bwnet", "ctr1"), "bwpea62040b30ca");
        assert_eq!(ifb_name("n", "c").len(), 15);
    }

    #[test]
    fn bucket_as_the_reference_computes_it() {
        // 8 Mbit/s with a 800 kbit burst: tc shows rate 1000000 (bytes),
        // burst 100000, latency 25 ms.
        let tbf = tbf_for(8_000_000, 800_000, 15.625);
        assert_eq!(tbf.rate, 1_000_000);
        assert_eq!(tbf.limit, 25_000 + 100_000);
        assert_eq!(tbf.buffer, 100_000 * 15_625 / 1000);
        // The 4 GBit burst of pod annotations wraps like Go's conversion.
        let tbf = tbf_for(10_000_000, u64::from(u32::MAX), 15.625);
        assert_eq!(tbf.rate, 1_250_000);
        let time = (536_870_911f64 * 1e6 / 1_250_000f64) as i64;
        assert_eq!(tbf.buffer, ((time as f64) * 15.625) as i64 as u32);
    }

    #[test]
    fn config_wins_over_runtime_config() {
        let conf = json!({
            "name": "n", "type": "bandwidth", "egressRate": 100, "egressBurst": 10,
            "runtimeConfig": {"bandwidth": {"ingressRate": 5, "ingressBurst": 5}}
        });
        let entry = parse_bandwidth(&conf).unwrap().unwrap();
        assert_eq!(entry.egress(), Some((100, 10)));
        assert_eq!(entry.ingress(), None);
        let conf = json!({
            "name": "n", "type": "bandwidth",
            "runtimeConfig": {"bandwidth": {"ingressRate": 5, "ingressBurst": 5}}
        });
        let entry = parse_bandwidth(&conf).unwrap().unwrap();
        assert_eq!(entry.ingress(), Some((5, 5)));
        assert_eq!(parse_bandwidth(&json!({"name": "n"})).unwrap(), None);
    }

    #[test]
    fn rate_and_burst_come_together() {
        for (conf, msg) in [
            (
                json!({"ingressRate": 10}),
                "if rate is set, burst must also be set",
            ),
            (
                json!({"egressBurst": 10}),
                "if burst is set, rate must also be set",
            ),
            (
                json!({"egressRate": 1, "egressBurst": 8u64 * u64::from(u32::MAX)}),
                "burst cannot be more than 4GB",
            ),
        ] {
            let err = parse_bandwidth(&conf).unwrap_err();
            assert_eq!(err.msg, msg);
            assert_eq!(err.code, ErrorCode::InvalidNetworkConfig);
        }
        let err = parse_bandwidth(&json!({"ingressRate": "fast"})).unwrap_err();
        assert_eq!(err.code, ErrorCode::Decode);
    }
}
