//! Writes the OCI-layout tar archives the end-to-end tests import
//! (`busybox.tar`, `busybox-httpd.tar`, `pause.tar`) into `--out`.

use std::path::PathBuf;

use clap::Parser;

/// Builds the test images from the host's static busybox.
#[derive(Debug, Parser)]
#[command(name = "build-test-images")]
struct Args {
    /// Directory to write the archives into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Static busybox binary to put into the images (Debian's `busybox-static`).
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Also write each image as an OCI layout directory next to its archive.
    #[arg(long)]
    layout_dirs: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for image in e2e::image::write_test_images(&args.busybox, &args.out, args.layout_dirs)? {
        println!(
            "{} {} {}",
            image.path.display(),
            image.reference,
            image.manifest_digest
        );
    }
    Ok(())
}
