//! The plugins themselves, one module each; the binaries in `src/bin/`
//! only hand one of these to [`crate::skel::plugin_main`].
//!
//! Each is a drop-in for the reference plugin of the same name: same
//! config fields, same host state (file formats, iptables chain names),
//! so either can undo what the other did.

pub mod bandwidth;
pub mod bridge;
pub mod host_local;
pub mod ipam;
pub mod loopback;
pub mod portmap;

use crate::netlink::NetlinkError;
use crate::netns::NetNsError;
use crate::skel::{ErrorCode, PluginError};

impl From<NetlinkError> for PluginError {
    fn from(err: NetlinkError) -> Self {
        PluginError::from_error(ErrorCode::Internal, &err)
    }
}

impl From<NetNsError> for PluginError {
    fn from(err: NetNsError) -> Self {
        let code = match err {
            NetNsError::NotFound { .. } => ErrorCode::UnknownContainer,
            NetNsError::NotANamespace { .. } => ErrorCode::InvalidNetns,
            _ => ErrorCode::Internal,
        };
        PluginError::from_error(code, &err)
    }
}
