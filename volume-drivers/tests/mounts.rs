//! Real mounts for every driver: tmpfs sizes checked with statfs, the
//! example FlexVolume driver and an attachable test driver run for real,
//! atomic updates seen through a bind mount (as a container sees them), a
//! subPath symlink escape refused, and after every trial nothing of ours is
//! left in `/proc/self/mountinfo`.
//!
//! Needs root; when not root every trial is reported as ignored, by name.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource,
    EmptyDirVolumeSource, FlexVolumeSource, HostPathVolumeSource, LocalObjectReference,
    ObjectFieldSelector, Pod, PodSpec, ProjectedVolumeSource, ResourceRequirements,
    SecretProjection, SecretVolumeSource, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use libtest_mimic::{Arguments, Trial};
use volume_drivers::mount::parse_mountinfo;
use volume_drivers::{
    InMemoryObjects, NixMounter, NodeAllocatable, VolumeManager, VolumeManagerConfig, subpath,
};

const NODE: NodeAllocatable = NodeAllocatable {
    cpu_millicores: 2000,
    memory_bytes: 512 << 20,
    ephemeral_storage_bytes: 10 << 30,
};

fn example_plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flexvolume")
}

/// A kubelet root dir in a temp dir with a real volume manager; on drop,
/// anything still mounted below it is unmounted (so a failing trial does not
/// leak mounts into the next), after the trial itself checked it.
struct Fixture {
    dir: tempfile::TempDir,
    vm: VolumeManager,
}

impl Fixture {
    fn new(flex_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("volume-drivers-")
            .tempdir()?;
        let vm = VolumeManager::new(
            VolumeManagerConfig {
                root_dir: dir.path().join("kubelet"),
                flex_plugin_dir: flex_dir.unwrap_or_else(example_plugin_dir),
                node_name: "node-1".into(),
                node_allocatable: NODE,
            },
            Arc::new(NixMounter::default()),
        );
        Ok(Self { dir, vm })
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    fn assert_nothing_mounted(&self) -> anyhow::Result<()> {
        let left = mounts_under(self.dir.path());
        ensure!(left.is_empty(), "still mounted: {left:?}");
        Ok(())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let mut left = mounts_under(self.dir.path());
        left.reverse();
        for m in left {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// The file system type mounted at `path` (the topmost mount there).
fn fs_type_at(path: &Path) -> Option<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines()
        .rfind(|l| l.split(' ').nth(4).map(Path::new) == Some(path))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|r| r.split(' ').next())
        .map(str::to_owned)
}

fn statfs_size(path: &Path) -> anyhow::Result<u64> {
    let s = nix::sys::statfs::statfs(path)?;
    Ok(s.blocks() * s.block_size() as u64)
}

fn vol(name: &str) -> Volume {
    Volume {
        name: name.into(),
        ..Default::default()
    }
}

fn pod(uid: &str, volumes: Vec<Volume>, memory_limit: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            uid: Some(uid.into()),
            labels: Some([("app".to_owned(), "web".to_owned())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                resources: memory_limit.map(|l| ResourceRequirements {
                    limits: Some([("memory".to_owned(), Quantity(l.into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: Some(volumes),
            service_account_name: Some("builder".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn objects() -> InMemoryObjects {
    let mut o = InMemoryObjects::default();
    o.insert_secret("ns", "creds", &[("password", b"hunter2")]);
    o.insert_config_map("ns", "conf", &[("app.ini", "x=1")]);
    o
}

fn memory_dir(name: &str, size_limit: Option<&str>) -> Volume {
    Volume {
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: size_limit.map(|s| Quantity(s.into())),
            ..Default::default()
        }),
        ..vol(name)
    }
}

fn empty_dir_trial() -> anyhow::Result<()> {
    let f = Fixture::new(None)?;
    let volumes = vec![
        Volume {
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("1Gi".into())),
                ..Default::default()
            }),
            ..vol("disk")
        },
        memory_dir("small", Some("32Mi")),
        memory_dir("bypod", None),
    ];
    let v =
        f.vm.setup_pod_volumes(&pod("uid-e", volumes, Some("48Mi")), &objects())?;
    let small = &v.volumes["small"].host_path;
    let bypod = &v.volumes["bypod"].host_path;
    let disk = &v.volumes["disk"];
    ensure!(
        fs_type_at(small).as_deref() == Some("tmpfs"),
        "small not tmpfs"
    );
    ensure!(
        statfs_size(small)? == 32 << 20,
        "sizeLimit: {}",
        statfs_size(small)?
    );
    ensure!(
        statfs_size(bypod)? == 48 << 20,
        "pod limit: {}",
        statfs_size(bypod)?
    );
    ensure!(
        fs_type_at(&disk.host_path).is_none(),
        "disk emptyDir is a plain dir"
    );
    ensure!(disk.size_limit == Some(1 << 30));
    ensure!(fs::metadata(&disk.host_path)?.permissions().mode() & 0o7777 == 0o777);

    let before = f.vm.volume_disk_usage(disk)?;
    fs::write(disk.host_path.join("blob"), vec![7u8; 1 << 20])?;
    let after = f.vm.volume_disk_usage(disk)?;
    ensure!(after - before >= 1 << 20, "disk usage {before} -> {after}");
    fs::write(small.join("blob"), vec![7u8; 1 << 20])?;
    ensure!(f.vm.volume_disk_usage(&v.volumes["small"])? >= 1 << 20);

    f.vm.teardown_pod("uid-e")?;
    f.assert_nothing_mounted()?;
    ensure!(!f.root().join("pods/uid-e").exists(), "pod dir left");
    Ok(())
}

fn host_path_trial() -> anyhow::Result<()> {
    let f = Fixture::new(None)?;
    let made = f.dir.path().join("host/made");
    let file = f.dir.path().join("host/made/file");
    let hp = |name: &str, path: &Path, t: &str| Volume {
        host_path: Some(HostPathVolumeSource {
            path: path.to_str().unwrap().into(),
            type_: Some(t.into()),
        }),
        ..vol(name)
    };
    let v = f.vm.setup_pod_volumes(
        &pod(
            "uid-h",
            vec![
                hp("dir", &made, "DirectoryOrCreate"),
                hp("file", &file, "FileOrCreate"),
                hp("null", Path::new("/dev/null"), "CharDevice"),
            ],
            None,
        ),
        &objects(),
    )?;
    ensure!(v.volumes["dir"].host_path == made && made.is_dir());
    ensure!(fs::metadata(&file)?.permissions().mode() & 0o777 == 0o644);
    let err =
        f.vm.setup_pod_volumes(
            &pod("uid-h2", vec![hp("wrong", &file, "Directory")], None),
            &objects(),
        )
        .unwrap_err();
    let want = format!(
        "MountVolume.SetUp failed for volume \"wrong\" : hostPath type check failed: {} is not a directory",
        file.display()
    );
    ensure!(err.event_message() == want, "{}", err.event_message());
    f.vm.teardown_pod("uid-h")?;
    f.vm.teardown_pod("uid-h2")?;
    ensure!(file.is_file(), "teardown never touches host paths");
    f.assert_nothing_mounted()
}

fn api_volumes_trial() -> anyhow::Result<()> {
    let f = Fixture::new(None)?;
    let volumes = vec![
        Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some("creds".into()),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..vol("creds")
        },
        Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: "conf".into(),
                ..Default::default()
            }),
            ..vol("conf")
        },
        Volume {
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "labels".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..vol("podinfo")
        },
        Volume {
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
            ..vol("all")
        },
    ];
    let p = pod("uid-a", volumes, Some("64Mi"));
    let mut o = objects();
    let v = f.vm.setup_pod_volumes(&p, &o)?;
    for (name, fs_type) in [
        ("creds", Some("tmpfs")),
        ("all", Some("tmpfs")),
        ("conf", None),
        ("podinfo", None),
    ] {
        let got = fs_type_at(&v.volumes[name].host_path);
        ensure!(got.as_deref() == fs_type, "{name}: {got:?}");
    }
    ensure!(statfs_size(&v.volumes["creds"].host_path)? == 64 << 20);
    let creds = &v.volumes["creds"].host_path;
    ensure!(fs::read_to_string(creds.join("password"))? == "hunter2");
    ensure!(fs::metadata(creds.join("password"))?.permissions().mode() & 0o777 == 0o400);
    ensure!(fs::read_to_string(v.volumes["podinfo"].host_path.join("labels"))? == "app=\"web\"");

    // A "container" view of the configMap volume: a bind mount, as the
    // runtime makes. The update shows through it without re-mounting.
    let conf = v.volumes["conf"].host_path.clone();
    let view = f.dir.path().join("container-view");
    fs::create_dir(&view)?;
    nix::mount::mount(
        Some(&conf),
        &view,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )?;
    ensure!(fs::read_to_string(view.join("app.ini"))? == "x=1");
    o.insert_config_map("ns", "conf", &[("app.ini", "x=2"), ("extra", "e")]);
    let v2 = f.vm.setup_pod_volumes(&p, &o)?;
    ensure!(v2.volumes["conf"].content_changed && !v2.volumes["creds"].content_changed);
    ensure!(fs::read_to_string(view.join("app.ini"))? == "x=2");
    ensure!(fs::read_to_string(view.join("extra"))? == "e");
    nix::mount::umount2(&view, nix::mount::MntFlags::empty())?;

    f.vm.teardown_pod("uid-a")?;
    f.assert_nothing_mounted()
}

fn flex_example_driver_trial() -> anyhow::Result<()> {
    // A plugin dir that starts empty: the driver is installed after the
    // volume manager exists and must be found.
    let plugins = tempfile::tempdir()?;
    let f = Fixture::new(Some(plugins.path().to_owned()))?;
    let flex = |name: &str, options: &[(&str, &str)], read_only| Volume {
        flex_volume: Some(FlexVolumeSource {
            driver: "kubelet-rs/tmpfs".into(),
            options: Some(
                options
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            read_only: Some(read_only),
            ..Default::default()
        }),
        ..vol(name)
    };
    let p = pod(
        "uid-f",
        vec![
            memory_dir("before", None),
            flex("scratch", &[("size", "8m")], false),
        ],
        None,
    );
    let err = f.vm.setup_pod_volumes(&p, &objects()).unwrap_err();
    ensure!(
        err.event_message()
            .contains("no FlexVolume driver \"kubelet-rs/tmpfs\""),
        "{}",
        err.event_message()
    );
    f.assert_nothing_mounted()
        .context("after the missing-driver failure")?;

    let src = example_plugin_dir().join("kubelet-rs~tmpfs/tmpfs");
    let dst = plugins.path().join("kubelet-rs~tmpfs");
    fs::create_dir(&dst)?;
    fs::copy(&src, dst.join("tmpfs"))?;
    let v = f.vm.setup_pod_volumes(&p, &objects())?;
    let dir = &v.volumes["scratch"].host_path;
    ensure!(
        dir.ends_with("pods/uid-f/volumes/kubelet-rs~tmpfs/scratch"),
        "{dir:?}"
    );
    ensure!(fs_type_at(dir).as_deref() == Some("tmpfs"));
    ensure!(
        statfs_size(dir)? == 8 << 20,
        "size option: {}",
        statfs_size(dir)?
    );
    ensure!(fs::read_to_string(dir.join("pod"))? == "ns/web/uid-f\n");
    ensure!(
        !v.volumes["scratch"].selinux_relabel,
        "driver said selinuxRelabel: false"
    );

    // A driver Failure: its message reaches the error, nothing stays mounted.
    let bad = pod(
        "uid-f2",
        vec![
            memory_dir("first", None),
            flex("broken", &[("source", "/nonexistent-source")], false),
        ],
        None,
    );
    let err = f.vm.setup_pod_volumes(&bad, &objects()).unwrap_err();
    ensure!(
        err.event_message()
            == "MountVolume.SetUp failed for volume \"broken\" : mount command failed, status: Failure, reason: source /nonexistent-source is not a directory",
        "{}",
        err.event_message()
    );
    ensure!(mounts_under(&f.root().join("pods/uid-f2")).is_empty());

    // Read-only bind mode.
    let src_dir = f.dir.path().join("share");
    fs::create_dir(&src_dir)?;
    fs::write(src_dir.join("hello"), "hi")?;
    let ro = pod(
        "uid-f3",
        vec![flex(
            "share",
            &[("source", src_dir.to_str().unwrap())],
            true,
        )],
        None,
    );
    let v3 = f.vm.setup_pod_volumes(&ro, &objects())?;
    let share = &v3.volumes["share"].host_path;
    ensure!(fs::read_to_string(share.join("hello"))? == "hi");
    ensure!(
        fs::write(share.join("x"), "x").is_err(),
        "readOnly flex volume is writable"
    );
    ensure!(v3.volumes["share"].read_only);

    f.vm.teardown_pod("uid-f")?;
    f.vm.teardown_pod("uid-f2")?;
    f.vm.teardown_pod("uid-f3")?;
    ensure!(src_dir.join("hello").exists(), "bind source untouched");
    f.assert_nothing_mounted()
}

/// An attachable driver that logs its calls: attach/waitforattach answer a
/// device, mountdevice mounts a tmpfs at the device mount dir, mount is not
/// supported (so the kubelet bind-mounts the device mount dir, upstream's
/// default), unmountdevice unmounts, detach and isattached answer.
const ATTACH_DRIVER: &str = r#"#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls.log"
case "$1" in
init) echo '{"status":"Success","capabilities":{"attach":true}}' ;;
attach) echo '{"status":"Success","device":"/dev/fake-disk"}' ;;
waitforattach) echo "{\"status\":\"Success\",\"device\":\"$2\"}" ;;
isattached) echo '{"status":"Success","attached":true}' ;;
mountdevice)
    case "$4" in *'"fail":"mountdevice"'*) echo '{"status":"Failure","message":"injected"}'; exit 1 ;; esac
    mount -t tmpfs -o size=4m tmpfs "$2" && echo "$3" > "$2/device" && echo '{"status":"Success"}' ;;
unmountdevice) umount "$2" && echo '{"status":"Success"}' ;;
detach) echo '{"status":"Success"}' ;;
*) echo '{"status":"Not supported"}'; exit 1 ;;
esac
"#;

fn flex_attach_flow_trial() -> anyhow::Result<()> {
    let plugins = tempfile::tempdir()?;
    let drv = plugins.path().join("test~attach");
    fs::create_dir(&drv)?;
    fs::write(drv.join("attach"), ATTACH_DRIVER)?;
    fs::set_permissions(drv.join("attach"), fs::Permissions::from_mode(0o755))?;
    let f = Fixture::new(Some(plugins.path().to_owned()))?;
    let mut o = objects();
    o.insert_secret("ns", "flex-creds", &[("token", b"abc")]);
    let v = Volume {
        flex_volume: Some(FlexVolumeSource {
            driver: "test/attach".into(),
            fs_type: Some("ext4".into()),
            secret_ref: Some(LocalObjectReference {
                name: "flex-creds".into(),
            }),
            ..Default::default()
        }),
        ..vol("disk")
    };
    let pv = f.vm.setup_pod_volumes(&pod("uid-x", vec![v], None), &o)?;
    let dir = &pv.volumes["disk"].host_path;
    let dmp = f
        .root()
        .join("plugins/kubernetes.io/flexvolume/test/attach/mounts/disk");
    ensure!(fs_type_at(&dmp).as_deref() == Some("tmpfs"), "device mount");
    ensure!(
        fs::read_to_string(dir.join("device"))? == "/dev/fake-disk\n",
        "bind of the device mount"
    );

    let driver = f.vm.flex_plugins().driver("test/attach")?;
    ensure!(driver.is_attached("{}", "node-1")? == Some(true));

    f.vm.teardown_pod("uid-x")?;
    f.assert_nothing_mounted()?;
    ensure!(!dmp.exists(), "device mount dir removed");

    let log = fs::read_to_string(drv.join("calls.log"))?;
    let verbs: Vec<&str> = log.lines().filter_map(|l| l.split(' ').next()).collect();
    ensure!(
        verbs
            == [
                "init",
                "attach",
                "waitforattach",
                "mountdevice",
                "mount",
                "isattached",
                "unmount",
                "unmountdevice",
                "detach"
            ],
        "{log}"
    );
    let attach_line = log.lines().nth(1).unwrap_or_default();
    ensure!(
        attach_line.contains("\"kubernetes.io/fsType\":\"ext4\""),
        "{attach_line}"
    );
    ensure!(attach_line.ends_with(" node-1"), "{attach_line}");
    let mount_line = log.lines().nth(4).unwrap_or_default();
    for want in [
        "\"kubernetes.io/pod.name\":\"web\"",
        "\"kubernetes.io/pod.namespace\":\"ns\"",
        "\"kubernetes.io/pod.uid\":\"uid-x\"",
        "\"kubernetes.io/serviceAccount.name\":\"builder\"",
        "\"kubernetes.io/secret/token\":\"YWJj\"",
        "\"kubernetes.io/readwrite\":\"rw\"",
    ] {
        ensure!(
            mount_line.contains(want),
            "mount options lack {want}: {mount_line}"
        );
    }
    let detach_line = log.lines().last().unwrap_or_default();
    ensure!(detach_line == "detach disk node-1", "{detach_line}");

    // mountdevice fails after attach: the error carries the driver's
    // message, the volume is detached again and nothing stays mounted.
    let failing = Volume {
        flex_volume: Some(FlexVolumeSource {
            driver: "test/attach".into(),
            options: Some([("fail".to_owned(), "mountdevice".to_owned())].into()),
            ..Default::default()
        }),
        ..vol("disk2")
    };
    let err =
        f.vm.setup_pod_volumes(&pod("uid-y", vec![failing], None), &o)
            .unwrap_err();
    ensure!(
        err.event_message()
            .ends_with("mountdevice command failed, status: Failure, reason: injected"),
        "{}",
        err.event_message()
    );
    f.assert_nothing_mounted()?;
    let log = fs::read_to_string(drv.join("calls.log"))?;
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .take(4)
        .filter_map(|l| l.split(' ').next())
        .collect();
    ensure!(
        tail == ["detach", "mountdevice", "waitforattach", "attach"],
        "{log}"
    );
    ensure!(log.lines().last() == Some("detach disk2 node-1"), "{log}");
    f.vm.teardown_pod("uid-y")?;
    Ok(())
}

fn sub_path_trial() -> anyhow::Result<()> {
    let f = Fixture::new(None)?;
    let volumes = vec![
        Volume {
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..vol("data")
        },
        Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: "conf".into(),
                ..Default::default()
            }),
            ..vol("conf")
        },
    ];
    let p = pod("uid-s", volumes, None);
    let v = f.vm.setup_pod_volumes(&p, &objects())?;
    let data = v.volumes["data"].host_path.clone();
    let secret_file = f.dir.path().join("host-secret");
    fs::write(&secret_file, "host only")?;
    std::os::unix::fs::symlink("/etc", data.join("to-etc"))?;
    std::os::unix::fs::symlink(&secret_file, data.join("to-file"))?;
    std::os::unix::fs::symlink("../../../../../../../..", data.join("up"))?;
    fs::create_dir(data.join("real"))?;
    std::os::unix::fs::symlink("real", data.join("inside"))?;

    let mount = |name: &str, path: &str, sub: Option<&str>, expr: Option<&str>| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        sub_path: sub.map(Into::into),
        sub_path_expr: expr.map(Into::into),
        ..Default::default()
    };
    let env = HashMap::from([("POD_NAME".to_owned(), "web".to_owned())]);
    for escape in ["to-etc", "to-file", "up", "up/etc/passwd", "to-etc/passwd"] {
        let c = Container {
            name: "app".into(),
            volume_mounts: Some(vec![mount("data", "/x", Some(escape), None)]),
            ..Default::default()
        };
        let err =
            f.vm.container_mounts(&p, &c, &v, &env, false)
                .err()
                .with_context(|| format!("subPath {escape} was allowed"))?;
        ensure!(
            err.event_message().contains("not within volume path"),
            "{escape}: {}",
            err.event_message()
        );
        ensure!(
            mounts_under(&f.root().join("pods/uid-s/volume-subpaths")).is_empty(),
            "{escape} left a mount"
        );
    }

    let c = Container {
        name: "app".into(),
        volume_mounts: Some(vec![
            mount("data", "/logs", None, Some("logs/$(POD_NAME)")),
            mount("data", "/in", Some("inside"), None),
            mount("conf", "/etc/app.ini", Some("app.ini"), None),
        ]),
        ..Default::default()
    };
    let m = f.vm.container_mounts(&p, &c, &v, &env, false)?;
    ensure!(m.len() == 3);
    subpath::verify_bind(&data.join("logs/web"), &m[0].host_path)?;
    subpath::verify_bind(&data.join("real"), &m[1].host_path)?;
    fs::write(m[0].host_path.join("out.log"), "line")?;
    ensure!(fs::read_to_string(data.join("logs/web/out.log"))? == "line");
    ensure!(m[2].host_path.is_file() && m[2].read_only);
    ensure!(fs::read_to_string(&m[2].host_path)? == "x=1");
    // Idempotent: a second call reuses the binds.
    let before = mounts_under(f.dir.path()).len();
    f.vm.container_mounts(&p, &c, &v, &env, false)?;
    ensure!(
        mounts_under(f.dir.path()).len() == before,
        "second call added mounts"
    );

    f.vm.teardown_pod("uid-s")?;
    f.assert_nothing_mounted()?;
    ensure!(fs::read_to_string(&secret_file)? == "host only");
    Ok(())
}

fn teardown_and_orphans_trial() -> anyhow::Result<()> {
    let f = Fixture::new(None)?;
    let all = |uid: &str| {
        pod(
            uid,
            vec![
                memory_dir("m", Some("16Mi")),
                Volume {
                    secret: Some(SecretVolumeSource {
                        secret_name: Some("creds".into()),
                        ..Default::default()
                    }),
                    ..vol("s")
                },
                Volume {
                    flex_volume: Some(FlexVolumeSource {
                        driver: "kubelet-rs/tmpfs".into(),
                        ..Default::default()
                    }),
                    ..vol("flex")
                },
                Volume {
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..vol("d")
                },
            ],
            None,
        )
    };
    for uid in ["live", "gone-1", "gone-2"] {
        let p = all(uid);
        let v = f.vm.setup_pod_volumes(&p, &objects())?;
        let c = Container {
            name: "app".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "d".into(),
                mount_path: "/d".into(),
                sub_path: Some("sub".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        f.vm.container_mounts(&p, &c, &v, &HashMap::new(), false)?;
    }
    ensure!(
        mounts_under(f.dir.path()).len() == 12,
        "{:?}",
        mounts_under(f.dir.path())
    );
    // A fresh manager, as after a kubelet restart: it knows only the disk.
    let vm2 = VolumeManager::new(
        VolumeManagerConfig {
            root_dir: f.root(),
            flex_plugin_dir: example_plugin_dir(),
            node_name: "node-1".into(),
            node_allocatable: NODE,
        },
        Arc::new(NixMounter::default()),
    );
    let (cleaned, errors) = vm2.cleanup_orphaned_pod_dirs(&HashSet::from(["live".to_owned()]));
    ensure!(errors.is_empty(), "{errors:?}");
    ensure!(cleaned == ["gone-1", "gone-2"], "{cleaned:?}");
    let left = mounts_under(f.dir.path());
    ensure!(
        left.len() == 4
            && left
                .iter()
                .all(|m| m.starts_with(f.root().join("pods/live"))),
        "{left:?}"
    );
    vm2.teardown_pod("live")?;
    f.assert_nothing_mounted()?;
    ensure!(fs::read_dir(f.root().join("pods"))?.count() == 0);
    Ok(())
}

fn rollback_trial() -> anyhow::Result<()> {
    let f = Fixture::new(None)?;
    let p = pod(
        "uid-r",
        vec![
            memory_dir("m", None),
            Volume {
                secret: Some(SecretVolumeSource {
                    secret_name: Some("creds".into()),
                    ..Default::default()
                }),
                ..vol("s")
            },
            Volume {
                config_map: Some(ConfigMapVolumeSource {
                    name: "absent".into(),
                    ..Default::default()
                }),
                ..vol("c")
            },
        ],
        None,
    );
    let err = f.vm.setup_pod_volumes(&p, &objects()).unwrap_err();
    ensure!(err.volume == "c", "{}", err.event_message());
    ensure!(
        err.event_message()
            .ends_with("configmap \"absent\" not found")
    );
    f.assert_nothing_mounted()
}

fn trial(name: &'static str, f: fn() -> anyhow::Result<()>) -> Trial {
    let root = nix::unistd::geteuid().is_root();
    Trial::test(name, move || f().map_err(|e| format!("{e:#}").into()))
        .with_ignored_flag(!root)
        .with_kind(if root { "" } else { "needs root" })
}

fn main() {
    let args = Arguments::from_args();
    let trials = vec![
        trial("empty_dir_disk_and_sized_tmpfs", empty_dir_trial),
        trial("host_path_types", host_path_trial),
        trial(
            "secret_configmap_downward_projected_and_live_update",
            api_volumes_trial,
        ),
        trial(
            "flex_example_driver_found_late_mount_unmount",
            flex_example_driver_trial,
        ),
        trial("flex_attach_flow", flex_attach_flow_trial),
        trial("sub_path_symlink_escape_refused", sub_path_trial),
        trial("teardown_and_orphaned_pod_dirs", teardown_and_orphans_trial),
        trial("failed_setup_rolls_back_real_mounts", rollback_trial),
    ];
    libtest_mimic::run(&args, trials).exit();
}
