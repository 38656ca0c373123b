//! `cri-shim-helper`: runs one helper role for cri-shim and exits.
//!
//! Not meant to be run by hand: the server starts it as
//! `cri-shim-helper __cri-shim-monitor <spec JSON>`,
//! `cri-shim-helper __cri-shim-pin <spec JSON>` or
//! `cri-shim-helper __cri-shim-infra <spec JSON>`.

fn main() {
    cri_shim_helper::role::run_if_requested();
    let mut args = std::env::args();
    let name = args
        .next()
        .unwrap_or_else(|| cri_shim_helper::HELPER_BIN_NAME.to_owned());
    match args.next().as_deref() {
        Some("--version") => println!("{} {}", name, env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!(
                "usage: {name} {{{}|{}|{}}} <spec JSON>\n\
                 (started by cri-shim for its container monitors and pod namespaces)",
                cri_shim_helper::role::MONITOR_ARG,
                cri_shim_helper::role::PIN_ARG,
                cri_shim_helper::role::INFRA_ARG,
            );
            std::process::exit(2)
        }
    }
}
