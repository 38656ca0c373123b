//! The `portmap` CNI plugin binary.
fn main() {
    cni_plugins::skel::plugin_main(
        &cni_plugins::plugins::portmap::PortMap,
        concat!("CNI portmap plugin v", env!("CARGO_PKG_VERSION")),
    )
}
