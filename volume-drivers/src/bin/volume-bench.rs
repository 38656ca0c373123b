//! Volume driver benchmark: sets up and tears down `--volumes` volumes of
//! each kind (one pod per volume, through the real volume manager and real
//! mounts), then times atomic updates of a `--keys`-key configMap payload.
//! Prints min/median/p95 per measurement. Needs root (tmpfs and FlexVolume
//! mounts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource,
    FlexVolumeSource, HostPathVolumeSource, ObjectFieldSelector, Pod, PodSpec,
    ProjectedVolumeSource, SecretProjection, SecretVolumeSource, Volume, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use volume_drivers::{
    InMemoryObjects, NixMounter, NodeAllocatable, VolumeManager, VolumeManagerConfig,
};

#[derive(Parser)]
#[command(about = "Set-up/tear-down latency per volume kind and atomic-update latency")]
struct Args {
    /// Volumes of each kind to set up and tear down.
    #[arg(long, default_value_t = 100)]
    volumes: usize,
    /// Keys in the configMap of the atomic-update measurement.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Bytes per configMap value.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// Atomic updates to time.
    #[arg(long, default_value_t = 50)]
    updates: usize,
    /// FlexVolume plugin dir holding kubelet-rs~tmpfs/tmpfs.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/flexvolume"))]
    flex_plugin_dir: PathBuf,
    /// Where to put the kubelet root dir (a temp dir inside it).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
}

fn vol(name: &str) -> Volume {
    Volume {
        name: name.into(),
        ..Default::default()
    }
}

fn pod(uid: &str, volumes: Vec<Volume>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            namespace: Some("ns".into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            volumes: Some(volumes),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Stats {
    min: Duration,
    median: Duration,
    p95: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        min: v[0],
        median: at(0.5),
        p95: at(0.95),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Makes the volume of the i-th pod of one kind.
type VolumeMaker = Box<dyn Fn(usize) -> Volume>;

fn kinds(host_dir: &Path) -> Vec<(&'static str, VolumeMaker)> {
    let host_dir = host_dir.to_owned();
    vec![
        (
            "emptyDir (disk)",
            Box::new(|_| Volume {
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..vol("v")
            }),
        ),
        (
            "emptyDir (Memory, tmpfs)",
            Box::new(|_| Volume {
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity("16Mi".into())),
                    ..Default::default()
                }),
                ..vol("v")
            }),
        ),
        (
            "hostPath (DirectoryOrCreate)",
            Box::new(move |i| Volume {
                host_path: Some(HostPathVolumeSource {
                    path: host_dir.join(i.to_string()).to_string_lossy().into_owned(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..vol("v")
            }),
        ),
        (
            "secret (tmpfs, 3 keys)",
            Box::new(|_| Volume {
                secret: Some(SecretVolumeSource {
                    secret_name: Some("creds".into()),
                    ..Default::default()
                }),
                ..vol("v")
            }),
        ),
        (
            "configMap (3 keys)",
            Box::new(|_| Volume {
                config_map: Some(ConfigMapVolumeSource {
                    name: "small".into(),
                    ..Default::default()
                }),
                ..vol("v")
            }),
        ),
        (
            "downwardAPI (3 items)",
            Box::new(|_| Volume {
                downward_api: Some(DownwardAPIVolumeSource {
                    items: Some(
                        ["metadata.name", "metadata.namespace", "metadata.uid"]
                            .iter()
                            .map(|f| DownwardAPIVolumeFile {
                                path: f.replace('.', "_"),
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: (*f).into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..vol("v")
            }),
        ),
        (
            "projected (tmpfs, secret)",
            Box::new(|_| Volume {
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        secret: Some(SecretProjection {
                            name: "creds".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..vol("v")
            }),
        ),
        (
            "flexVolume (kubelet-rs/tmpfs)",
            Box::new(|_| Volume {
                flex_volume: Some(FlexVolumeSource {
                    driver: "kubelet-rs/tmpfs".into(),
                    ..Default::default()
                }),
                ..vol("v")
            }),
        ),
    ]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        nix::unistd::geteuid().is_root(),
        "volume-bench mounts tmpfs and runs FlexVolume drivers: run it as root"
    );
    let work = tempfile::Builder::new()
        .prefix("volume-bench-")
        .tempdir_in(&args.work_dir)
        .with_context(|| format!("temp dir in {}", args.work_dir.display()))?;
    let root = work.path().join("kubelet");
    let vm = VolumeManager::new(
        VolumeManagerConfig {
            root_dir: root.clone(),
            flex_plugin_dir: args.flex_plugin_dir.clone(),
            node_name: "bench".into(),
            node_allocatable: NodeAllocatable::from_host(work.path())?,
        },
        Arc::new(NixMounter::default()),
    );
    let mut objects = InMemoryObjects::default();
    objects.insert_secret("ns", "creds", &[("a", b"1"), ("b", b"2"), ("c", b"3")]);
    objects.insert_config_map("ns", "small", &[("a", "1"), ("b", "2"), ("c", "3")]);

    println!(
        "{} volumes of each kind, one pod per volume; root dir on {}",
        args.volumes,
        args.work_dir.display()
    );
    println!(
        "{:<32} {:>12} {:>12} {:>12} | {:>12} {:>12}",
        "kind", "setup min", "setup median", "setup p95", "teardown med", "teardown p95"
    );
    for (name, make) in kinds(&work.path().join("host")) {
        let mut setup = Vec::new();
        let mut teardown = Vec::new();
        for i in 0..args.volumes {
            let uid = format!("bench-{i}");
            let p = pod(&uid, vec![make(i)]);
            let t = Instant::now();
            vm.setup_pod_volumes(&p, &objects)
                .map_err(|e| anyhow::anyhow!(e.event_message()))?;
            setup.push(t.elapsed());
            let t = Instant::now();
            vm.teardown_pod(&uid)?;
            teardown.push(t.elapsed());
        }
        let (s, td) = (stats(setup), stats(teardown));
        println!(
            "{:<32} {:>12} {:>12} {:>12} | {:>12} {:>12}",
            name,
            ms(s.min),
            ms(s.median),
            ms(s.p95),
            ms(td.median),
            ms(td.p95)
        );
    }

    // Atomic update of a large configMap.
    let value = "v".repeat(args.value_size);
    let fill = |objects: &mut InMemoryObjects, generation: usize, changed: usize| {
        let data: BTreeMap<String, String> = (0..args.keys)
            .map(|k| {
                let v = if k == changed {
                    format!("{value}-{generation}")
                } else {
                    value.clone()
                };
                (format!("key-{k:04}"), v)
            })
            .collect();
        let pairs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        objects.insert_config_map("ns", "big", &pairs);
    };
    fill(&mut objects, 0, usize::MAX);
    let p = pod(
        "bench-update",
        vec![Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: "big".into(),
                ..Default::default()
            }),
            ..vol("big")
        }],
    );
    let t = Instant::now();
    vm.setup_pod_volumes(&p, &objects)
        .map_err(|e| anyhow::anyhow!(e.event_message()))?;
    let first = t.elapsed();
    let mut unchanged = Vec::new();
    let mut updates = Vec::new();
    for generation in 1..=args.updates {
        let t = Instant::now();
        let v = vm
            .setup_pod_volumes(&p, &objects)
            .map_err(|e| anyhow::anyhow!(e.event_message()))?;
        unchanged.push(t.elapsed());
        ensure!(!v.volumes["big"].content_changed);
        fill(&mut objects, generation, generation % args.keys);
        let t = Instant::now();
        let v = vm
            .setup_pod_volumes(&p, &objects)
            .map_err(|e| anyhow::anyhow!(e.event_message()))?;
        updates.push(t.elapsed());
        ensure!(v.volumes["big"].content_changed);
    }
    vm.teardown_pod("bench-update")?;
    let (u, n) = (stats(updates), stats(unchanged));
    println!();
    println!(
        "configMap of {} keys x {} bytes: first write {}",
        args.keys,
        args.value_size,
        ms(first)
    );
    println!(
        "  update (one key changed, {} runs): min {} median {} p95 {}",
        args.updates,
        ms(u.min),
        ms(u.median),
        ms(u.p95)
    );
    println!(
        "  resync, nothing changed ({} runs): min {} median {} p95 {}",
        args.updates,
        ms(n.min),
        ms(n.median),
        ms(n.p95)
    );
    Ok(())
}
