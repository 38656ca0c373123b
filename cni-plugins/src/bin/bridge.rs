//! The `bridge` CNI plugin binary.
fn main() {
    cni_plugins::skel::plugin_main(
        &cni_plugins::plugins::bridge::Bridge,
        concat!("CNI bridge plugin v", env!("CARGO_PKG_VERSION")),
    )
}
