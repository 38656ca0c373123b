//! The monitor role of the built `cri-shim-helper` executable, run as the
//! server runs it, over a stand-in OCI runtime: a shell script that starts
//! the "container" (a shell command from the bundle) in the background with
//! the monitor's pipes as its stdio, writes its pid file and exits, as
//! `runc create` does. No root needed: no namespaces, no cgroup.
//!
//! One test function runs the cases one after the other: they write and
//! execute scripts, and a fork in a parallel test could hold a script open
//! for writing (ETXTBSY).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cri_shim_helper::monitor::{ExitRecord, MonitorReport, MonitorSpec};

const FAKE_RUNTIME: &str = r#"#!/bin/sh
# <runtime> --root R --log L --log-format json create --bundle B --pid-file P ID
while [ $# -gt 1 ]; do
    case "$1" in
        --log) log=$2; shift ;;
        --bundle) bundle=$2; shift ;;
        --pid-file) pidfile=$2; shift ;;
    esac
    shift
done
if [ -f "$bundle/fail" ]; then
    echo '{"level":"error","msg":"container_linux.go: starting container: exec: \"nope\": not found"}' >> "$log"
    exit 1
fi
sh "$bundle/container.sh" &
echo $! > "$pidfile"
"#;

struct Case {
    dir: tempfile::TempDir,
    spec: MonitorSpec,
}

impl Case {
    fn new(script: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        std::fs::write(bundle.join("container.sh"), script).unwrap();
        let runtime = dir.path().join("runtime");
        std::fs::write(&runtime, FAKE_RUNTIME).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = MonitorSpec {
            id: "c0ffee".into(),
            bundle,
            runtime,
            runtime_root: dir.path().join("runc"),
            log_path: Some(dir.path().join("logs/c/0.log")),
            exit_file: dir.path().join("exit.json"),
            cgroup_path: None,
        };
        Case { dir, spec }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the monitor; returns its pid and its report.
    fn start(&self) -> (i32, MonitorReport) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cri-shim-helper"))
            .arg(cri_shim_helper::role::MONITOR_ARG)
            .arg(serde_json::to_string(&self.spec).unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid = child.id() as i32;
        // The monitor runs on after reporting; reap it in the background.
        std::thread::spawn(move || child.wait());
        (pid, serde_json::from_str(&line).unwrap())
    }

    fn wait_exit(&self) -> ExitRecord {
        wait_for(|| ExitRecord::read(&self.spec.exit_file))
    }

    fn log(&self, path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let ts = parts.next().unwrap();
                assert!(ts.ends_with('Z') && ts.contains('T'), "timestamp {ts:?}");
                let f = |p: Option<&str>| p.unwrap_or_default().to_owned();
                (f(parts.next()), f(parts.next()), f(parts.next()))
            })
            .collect()
    }
}

fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn record(stream: &str, tag: &str, content: &str) -> (String, String, String) {
    (stream.into(), tag.into(), content.into())
}

#[test]
fn monitor_role() {
    output_and_exit_code();
    long_lines_and_unterminated_tail();
    exit_record_follows_all_output();
    killed_by_a_signal();
    reopens_the_log_on_sigusr1();
    runtime_error_is_reported();
}

fn output_and_exit_code() {
    let case = Case::new("echo out1; echo err1 >&2; echo out2; exit 7\n");
    let (_, report) = case.start();
    assert!(matches!(report, MonitorReport::Created { pid } if pid > 0));
    let exit = case.wait_exit();
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (7, None, false)
    );
    let log = case.log(case.spec.log_path.as_ref().unwrap());
    let stdout: Vec<_> = log.iter().filter(|r| r.0 == "stdout").cloned().collect();
    assert_eq!(
        stdout,
        vec![record("stdout", "F", "out1"), record("stdout", "F", "out2")]
    );
    assert!(log.contains(&record("stderr", "F", "err1")), "{log:?}");
}

fn long_lines_and_unterminated_tail() {
    // 40000 bytes on one line: 16 KiB P, 16 KiB P, rest F; then a tail
    // without a newline.
    let case =
        Case::new("head -c 40000 /dev/zero | tr '\\0' x; echo; printf 'no newline'; exit 0\n");
    case.start();
    assert_eq!(case.wait_exit().exit_code, 0);
    let log = case.log(case.spec.log_path.as_ref().unwrap());
    let tags: Vec<(&str, usize)> = log.iter().map(|r| (r.1.as_str(), r.2.len())).collect();
    assert_eq!(
        tags,
        vec![
            ("P", 16384),
            ("P", 16384),
            ("F", 40000 - 2 * 16384),
            ("F", 10)
        ]
    );
    assert_eq!(log[3].2, "no newline");
}

fn exit_record_follows_all_output() {
    // 2000 numbered lines on both streams, then exit: when the exit record
    // is there, every line is in the log.
    let case = Case::new(
        "i=0; while [ $i -lt 2000 ]; do echo \"line $i\"; echo \"err $i\" >&2; i=$((i+1)); done; exit 3\n",
    );
    case.start();
    let exit = case.wait_exit();
    assert_eq!(exit.exit_code, 3);
    let log = case.log(case.spec.log_path.as_ref().unwrap());
    let out: Vec<&str> = log
        .iter()
        .filter(|r| r.0 == "stdout")
        .map(|r| r.2.as_str())
        .collect();
    let err = log.iter().filter(|r| r.0 == "stderr").count();
    assert_eq!(out.len(), 2000);
    assert_eq!(err, 2000);
    assert_eq!(out[1999], "line 1999");
}

fn killed_by_a_signal() {
    let case = Case::new("echo before; kill -9 $$\n");
    case.start();
    let exit = case.wait_exit();
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    let log = case.log(case.spec.log_path.as_ref().unwrap());
    assert_eq!(log, vec![record("stdout", "F", "before")]);
}

fn reopens_the_log_on_sigusr1() {
    let case = Case::new("echo one; while [ ! -f \"$0.go\" ]; do sleep 0.05; done; echo two\n");
    let go = case.spec.bundle.join("container.sh.go");
    let (monitor, _) = case.start();
    let log_path = case.spec.log_path.clone().unwrap();
    wait_for(|| (!case.log(&log_path).is_empty()).then_some(()));
    // What the kubelet's rotation does: rename, then ReopenContainerLog.
    let rotated = case.path("logs/c/0.log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    wait_for(|| log_path.exists().then_some(()));
    std::fs::write(&go, "").unwrap();
    assert_eq!(case.wait_exit().exit_code, 0);
    assert_eq!(case.log(&rotated), vec![record("stdout", "F", "one")]);
    assert_eq!(case.log(&log_path), vec![record("stdout", "F", "two")]);
}

fn runtime_error_is_reported() {
    let case = Case::new("exit 0\n");
    std::fs::write(case.spec.bundle.join("fail"), "").unwrap();
    let (_, report) = case.start();
    match report {
        MonitorReport::Failed { message } => {
            assert!(message.contains("not found"), "{message}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(ExitRecord::read(&case.spec.exit_file).is_none());
}
