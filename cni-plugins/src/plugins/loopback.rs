//! `loopback`: sets `lo` up inside the container's namespace (the kernel
//! then gives it 127.0.0.1/8 and ::1/128). CNI_IFNAME is ignored, as in the
//! reference plugin. DEL sets it down and succeeds when the namespace is
//! already gone; CHECK verifies it is up.

use crate::netlink::Netlink;
use crate::netns::{NetNs, NetNsError};
use crate::result::{CniResult, Dns, Interface, IpConfig, IpPrefix};
use crate::skel::{CmdArgs, ErrorCode, Plugin, PluginError};

/// The `loopback` plugin.
#[derive(Debug, Default)]
pub struct Loopback;

const LO: &str = "lo";

/// Runs `f` with a netlink socket inside the container's namespace.
fn in_netns<T: Send>(
    netns: &NetNs,
    f: impl FnOnce(&mut Netlink) -> Result<T, PluginError> + Send,
) -> Result<T, PluginError> {
    netns.run(|| {
        let mut nl = Netlink::open()?;
        f(&mut nl)
    })?
}

fn missing_lo() -> PluginError {
    PluginError::new(ErrorCode::Internal, "Link not found").with_details(LO)
}

impl Plugin for Loopback {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, PluginError> {
        let prev = args.prev_result()?;
        let netns = NetNs::open(&args.netns)?;
        let addresses = in_netns(&netns, |nl| {
            let lo = nl.link_by_name(LO)?.ok_or_else(missing_lo)?;
            nl.set_up(lo.index)?;
            let addresses = nl.addresses(Some(lo.index))?;
            if let Some(bad) = addresses.iter().find(|a| !a.prefix.addr.is_loopback()) {
                return Err(PluginError::new(
                    ErrorCode::Internal,
                    format!(
                        "loopback interface found with non-loopback address {:?}",
                        bad.prefix.addr.to_string()
                    ),
                ));
            }
            Ok(addresses)
        })?;
        if let Some(prev) = prev {
            // Chained after another plugin: pass its result through.
            return Ok(prev);
        }
        let first_of = |v4: bool| -> Option<IpPrefix> {
            addresses
                .iter()
                .find(|a| a.prefix.addr.is_ipv4() == v4)
                .map(|a| a.prefix)
        };
        let ips = [first_of(true), first_of(false)]
            .into_iter()
            .flatten()
            .map(|address| IpConfig {
                address,
                gateway: None,
                interface: Some(0),
            })
            .collect();
        Ok(CniResult::new(
            vec![Interface {
                name: LO.into(),
                mac: Some("00:00:00:00:00:00".into()),
                sandbox: Some(args.netns.clone()),
                ..Interface::default()
            }],
            ips,
            Vec::new(),
            Dns::default(),
        ))
    }

    fn del(&self, args: &CmdArgs) -> Result<(), PluginError> {
        if args.netns.is_empty() {
            return Ok(());
        }
        let netns = match NetNs::open(&args.netns) {
            Ok(netns) => netns,
            // Already gone: nothing left to undo.
            Err(NetNsError::NotFound { .. }) => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        in_netns(&netns, |nl| {
            if let Some(lo) = nl.link_by_name(LO)? {
                nl.set_down(lo.index)?;
            }
            Ok::<_, PluginError>(())
        })
    }

    fn check(&self, args: &CmdArgs) -> Result<(), PluginError> {
        let netns = NetNs::open(&args.netns)?;
        in_netns(&netns, |nl| {
            let lo = nl.link_by_name(LO)?.ok_or_else(missing_lo)?;
            if !lo.up {
                return Err(PluginError::new(
                    ErrorCode::Internal,
                    "loopback interface is down",
                ));
            }
            Ok(())
        })
    }
}
