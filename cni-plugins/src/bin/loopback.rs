//! The `loopback` CNI plugin binary.
fn main() {
    cni_plugins::skel::plugin_main(
        &cni_plugins::plugins::loopback::Loopback,
        concat!("CNI loopback plugin v", env!("CARGO_PKG_VERSION")),
    )
}
