//! CNI spec types, the runtime-side invoker (what libcni does for
//! containerd) and our own plugins (drop-ins for the reference ones).
//!
//! [`Invoker`] is what a container runtime calls per pod sandbox: it loads
//! the network from a conf dir, runs the plugin chain for ADD and DEL and
//! caches results so DEL works across restarts. Plugins run behind the
//! [`PluginExec`] seam so the chaining and caching logic is testable
//! without root.
//!
//! The plugin side: [`skel`] is the protocol (environment, stdin, version
//! checks, error JSON), [`plugins`] the plugins, [`netlink`] and [`netns`]
//! the kernel access they share; `src/bin/` holds one thin binary each.

pub mod cache;
pub mod conf;
pub mod exec;
pub mod invoker;
pub mod iptables;
pub mod netlink;
pub mod netns;
pub mod plugins;
pub mod result;
pub mod skel;
pub mod version;
pub mod work;

pub use cache::CacheError;
pub use conf::{ConfError, NetworkConfigList};
pub use exec::{ExecError, PluginExec, PluginOutput, PluginRequest, ProcessExec};
pub use invoker::{
    CniError, DEFAULT_PLUGIN_TIMEOUT, GcAttachment, GcOutcome, Invoker, RuntimeConf,
    VALID_ATTACHMENTS_KEY,
};
pub use result::{CniResult, Dns, Interface, IpConfig, IpPrefix, ResultError, Route};
