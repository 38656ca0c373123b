//! `host-local` IPAM: hands out addresses from configured ranges and keeps
//! the reservations in files on the host ([`store`]), in the reference
//! plugin's format so the two can share a data dir.
//!
//! ADD takes one address per range set (dual stack: one set per family),
//! all or nothing; DEL releases by container id and interface name; CHECK
//! verifies the attachment holds an address; GC (spec 1.1) releases every
//! reservation whose attachment is not in `cni.dev/valid-attachments`.

pub mod allocator;
pub mod config;
pub mod store;

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use self::allocator::{AllocError, allocate};
use self::config::{ConfigError, IpamConfig, range_for};
use self::store::{Store, StoreError};
use crate::result::{CniResult, Dns, IpConfig};
use crate::skel::{CmdArgs, ErrorCode, Plugin, PluginError};

/// The `host-local` plugin.
#[derive(Debug, Default)]
pub struct HostLocal;

impl From<ConfigError> for PluginError {
    fn from(err: ConfigError) -> Self {
        let code = match err {
            ConfigError::Decode(_) => ErrorCode::Decode,
            _ => ErrorCode::InvalidNetworkConfig,
        };
        PluginError::from_error(code, &err)
    }
}

impl From<StoreError> for PluginError {
    fn from(err: StoreError) -> Self {
        PluginError::from_error(ErrorCode::IoFailure, &err)
    }
}

impl From<AllocError> for PluginError {
    fn from(err: AllocError) -> Self {
        let code = match err {
            // Addresses come back as pods go away: worth retrying later.
            AllocError::Exhausted(_) => ErrorCode::TryAgainLater,
            AllocError::Store(_) => ErrorCode::IoFailure,
            AllocError::NotInRange { .. } | AllocError::IsGateway(_) => {
                ErrorCode::InvalidNetworkConfig
            }
            AllocError::Taken { .. } | AllocError::Duplicate { .. } => ErrorCode::Internal,
        };
        PluginError::from_error(code, &err)
    }
}

fn load(args: &CmdArgs) -> Result<IpamConfig, PluginError> {
    args.check_known_args(&[
        "IP",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
    ])?;
    Ok(IpamConfig::parse(&args.config, args.arg("IP"))?)
}

/// Reads a resolv.conf into the result's DNS, as the reference does.
pub fn parse_resolv_conf(path: &Path) -> std::io::Result<Dns> {
    let text = std::fs::read_to_string(path)?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| (*s).to_owned());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_owned()),
            "domain" => dns.domain = Some(fields[1].to_owned()),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    Ok(dns)
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Deserialize)]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

impl Plugin for HostLocal {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, PluginError> {
        let conf = load(args)?;
        let dns = match &conf.resolv_conf {
            Some(path) => parse_resolv_conf(path).map_err(|err| {
                PluginError::new(
                    ErrorCode::IoFailure,
                    format!("failed to read resolvConf {}: {err}", path.display()),
                )
            })?,
            None => Dns::default(),
        };
        let store = Store::open(&conf.data_dir, &conf.name)?;
        let mut requested: Vec<IpAddr> = conf.requested.clone();
        let mut ips = Vec::new();
        let outcome = (|| {
            for (index, set) in conf.ranges.iter().enumerate() {
                let wanted = requested
                    .iter()
                    .position(|ip| range_for(set, *ip).is_some())
                    .map(|pos| requested.remove(pos));
                let alloc = allocate(&store, set, index, &args.container_id, &args.ifname, wanted)
                    .map_err(|err| {
                        let mut err = PluginError::from(err);
                        err.msg = format!("failed to allocate for range {index}: {}", err.msg);
                        err
                    })?;
                ips.push(IpConfig {
                    address: alloc.address,
                    gateway: Some(alloc.gateway),
                    interface: None,
                });
            }
            if !requested.is_empty() {
                let list: Vec<String> = requested.iter().map(IpAddr::to_string).collect();
                return Err(PluginError::new(
                    ErrorCode::InvalidNetworkConfig,
                    format!("failed to allocate all requested IPs: {}", list.join(" ")),
                ));
            }
            Ok(())
        })();
        if let Err(err) = outcome {
            // All or nothing: give back what this ADD took.
            for ip in &ips {
                let _ = store.release(ip.address.addr);
            }
            return Err(err);
        }
        Ok(CniResult::new(Vec::new(), ips, conf.routes, dns))
    }

    fn del(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let conf = load(args)?;
        let store = Store::open(&conf.data_dir, &conf.name)?;
        let released = store.release_by_id(&args.container_id, &args.ifname)?;
        tracing::debug!(container.id = %args.container_id, ?released, "released");
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let conf = load(args)?;
        let store = Store::open(&conf.data_dir, &conf.name)?;
        if store
            .get_by_id(&args.container_id, &args.ifname)?
            .is_empty()
        {
            return Err(PluginError::new(
                ErrorCode::Internal,
                format!(
                    "host-local: Failed to find address added by container {}",
                    args.container_id
                ),
            ));
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let conf = load(args)?;
        let valid: Vec<Attachment> = match args.config.get("cni.dev/valid-attachments") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(list) => Vec::<Attachment>::deserialize(list).map_err(|err| {
                PluginError::new(
                    ErrorCode::Decode,
                    format!("failed to decode cni.dev/valid-attachments: {err}"),
                )
            })?,
        };
        let store = Store::open(&conf.data_dir, &conf.name)?;
        for reservation in store.reservations()? {
            let still_used = valid.iter().any(|a| {
                a.container_id == reservation.container_id
                    && reservation.ifname.as_deref().is_none_or(|i| i == a.ifname)
            });
            if !still_used {
                tracing::info!(
                    ip = %reservation.ip,
                    container.id = %reservation.container_id,
                    "gc: releasing address of a gone attachment"
                );
                store.release(reservation.ip)?;
            }
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), PluginError> {
        // Ready when the config is usable and the store can be opened.
        let conf = load(args)?;
        Store::open(&conf.data_dir, &conf.name)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skel::Command;
    use serde_json::{Value, json};

    fn cmd(command: Command, id: &str, config: Value) -> CmdArgs {
        CmdArgs {
            command,
            container_id: id.into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: Vec::new(),
            path: Vec::new(),
            stdin: config.to_string().into_bytes(),
            cni_version: "1.1.0".into(),
            config,
        }
    }

    fn config(dir: &Path) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "gcnet",
            "ipam": {
                "type": "host-local",
                "dataDir": dir,
                "ranges": [[{"subnet": "10.240.7.0/29"}], [{"subnet": "fd00:240:7::/120"}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        })
    }

    #[test]
    fn dual_stack_add_del_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let conf = config(dir.path());
        let a = HostLocal
            .add(&cmd(Command::Add, "a", conf.clone()))
            .unwrap();
        let addrs: Vec<String> = a.ips.iter().map(|ip| ip.address.to_string()).collect();
        assert_eq!(addrs, ["10.240.7.2/29", "fd00:240:7::2/120"]);
        assert_eq!(a.ips[0].gateway, Some("10.240.7.1".parse().unwrap()));
        assert_eq!(a.routes.len(), 1);
        HostLocal
            .add(&cmd(Command::Add, "b", conf.clone()))
            .unwrap();
        HostLocal
            .check(&cmd(Command::Check, "a", conf.clone()))
            .unwrap();
        assert!(
            HostLocal
                .check(&cmd(Command::Check, "zzz", conf.clone()))
                .is_err()
        );

        let mut gc_conf = conf.clone();
        gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "b", "ifname": "eth0"}]);
        HostLocal.gc(&cmd(Command::Gc, "", gc_conf)).unwrap();
        let store = Store::open(dir.path(), "gcnet").unwrap();
        let left: Vec<String> = store
            .reservations()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r.ip, r.container_id))
            .collect();
        assert_eq!(left, ["10.240.7.3 b", "fd00:240:7::3 b"]);
        drop(store);
        HostLocal
            .del(&cmd(Command::Del, "b", conf.clone()))
            .unwrap();
        HostLocal.del(&cmd(Command::Del, "b", conf)).unwrap();
        let store = Store::open(dir.path(), "gcnet").unwrap();
        assert!(store.reservations().unwrap().is_empty());
    }

    #[test]
    fn exhaustion_is_retryable_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut conf = config(dir.path());
        conf["ipam"]["ranges"][0] = json!([{"subnet": "10.240.7.0/30"}]);
        HostLocal
            .add(&cmd(Command::Add, "a", conf.clone()))
            .unwrap();
        // Only .2 existed in the v4 set; the v6 one has room.
        let err = HostLocal.add(&cmd(Command::Add, "b", conf)).unwrap_err();
        assert_eq!(err.code, ErrorCode::TryAgainLater);
        assert!(err.msg.contains("no IP addresses available"), "{err}");
        let store = Store::open(dir.path(), "gcnet").unwrap();
        assert_eq!(store.reservations().unwrap().len(), 2, "b kept something");
    }

    #[test]
    fn bad_config_codes() {
        let dir = tempfile::tempdir().unwrap();
        let mut conf = config(dir.path());
        conf["ipam"]["ranges"] = json!([[{"subnet": "10.240.7.0/40"}]]);
        let err = HostLocal.add(&cmd(Command::Add, "a", conf)).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidNetworkConfig);
        let mut conf = config(dir.path());
        conf["ipam"]["routes"] = json!("x");
        let err = HostLocal.add(&cmd(Command::Add, "a", conf)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Decode);
    }

    #[test]
    fn resolv_conf() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "# c\nnameserver 10.96.0.10\nnameserver fd00::a\n; x\ndomain cluster.local\nsearch a.svc b.svc\noptions ndots:5 edns0\nbogus\n",
        )
        .unwrap();
        let dns = parse_resolv_conf(file.path()).unwrap();
        assert_eq!(dns.nameservers, ["10.96.0.10", "fd00::a"]);
        assert_eq!(dns.domain.as_deref(), Some("cluster.local"));
        assert_eq!(dns.search, ["a.svc", "b.svc"]);
        assert_eq!(dns.options, ["ndots:5", "edns0"]);
    }
}
