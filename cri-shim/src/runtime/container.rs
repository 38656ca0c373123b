//! Containers: an overlayfs rootfs over the image's unpacked layers, an OCI
//! bundle, and a monitor process that runs `runc create`, holds stdio, writes
//! the CRI log and records the exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1 as cri;
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Instrument;

use super::pidfd;
use super::{
    Entry, ExecOutput, Runtime, RuntimeError, list_dirs, new_id, persist_json, read_json,
    write_json,
};
use crate::monitor::{ExitRecord, MonitorReport, MonitorSpec, now_ns};
use crate::oci::{self, PidNamespace, SpecInputs};
use crate::reexec::{HelperExe, MONITOR_ARG};

/// Container state as CRI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Started and not exited.
    Running,
    /// Exited (exit record present).
    Exited,
    /// The monitor died without recording an exit.
    Unknown,
}

/// The persisted container (`<root>/containers/<id>/container.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub(super) id: String,
    pub(super) sandbox_id: String,
    pub(super) config: cri::ContainerConfig,
    /// Sandbox labels/annotations are not needed; its metadata names the pod.
    pub(super) pod: cri::PodSandboxMetadata,
    /// Image id the container runs (`sha256:...`).
    pub(super) image_ref: String,
    /// Absolute log path, empty if the caller asked for none.
    pub(super) log_path: PathBuf,
    pub(super) created_at: i64,
    pub(super) started_at: Option<i64>,
    pub(super) monitor_pid: i32,
    pub(super) pid: i32,
    /// Signal the image asks to be stopped with.
    pub(super) stop_signal: Option<String>,
    /// Set once `runc create` succeeded; a record without it is half-made.
    pub(super) created: bool,
    /// The container's cgroup (OCI `cgroupsPath`), for stats and OOM checks.
    #[serde(default)]
    pub(super) cgroup_path: Option<String>,
}

impl ContainerRecord {
    fn name(&self) -> String {
        self.config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default()
    }

    pub(super) fn reserved_name(&self) -> String {
        let m = self.config.metadata.clone().unwrap_or_default();
        format!(
            "{}_{}_{}_{}_{}",
            m.name, self.pod.name, self.pod.namespace, self.pod.uid, m.attempt
        )
    }
}

impl Runtime {
    /// CreateContainer.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> Result<String, RuntimeError> {
        let meta = config.metadata.clone().ok_or_else(|| {
            RuntimeError::InvalidArgument("container config has no metadata".into())
        })?;
        if meta.name.is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "container metadata.name is empty".into(),
            ));
        }
        let sandbox = self.sandbox_record(sandbox_id)?;
        if self.sandbox_cri_state(&sandbox) != cri::PodSandboxState::SandboxReady {
            return Err(RuntimeError::SandboxNotReady {
                id: sandbox.id.clone(),
            });
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image =
            self.inner
                .images
                .get(&image_name)
                .ok_or_else(|| RuntimeError::ImageNotFound {
                    image: image_name.clone(),
                })?;
        let log_dir = sandbox_config
            .as_ref()
            .map(|c| c.log_directory.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| sandbox.config.log_directory.clone());
        let log_path = if log_dir.is_empty() || config.log_path.is_empty() {
            PathBuf::new()
        } else {
            Path::new(&log_dir).join(&config.log_path)
        };
        let id = new_id();
        let mut record = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            config,
            pod: sandbox.config.metadata.clone().unwrap_or_default(),
            image_ref: image.id.clone(),
            log_path,
            created_at: now_ns(),
            started_at: None,
            monitor_pid: 0,
            pid: 0,
            stop_signal: image.config.stop_signal.clone(),
            created: false,
            cgroup_path: None,
        };
        let name = record.reserved_name();
        self.reserve_name(&name, &id)?;
        let span = tracing::info_span!("create_container", container.id = %id, container.name = %meta.name, sandbox.id = %sandbox.id);
        async {
            match self.set_up_container(&mut record, &sandbox, &image).await {
                Ok(exit_rx) => {
                    record.created = true;
                    persist_json(&self.container_dir(&id).join("container.json"), &record).await?;
                    self.inner
                        .exits
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone(), exit_rx);
                    self.inner
                        .containers
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone(), Entry::new(record));
                    tracing::info!("container created");
                    self.emit_container_event(
                        &id,
                        &sandbox.id,
                        cri::ContainerEventType::ContainerCreatedEvent,
                    );
                    Ok(id)
                }
                Err(e) => {
                    self.remove_container_files(&id).await;
                    self.release_name(&name);
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn set_up_container(
        &self,
        record: &mut ContainerRecord,
        sandbox: &super::sandbox::SandboxRecord,
        image: &crate::image::Image,
    ) -> Result<watch::Receiver<bool>, RuntimeError> {
        let paths = self.sandbox_paths(sandbox);
        let pid_namespace = self.pid_namespace_for(&record.config, sandbox)?;
        // Directories, the overlay mount, the user lookup and the bundle are
        // file and mount work: on a bulk-work thread, so under load the
        // async workers keep answering status and list calls meanwhile.
        let (this, mut prepared, image) = (self.clone(), record.clone(), image.clone());
        let prepared = super::off_workers(move || {
            this.prepare_bundle(&mut prepared, &image, &paths, pid_namespace)
                .map(|()| prepared)
        })
        .await
        .map_err(|e| RuntimeError::Create {
            container: record.name(),
            message: format!("preparing the bundle ended abnormally: {e}"),
        })??;
        *record = prepared;
        let dir = self.container_dir(&record.id);
        let monitor = MonitorSpec {
            id: record.id.clone(),
            bundle: dir.join("bundle"),
            runtime: self.inner.oci.binary.clone(),
            runtime_root: self.inner.oci.root.clone(),
            log_path: (!record.log_path.as_os_str().is_empty()).then(|| record.log_path.clone()),
            exit_file: dir.join("exit.json"),
            cgroup_path: record.cgroup_path.clone(),
        };
        let (monitor_pid, pid) = spawn_monitor(&self.inner.helper, &record.id, &monitor).await?;
        record.monitor_pid = monitor_pid;
        record.pid = pid;
        Ok(self.watch_exit(&record.id, &record.sandbox_id, monitor_pid))
    }

    /// The blocking part of [`Self::set_up_container`]: the container's
    /// directories, its rootfs overlay, and the OCI bundle's `config.json`;
    /// sets the record's cgroup path.
    fn prepare_bundle(
        &self,
        record: &mut ContainerRecord,
        image: &crate::image::Image,
        paths: &crate::oci::SandboxPaths,
        pid_namespace: PidNamespace,
    ) -> Result<(), RuntimeError> {
        let dir = self.container_dir(&record.id);
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in [&rootfs, &dir.join("upper"), &dir.join("work")] {
            std::fs::create_dir_all(d).map_err(RuntimeError::io("creating", d))?;
        }
        write_json(&dir.join("container.json"), record)?;
        let layers = self.inner.images.rootfs_layers(image)?;
        mount_overlay(&layers, &dir.join("upper"), &dir.join("work"), &rootfs)?;

        let read_etc =
            |f: &str| std::fs::read_to_string(rootfs.join("etc").join(f)).unwrap_or_default();
        let name = record.name();
        let user = oci::resolve_user(
            &name,
            &record.config,
            &image.config,
            &read_etc("passwd"),
            &read_etc("group"),
        )?;
        let spec = oci::build_spec(
            &record.config,
            &SpecInputs {
                id: &record.id,
                rootfs: &rootfs,
                image: &image.config,
                user,
                sandbox: paths,
                pid_namespace,
                current_oom_score_adj: self.inner.oom_score_adj,
                runtime_capabilities: &self.inner.capabilities,
                hugetlb_controller: self.inner.hugetlb_controller,
            },
        )?;
        record.cgroup_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned());
        write_json(&bundle.join("config.json"), &spec)
    }

    /// The pid namespace a container asks for. Mode POD is proto3's default,
    /// so a config without namespace options shares the pod's (as with
    /// containerd); a pod without its own pid namespace then gives the
    /// container a private one.
    fn pid_namespace_for(
        &self,
        config: &cri::ContainerConfig,
        sandbox: &super::sandbox::SandboxRecord,
    ) -> Result<PidNamespace, RuntimeError> {
        let ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let proc_ns = |pid: i32| PidNamespace::Join(PathBuf::from(format!("/proc/{pid}/ns/pid")));
        match cri::NamespaceMode::try_from(ns.pid) {
            Ok(cri::NamespaceMode::Node) => Ok(PidNamespace::Host),
            Ok(cri::NamespaceMode::Container) => Ok(PidNamespace::Private),
            Ok(cri::NamespaceMode::Target) => {
                let invalid = |why: &str| {
                    RuntimeError::InvalidArgument(format!(
                        "linux.security_context.namespace_options.target_id {:?}: {why}",
                        ns.target_id
                    ))
                };
                let (_, target) = self
                    .container_entry(&ns.target_id)
                    .map_err(|_| invalid("no such container"))?;
                let target = target.get();
                if target.sandbox_id != sandbox.id
                    || self.state_of(&target) != ContainerState::Running
                {
                    return Err(invalid("not a running container of this pod"));
                }
                Ok(proc_ns(target.pid))
            }
            Ok(cri::NamespaceMode::Pod) => {
                Ok(sandbox.pid_holder.map_or(PidNamespace::Private, proc_ns))
            }
            Err(_) => Err(RuntimeError::InvalidArgument(format!(
                "linux.security_context.namespace_options.pid: unknown mode {}",
                ns.pid
            ))),
        }
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let (id, entry) = self.container_entry(id)?;
        let _op = entry.op.lock().await;
        let record = entry.get();
        match self.state_of(&record) {
            ContainerState::Created => {}
            other => {
                return Err(RuntimeError::InvalidArgument(format!(
                    "container {id} is {other:?}, not created"
                )));
            }
        }
        self.inner.oci.start(&id).await?;
        // Stamped once the process runs, as containerd does: a kubelet that
        // takes the answer for the start reads about this time. A container
        // that exits at once may have finished before it; its status clamps.
        let started_at = now_ns();
        let record = entry.update(|r| r.started_at = Some(started_at));
        persist_json(&self.container_dir(&id).join("container.json"), &record).await?;
        tracing::info!(container.id = %id, container.name = %record.name(), "container started");
        self.emit_container_event(
            &id,
            &record.sandbox_id,
            cri::ContainerEventType::ContainerStartedEvent,
        );
        Ok(())
    }

    /// ExecSync: runs `cmd` in the running container and returns its output
    /// and exit code; `timeout` seconds (0 = none) bound it.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<ExecOutput, RuntimeError> {
        let (id, entry) = self.container_entry(id)?;
        if cmd.is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "ExecSync: cmd is empty".into(),
            ));
        }
        if self.state_of(&entry.get()) != ContainerState::Running {
            return Err(RuntimeError::ContainerNotRunning { id });
        }
        let timeout = (timeout > 0).then(|| Duration::from_secs(timeout as u64));
        // One pid file per call: concurrent probes must not share one.
        let pid_file = self
            .container_dir(&id)
            .join(format!("exec-{}.pid", &new_id()[..16]));
        match self.inner.oci.exec(&id, &cmd, timeout, &pid_file).await? {
            Some(output) => Ok(output),
            None => Err(RuntimeError::ExecTimeout {
                id,
                cmd,
                timeout: timeout.unwrap_or_default(),
            }),
        }
    }

    /// UpdateContainerResources: new CPU/memory limits for a created or
    /// running container, applied by the OCI runtime and recorded so
    /// ContainerStatus reports them.
    pub async fn update_container_resources(
        &self,
        id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> Result<(), RuntimeError> {
        let (id, entry) = self.container_entry(id)?;
        let _op = entry.op.lock().await;
        if matches!(
            self.state_of(&entry.get()),
            ContainerState::Exited | ContainerState::Unknown
        ) {
            return Err(RuntimeError::ContainerNotRunning { id });
        }
        let Some(resources) = resources else {
            return Ok(());
        };
        let oci =
            oci::linux_resources(Some(&resources), self.inner.hugetlb_controller).map_err(|e| {
                RuntimeError::InvalidArgument(format!("container {id}: resources: {e}"))
            })?;
        let file = self.container_dir(&id).join("resources.json");
        write_json(&file, &oci)?;
        let applied = self.inner.oci.update(&id, &file).await;
        let _ = std::fs::remove_file(&file);
        applied?;
        let record = entry.update(|r| {
            r.config
                .linux
                .get_or_insert_with(Default::default)
                .resources = Some(resources);
        });
        write_json(&self.container_dir(&id).join("container.json"), &record)?;
        tracing::info!(container.id = %id, "container resources updated");
        Ok(())
    }

    /// ReopenContainerLog: the monitor reopens the log path (after the
    /// kubelet rotated the file); returns once the new file exists.
    pub async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError> {
        let (id, entry) = self.container_entry(id)?;
        let record = entry.get();
        if self.state_of(&record) != ContainerState::Running {
            return Err(RuntimeError::ContainerNotRunning { id });
        }
        if record.log_path.as_os_str().is_empty() {
            return Ok(());
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(record.monitor_pid),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .map_err(|source| RuntimeError::ReopenLog {
            container: id.clone(),
            reason: format!("signalling the monitor: {source}"),
        })?;
        // The monitor answers within microseconds; a short bounded poll for
        // the file is simpler than a reply channel to a detached process.
        for _ in 0..200 {
            if record.log_path.exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(RuntimeError::ReopenLog {
            container: id,
            reason: format!("{} did not reappear within 1s", record.log_path.display()),
        })
    }

    /// StopContainer: the stop signal, `timeout` seconds, then SIGKILL. Idempotent.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), RuntimeError> {
        let (id, entry) = self.container_entry(id)?;
        let _op = entry.op.lock().await;
        let record = entry.get();
        if matches!(
            self.state_of(&record),
            ContainerState::Exited | ContainerState::Unknown
        ) {
            return Ok(());
        }
        let mut exited = self.exit_receiver(&record);
        if timeout > 0 {
            let signal = record
                .stop_signal
                .clone()
                .unwrap_or_else(|| "SIGTERM".into());
            match self.inner.oci.kill(&id, &signal).await {
                Err(e) if !(e.is_not_running() || e.is_not_found()) => return Err(e.into()),
                _ => {}
            }
            let wait = exited.wait_for(|done| *done);
            if tokio::time::timeout(Duration::from_secs(timeout as u64), wait)
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        match self.inner.oci.kill(&id, "SIGKILL").await {
            Err(e) if !(e.is_not_running() || e.is_not_found()) => return Err(e.into()),
            _ => {}
        }
        // SIGKILL cannot be ignored; the bound only guards against a wedged runtime.
        let _ = tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|done| *done)).await;
        tracing::info!(container.id = %id, "container stopped");
        Ok(())
    }

    /// RemoveContainer: kills it if running and removes all its state. Idempotent.
    pub async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let (id, entry) = match self.container_entry(id) {
            Ok(found) => found,
            Err(RuntimeError::ContainerNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container(&id, 0).await?;
        let _op = entry.op.lock().await;
        self.inner.oci.delete(&id).await?;
        self.remove_container_files(&id).await;
        self.inner
            .containers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.inner
            .exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.release_name(&entry.get().reserved_name());
        tracing::info!(container.id = %id, "container removed");
        self.emit_container_event(
            &id,
            &entry.get().sandbox_id,
            cri::ContainerEventType::ContainerDeletedEvent,
        );
        Ok(())
    }

    /// Unmounts the rootfs and deletes the container directory (not the
    /// log), on a bulk-work thread.
    async fn remove_container_files(&self, id: &str) {
        let dir = self.container_dir(id);
        let id = id.to_owned();
        let removed = super::off_workers(move || {
            let rootfs = dir.join("bundle").join("rootfs");
            match nix::mount::umount2(&rootfs, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => tracing::warn!(container.id = %id, error = %e, "unmounting rootfs"),
            }
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(container.id = %id, error = %e, "removing container directory");
            }
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "removing container files");
        }
    }

    /// A receiver that turns true when the monitor (and so the container) is
    /// gone; the exit is also published as a STOPPED event.
    fn watch_exit(&self, id: &str, sandbox_id: &str, monitor_pid: i32) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let runtime = self.clone();
        let (id, sandbox_id) = (id.to_owned(), sandbox_id.to_owned());
        tokio::spawn(async move {
            pidfd::wait_exit(monitor_pid).await;
            let _ = tx.send(true);
            runtime.emit_container_event(
                &id,
                &sandbox_id,
                cri::ContainerEventType::ContainerStoppedEvent,
            );
        });
        rx
    }

    fn exit_receiver(&self, record: &ContainerRecord) -> watch::Receiver<bool> {
        let mut exits = self.inner.exits.lock().unwrap_or_else(|e| e.into_inner());
        exits
            .entry(record.id.clone())
            .or_insert_with(|| self.watch_exit(&record.id, &record.sandbox_id, record.monitor_pid))
            .clone()
    }

    fn state_of(&self, r: &ContainerRecord) -> ContainerState {
        if self.exit_record(r).is_some() {
            ContainerState::Exited
        } else if self.monitor_gone(r) {
            // Re-check: the monitor may have written the record and exited
            // between the two looks.
            if self.exit_record(r).is_some() {
                ContainerState::Exited
            } else {
                ContainerState::Unknown
            }
        } else if r.started_at.is_some() {
            ContainerState::Running
        } else {
            ContainerState::Created
        }
    }

    /// Whether the container's monitor has exited: from its exit watcher
    /// when it has one (every container made or adopted alive by this
    /// process), which costs no system call; else by looking in `/proc`.
    /// Lists ask this for every container, so it must stay cheap.
    fn monitor_gone(&self, r: &ContainerRecord) -> bool {
        let watcher = self
            .inner
            .exits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.id)
            .map(|rx| *rx.borrow());
        watcher.unwrap_or_else(|| !pidfd::alive_with(r.monitor_pid, &r.id))
    }

    fn exit_record(&self, r: &ContainerRecord) -> Option<ExitRecord> {
        ExitRecord::read(&self.container_dir(&r.id).join("exit.json"))
    }

    /// ContainerStatus.
    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, RuntimeError> {
        let (_, entry) = self.container_entry(id)?;
        let r = entry.get();
        let state = self.state_of(&r);
        let exit = self.exit_record(&r);
        let (exit_code, finished_at, reason) = match (&state, &exit) {
            (ContainerState::Exited, Some(e)) => (
                e.exit_code,
                e.finished_at,
                if e.oom_killed {
                    "OOMKilled"
                } else if e.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_owned(),
            ),
            (ContainerState::Unknown, _) => (255, 0, "Unknown".to_owned()),
            _ => (0, 0, String::new()),
        };
        let image = self.inner.images.get(&r.image_ref);
        Ok(cri::ContainerStatus {
            id: r.id.clone(),
            metadata: r.config.metadata.clone(),
            state: cri_state(state) as i32,
            created_at: r.created_at,
            started_at: match (r.started_at, finished_at) {
                (Some(started), 0) => started,
                (Some(started), finished) => started.min(finished),
                (None, _) => 0,
            },
            finished_at,
            exit_code,
            image: r.config.image.clone(),
            image_ref: image
                .as_ref()
                .and_then(|i| i.repo_digests.first().cloned())
                .unwrap_or_else(|| r.image_ref.clone()),
            reason,
            message: String::new(),
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
            mounts: r.config.mounts.clone(),
            log_path: r.log_path.to_string_lossy().into_owned(),
            resources: r
                .config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|linux| cri::ContainerResources {
                    linux: Some(linux),
                    windows: None,
                }),
            ..Default::default()
        })
    }

    /// Records of the containers a CRI filter selects by id (or unique
    /// prefix), pod sandbox id (or prefix) and labels.
    pub(super) fn containers_matching(
        &self,
        id: &str,
        pod_sandbox_id: &str,
        label_selector: &HashMap<String, String>,
    ) -> Vec<ContainerRecord> {
        super::select_entries(&self.inner.containers, id)
            .iter()
            .map(|e| e.get())
            .filter(|r| pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(pod_sandbox_id))
            .filter(|r| super::labels_match(&r.config.labels, label_selector))
            .collect()
    }

    /// ListContainers.
    pub fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, RuntimeError> {
        let filter = filter.unwrap_or_default();
        Ok(self
            .containers_matching(&filter.id, &filter.pod_sandbox_id, &filter.label_selector)
            .into_iter()
            .map(|r| cri::Container {
                id: r.id.clone(),
                pod_sandbox_id: r.sandbox_id.clone(),
                metadata: r.config.metadata.clone(),
                image: r.config.image.clone(),
                image_ref: r.image_ref.clone(),
                state: cri_state(self.state_of(&r)) as i32,
                created_at: r.created_at,
                labels: r.config.labels.clone(),
                annotations: r.config.annotations.clone(),
                ..Default::default()
            })
            .filter(|c| filter.state.as_ref().is_none_or(|f| f.state == c.state))
            .collect())
    }

    /// Rebuilds the container map from disk; removes half-made containers.
    pub(super) async fn load_containers(&self) {
        let dir = self.inner.config.root.join("containers");
        for id in list_dirs(&dir) {
            let record = read_json::<ContainerRecord>(&dir.join(&id).join("container.json"));
            let Some(record) = record.filter(|r| r.created) else {
                tracing::warn!(container.id = %id, "removing half-made container");
                let _ = self.inner.oci.delete(&id).await;
                self.remove_container_files(&id).await;
                continue;
            };
            if let Err(e) = self.reserve_name(&record.reserved_name(), &id) {
                tracing::warn!(container.id = %id, error = %e, "duplicate container name on disk");
            }
            if matches!(
                self.state_of(&record),
                ContainerState::Created | ContainerState::Running
            ) {
                // Adopted while alive: its exit must still wake waiters and
                // reach event subscribers.
                self.exit_receiver(&record);
            }
            self.inner
                .containers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, Entry::new(record));
        }
    }
}

fn cri_state(s: ContainerState) -> cri::ContainerState {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }
}

fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RuntimeError> {
    let lower = layers
        .iter()
        .map(|l| l.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| RuntimeError::Mount {
        op: "mounting overlay rootfs at",
        path: target.to_owned(),
        source,
    })
}

/// Starts the monitor and waits for its report: `(monitor pid, container pid)`.
async fn spawn_monitor(
    helper: &HelperExe,
    id: &str,
    spec: &MonitorSpec,
) -> Result<(i32, i32), RuntimeError> {
    let err = |message: String| RuntimeError::Create {
        container: id.to_owned(),
        message,
    };
    let spec_json = serde_json::to_string(spec).map_err(|e| err(e.to_string()))?;
    // `runc create` pulls nothing, but a loaded machine can make it slow.
    let (monitor_pid, line) = helper
        .spawn("monitor", MONITOR_ARG, &spec_json, Duration::from_secs(60))
        .await
        .map_err(|e| err(e.to_string()))?;
    let report = serde_json::from_str::<MonitorReport>(&line)
        .map_err(|e| err(format!("bad monitor report {line:?}: {e}")))?;
    match report {
        MonitorReport::Created { pid } => Ok((monitor_pid, pid)),
        MonitorReport::Failed { message } => Err(err(message)),
    }
}
