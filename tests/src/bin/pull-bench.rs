//! PullImage time, cri-shim against containerd, from the same local
//! registry (Debian's `docker-registry` on 127.0.0.1, plain HTTP).
//!
//! The image is busybox-sized: one layer holding the test busybox layer's
//! files plus a marker file (so no runtime has any of its blobs from the
//! imported test images), optionally a second layer of `--extra-mib` MiB of
//! incompressible bytes. Each run removes the image (RemoveImage, which in
//! both runtimes also drops its content) and times one PullImage; the two
//! runtimes alternate, after one warm-up pull each.
//!
//! `pull-bench [--runs 10] [--extra-mib 0]`; needs root.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use e2e::harness::{CniNetwork, Containerd, CriShim, TestImages};
use e2e::image::{ImageBuilder, ImageConfig, Layer, LayerBuilder, sha256_digest};
use e2e::registry::{Registry, RegistryOptions, image_client, read_layout_tar};
use flate2::Compression;
use flate2::write::GzEncoder;
use k8s_cri::v1 as cri;

#[derive(Parser)]
struct Args {
    /// Measured pulls per runtime (after 1 warm-up).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Size of an extra layer of incompressible bytes, in MiB (0: none).
    #[arg(long, default_value_t = 0)]
    extra_mib: usize,
}

/// The layer with one more file: same files otherwise, new blob and diff ID.
fn with_marker(layer: &Layer, marker: &str) -> anyhow::Result<Layer> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(layer.tar_gz.as_slice()).read_to_end(&mut tar)?;
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut out = tar::Builder::new(Vec::new());
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut header = entry.header().clone();
        let path = entry.path()?.into_owned();
        match entry.link_name()? {
            Some(target) if header.entry_type().is_symlink() => {
                let target = target.into_owned();
                out.append_link(&mut header, &path, &target)?;
            }
            _ => out.append_data(&mut header, &path, &mut entry)?,
        }
    }
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(marker.len() as u64);
    header.set_entry_type(tar::EntryType::Regular);
    out.append_data(&mut header, "etc/pull-bench", marker.as_bytes())?;
    let tar = out.into_inner()?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    std::io::Write::write_all(&mut gz, &tar)?;
    let tar_gz = gz.finish()?;
    Ok(Layer {
        diff_id: sha256_digest(&tar),
        digest: sha256_digest(&tar_gz),
        tar_gz,
    })
}

fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(args.runs > 0, "--runs must be at least 1");
    let images = TestImages::get()?;
    let dir = tempfile::Builder::new().prefix("pull-bench-").tempdir()?;
    let net = CniNetwork::create(dir.path(), 234)?;
    let containerd = Containerd::start(&dir.path().join("containerd"), &net, images).await?;
    let shim = CriShim::start(&dir.path().join("cri-shim"), &net)?;
    let registry =
        Registry::start(&dir.path().join("registry"), RegistryOptions::default()).await?;

    let busybox = read_layout_tar(&images.busybox())?;
    let manifest: serde_json::Value = serde_json::from_slice(
        busybox
            .blob(&busybox.manifest_digest)
            .context("no manifest")?,
    )?;
    let config: serde_json::Value =
        serde_json::from_slice(busybox.blob(&busybox.config_digest).context("no config")?)?;
    let digest = manifest["layers"][0]["digest"]
        .as_str()
        .context("no layer")?;
    let base = Layer {
        tar_gz: busybox.blob(digest).context("no layer blob")?.to_vec(),
        digest: digest.to_owned(),
        diff_id: config["rootfs"]["diff_ids"][0]
            .as_str()
            .context("no diff id")?
            .to_owned(),
    };
    let mut builder = ImageBuilder::new("bench/busybox:1")
        .config(ImageConfig {
            cmd: vec!["sh".into()],
            ..ImageConfig::default()
        })
        .layer(with_marker(&base, "pull-bench")?, "busybox + marker");
    if args.extra_mib > 0 {
        let mut extra = LayerBuilder::new();
        extra.file("var/noise.bin", 0o644, noise(args.extra_mib << 20));
        builder = builder.layer(extra.build()?, "noise");
    }
    let image = builder.build()?;
    let pushed = registry.push(&image, "bench/busybox", "1", true).await?;
    let bytes: usize = image
        .blobs
        .iter()
        .filter(|(d, _)| **d != image.manifest_digest)
        .map(|(_, b)| b.len())
        .sum();
    println!(
        "PullImage {} ({:.2} MiB of config and layers), {} runs per runtime after 1 warm-up",
        pushed.reference,
        bytes as f64 / (1 << 20) as f64,
        args.runs
    );

    let runtimes = [
        ("cri-shim", shim.endpoint.clone()),
        ("containerd 1.6", containerd.endpoint.clone()),
    ];
    let mut samples = vec![Vec::new(); runtimes.len()];
    for round in 0..=args.runs {
        for (i, (label, endpoint)) in runtimes.iter().enumerate() {
            let mut client = image_client(endpoint).await?;
            client
                .remove_image(cri::RemoveImageRequest {
                    image: Some(cri::ImageSpec {
                        image: pushed.reference.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .with_context(|| format!("{label}: RemoveImage"))?;
            let start = Instant::now();
            let id = client
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: pushed.reference.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("{label}: PullImage"))?
                .into_inner()
                .image_ref;
            let elapsed = start.elapsed();
            ensure!(id == pushed.image_id, "{label} pulled {id}");
            if round > 0 {
                samples[i].push(elapsed);
            }
        }
    }
    // Every measured pull of each runtime downloaded the layers: each run
    // started from a store without them.
    let layer_gets = registry.blob_gets(&pushed.layers[0])?;
    println!(
        "registry served the first layer {layer_gets} times ({} pulls)",
        2 * (args.runs + 1)
    );
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>9}",
        "runtime", "min", "median", "p95", "max"
    );
    for ((label, _), samples) in runtimes.iter().zip(&mut samples) {
        samples.sort();
        let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
        println!(
            "{:<16} {:>9} {:>9} {:>9} {:>9}",
            label,
            ms(samples[0]),
            ms(percentile(samples, 0.5)),
            ms(percentile(samples, 0.95)),
            ms(samples[samples.len() - 1])
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(e2e::harness::is_root(), "pull-bench needs root");
    tokio::runtime::Runtime::new()?.block_on(run(&args))
}
