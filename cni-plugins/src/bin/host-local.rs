//! The `host-local` IPAM plugin binary.
fn main() {
    cni_plugins::skel::plugin_main(
        &cni_plugins::plugins::host_local::HostLocal,
        concat!("CNI host-local plugin v", env!("CARGO_PKG_VERSION")),
    )
}
