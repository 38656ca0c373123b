//! CNI spec types and the runtime-side invoker (what libcni does for containerd).
//!
//! [`Invoker`] is what a container runtime calls per pod sandbox: it loads
//! the network from a conf dir, runs the plugin chain for ADD and DEL and
//! caches results so DEL works across restarts. Plugins run behind the
//! [`PluginExec`] seam so the chaining and caching logic is testable
//! without root.

pub mod cache;
pub mod conf;
pub mod exec;
pub mod invoker;
pub mod result;

pub use cache::CacheError;
pub use conf::{ConfError, NetworkConfigList};
pub use exec::{ExecError, PluginExec, PluginOutput, PluginRequest, ProcessExec};
pub use invoker::{CniError, DEFAULT_PLUGIN_TIMEOUT, Invoker, RuntimeConf};
pub use result::{CniResult, Dns, Interface, IpConfig, IpPrefix, ResultError, Route};
