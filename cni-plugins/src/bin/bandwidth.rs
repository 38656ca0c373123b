//! The `bandwidth` CNI plugin binary.
fn main() {
    cni_plugins::skel::plugin_main(
        &cni_plugins::plugins::bandwidth::Bandwidth,
        concat!("CNI bandwidth plugin v", env!("CARGO_PKG_VERSION")),
    )
}
