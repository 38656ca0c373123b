//! Seccomp for CRI security profiles: `Unconfined` (none), `Localhost` (an
//! OCI/Docker-format JSON profile on the host) and `RuntimeDefault`.
//!
//! cri-shim's default profile is a deny-list: everything is allowed except
//! the syscalls that reach beyond a container (kernel modules, kexec, the
//! clock, mounts and namespaces, tracing other processes, keyrings, ...),
//! which fail with EPERM. A syscall gated by a capability stays allowed when
//! the container holds that capability, so `CAP_SYS_ADMIN` still mounts.

use std::collections::HashSet;
use std::path::PathBuf;

use k8s_cri::v1 as cri;
use oci_spec::runtime::{Capability, LinuxSeccomp};

/// Errors choosing or loading a profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The localhost profile cannot be read.
    #[error("{field} {path}: {source}")]
    Read {
        /// The CRI field that named it.
        field: &'static str,
        /// Profile path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The localhost profile is not a seccomp profile.
    #[error("{field} {path}: not a seccomp profile: {source}")]
    Parse {
        /// The CRI field that named it.
        field: &'static str,
        /// Profile path.
        path: PathBuf,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The profile name is not one cri-shim knows.
    #[error("{field}: unknown seccomp profile {value:?}")]
    Unknown {
        /// The CRI field.
        field: &'static str,
        /// The value given.
        value: String,
    },
}

/// Syscalls the default profile denies, each with the capability that, when
/// held, allows it again (`None`: always denied).
const DENIED: &[(&str, Option<Capability>)] = &[
    ("acct", Some(Capability::SysPacct)),
    ("add_key", None),
    ("bpf", Some(Capability::SysAdmin)),
    ("clock_adjtime", Some(Capability::SysTime)),
    ("clock_settime", Some(Capability::SysTime)),
    ("create_module", Some(Capability::SysModule)),
    ("delete_module", Some(Capability::SysModule)),
    ("finit_module", Some(Capability::SysModule)),
    ("fsconfig", Some(Capability::SysAdmin)),
    ("fsmount", Some(Capability::SysAdmin)),
    ("fsopen", Some(Capability::SysAdmin)),
    ("fspick", Some(Capability::SysAdmin)),
    ("get_kernel_syms", None),
    ("init_module", Some(Capability::SysModule)),
    ("ioperm", Some(Capability::SysRawio)),
    ("iopl", Some(Capability::SysRawio)),
    ("kexec_file_load", Some(Capability::SysBoot)),
    ("kexec_load", Some(Capability::SysBoot)),
    ("keyctl", None),
    ("lookup_dcookie", Some(Capability::SysAdmin)),
    ("mount", Some(Capability::SysAdmin)),
    ("mount_setattr", Some(Capability::SysAdmin)),
    ("move_mount", Some(Capability::SysAdmin)),
    ("name_to_handle_at", Some(Capability::SysAdmin)),
    ("nfsservctl", None),
    ("open_by_handle_at", Some(Capability::DacReadSearch)),
    ("open_tree", Some(Capability::SysAdmin)),
    ("perf_event_open", Some(Capability::SysAdmin)),
    ("pivot_root", Some(Capability::SysAdmin)),
    ("process_vm_readv", Some(Capability::SysPtrace)),
    ("process_vm_writev", Some(Capability::SysPtrace)),
    ("ptrace", Some(Capability::SysPtrace)),
    ("query_module", None),
    ("quotactl", Some(Capability::SysAdmin)),
    ("reboot", Some(Capability::SysBoot)),
    ("request_key", None),
    ("setns", Some(Capability::SysAdmin)),
    ("settimeofday", Some(Capability::SysTime)),
    ("stime", Some(Capability::SysTime)),
    ("swapoff", Some(Capability::SysAdmin)),
    ("swapon", Some(Capability::SysAdmin)),
    ("syslog", Some(Capability::Syslog)),
    ("umount", Some(Capability::SysAdmin)),
    ("umount2", Some(Capability::SysAdmin)),
    ("unshare", Some(Capability::SysAdmin)),
    ("uselib", None),
    ("userfaultfd", None),
    ("ustat", None),
    ("vm86", None),
    ("vm86old", None),
];

/// The architectures a profile covers, so a 32-bit syscall entry point does
/// not slip past a deny-list written for the native one.
fn architectures() -> serde_json::Value {
    match std::env::consts::ARCH {
        "x86_64" => serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        "aarch64" => serde_json::json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        _ => serde_json::json!([]),
    }
}

/// The runtime's default profile for a container holding `caps`.
pub fn runtime_default(caps: &HashSet<Capability>) -> LinuxSeccomp {
    let names: Vec<&str> = DENIED
        .iter()
        .filter(|(_, cap)| cap.as_ref().is_none_or(|c| !caps.contains(c)))
        .map(|(name, _)| *name)
        .collect();
    let profile = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures(),
        "syscalls": [{ "names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM }],
    });
    // The JSON above is fixed apart from the names, all valid identifiers.
    serde_json::from_value(profile).expect("the default seccomp profile is well-formed")
}

fn localhost(field: &'static str, path: &str) -> Result<LinuxSeccomp, SeccompError> {
    let path = PathBuf::from(path);
    let data = std::fs::read(&path).map_err(|source| SeccompError::Read {
        field,
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&data).map_err(|source| SeccompError::Parse {
        field,
        path,
        source,
    })
}

/// The profile a container gets: from `seccomp` when set, else from the
/// deprecated `seccomp_profile_path`; none when unconfined or privileged.
pub fn profile_for(
    sc: &cri::LinuxContainerSecurityContext,
    caps: &HashSet<Capability>,
) -> Result<Option<LinuxSeccomp>, SeccompError> {
    if sc.privileged {
        return Ok(None);
    }
    if let Some(profile) = &sc.seccomp {
        return match cri::security_profile::ProfileType::try_from(profile.profile_type) {
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(None),
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
                Ok(Some(runtime_default(caps)))
            }
            Ok(cri::security_profile::ProfileType::Localhost) => localhost(
                "linux.security_context.seccomp.localhost_ref",
                &profile.localhost_ref,
            )
            .map(Some),
            Err(_) => Err(SeccompError::Unknown {
                field: "linux.security_context.seccomp.profile_type",
                value: profile.profile_type.to_string(),
            }),
        };
    }
    let field = "linux.security_context.seccomp_profile_path";
    // Deprecated in CRI, but kubelets before 1.22 send only this field.
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(None),
        "runtime/default" | "docker/default" => Ok(Some(runtime_default(caps))),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(field, path).map(Some),
            None => Err(SeccompError::Unknown {
                field,
                value: other.to_owned(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(profile: &LinuxSeccomp) -> Vec<String> {
        let json = serde_json::to_value(profile).unwrap();
        json["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn default_profile_denies_unless_the_capability_is_held() {
        let none = runtime_default(&HashSet::new());
        assert!(denied(&none).contains(&"mount".to_owned()));
        assert!(denied(&none).contains(&"keyctl".to_owned()));
        let admin = runtime_default(&HashSet::from([Capability::SysAdmin]));
        assert!(!denied(&admin).contains(&"mount".to_owned()));
        assert!(denied(&admin).contains(&"keyctl".to_owned()));
        let json = serde_json::to_value(&none).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(json["syscalls"][0]["errnoRet"], libc::EPERM);
    }

    #[allow(deprecated)]
    fn sc(seccomp: Option<cri::SecurityProfile>, path: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp,
            seccomp_profile_path: path.into(),
            ..Default::default()
        }
    }

    fn profile(
        kind: cri::security_profile::ProfileType,
        path: &str,
    ) -> Option<cri::SecurityProfile> {
        Some(cri::SecurityProfile {
            profile_type: kind as i32,
            localhost_ref: path.into(),
        })
    }

    #[test]
    fn profile_selection() {
        use cri::security_profile::ProfileType::*;
        let caps = HashSet::new();
        assert!(profile_for(&sc(None, ""), &caps).unwrap().is_none());
        assert!(
            profile_for(&sc(profile(Unconfined, ""), ""), &caps)
                .unwrap()
                .is_none()
        );
        assert!(
            profile_for(&sc(profile(RuntimeDefault, ""), ""), &caps)
                .unwrap()
                .is_some()
        );
        assert!(
            profile_for(&sc(None, "runtime/default"), &caps)
                .unwrap()
                .is_some()
        );
        let mut privileged = sc(profile(RuntimeDefault, ""), "");
        privileged.privileged = true;
        assert!(profile_for(&privileged, &caps).unwrap().is_none());
        let err = profile_for(&sc(None, "bogus"), &caps).unwrap_err();
        assert!(err.to_string().contains("seccomp_profile_path"), "{err}");
    }

    #[test]
    fn localhost_profiles_load_or_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deny-mkdir.json");
        std::fs::write(
            &file,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let caps = HashSet::new();
        use cri::security_profile::ProfileType::Localhost;
        let loaded =
            profile_for(&sc(profile(Localhost, file.to_str().unwrap()), ""), &caps).unwrap();
        assert_eq!(denied(&loaded.unwrap()), ["mkdir", "mkdirat"]);
        let legacy = format!("localhost/{}", file.display());
        assert!(profile_for(&sc(None, &legacy), &caps).unwrap().is_some());
        let err =
            profile_for(&sc(profile(Localhost, "/no/such/profile.json"), ""), &caps).unwrap_err();
        assert!(
            err.to_string()
                .contains("seccomp.localhost_ref /no/such/profile.json"),
            "{err}"
        );
        std::fs::write(&file, "not json").unwrap();
        let err =
            profile_for(&sc(profile(Localhost, file.to_str().unwrap()), ""), &caps).unwrap_err();
        assert!(matches!(err, SeccompError::Parse { .. }));
    }
}
