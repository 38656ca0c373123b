//! The plugin side of the CNI protocol, shared by every plugin binary: read
//! the `CNI_*` environment and the config on stdin, check the spec version,
//! run the command, and answer on stdout with a result or an error JSON
//! (`{"cniVersion","code","msg","details"}`) and a non-zero exit.
//!
//! What the reference `skel` package checks, this checks too, with the same
//! codes: missing variables (4), a bad container id or interface name (4),
//! undecodable config (6), a config without a valid `name` (7), a version
//! the plugin does not speak (1). Logs go to stderr only; stdout carries
//! exactly one JSON document.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::conf::is_valid_identifier;
use crate::result::CniResult;
use crate::version::{self, CURRENT_VERSION, SUPPORTED_VERSIONS};

/// Error codes of the CNI spec (section "Error").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the config's version is not one the plugin speaks.
    IncompatibleVersion,
    /// 2: a config field the plugin does not support.
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a `CNI_*` variable is missing or invalid.
    InvalidEnvironment,
    /// 5: reading stdin or another I/O failure.
    IoFailure,
    /// 6: the config or `prevResult` could not be decoded.
    Decode,
    /// 7: the network config is invalid.
    InvalidNetworkConfig,
    /// 8: the netns is invalid (the plugin's own, for instance).
    InvalidNetns,
    /// 11: a transient condition; the runtime should retry later.
    TryAgainLater,
    /// 999: anything else.
    Internal,
}

impl ErrorCode {
    /// The number on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnvironment => 4,
            Self::IoFailure => 5,
            Self::Decode => 6,
            Self::InvalidNetworkConfig => 7,
            Self::InvalidNetns => 8,
            Self::TryAgainLater => 11,
            Self::Internal => 999,
        }
    }
}

/// What a plugin reports when a command fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// Spec error code.
    pub code: ErrorCode,
    /// One-line message.
    pub msg: String,
    /// More context (the cause chain), possibly empty.
    pub details: String,
}

impl PluginError {
    /// An error with a message and no details.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// An error from a typed error: its display is the message, its
    /// sources the details.
    pub fn from_error(code: ErrorCode, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut details = Vec::new();
        let mut source = err.source();
        while let Some(cause) = source {
            details.push(cause.to_string());
            source = cause.source();
        }
        Self {
            code,
            msg: err.to_string(),
            details: details.join(": "),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error JSON of the spec.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut value = json!({
            "cniVersion": cni_version,
            "code": self.code.code(),
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            value["details"] = json!(self.details);
        }
        value
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}; {}", self.msg, self.details)
        }
    }
}

impl std::error::Error for PluginError {}

/// The command in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach the container.
    Add,
    /// Detach the container; must succeed when already detached.
    Del,
    /// Verify an attachment (spec 0.4.0 and later).
    Check,
    /// Release what no listed attachment uses (spec 1.1.0).
    Gc,
    /// Whether the plugin is ready for ADDs (spec 1.1.0).
    Status,
    /// Report supported versions.
    Version,
}

impl Command {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }

    /// The minimum config version that allows the command.
    fn min_version(self) -> Option<&'static str> {
        match self {
            Self::Check => Some("0.4.0"),
            Self::Gc | Self::Status => Some("1.1.0"),
            _ => None,
        }
    }
}

/// Everything a plugin gets for one invocation.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    /// The command.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for GC and STATUS).
    pub container_id: String,
    /// `CNI_NETNS`, a path; may be empty on DEL.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed into key/value pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split at `:`.
    pub path: Vec<PathBuf>,
    /// The config exactly as read from stdin (what delegated plugins get).
    pub stdin: Vec<u8>,
    /// The config, parsed; always a JSON object.
    pub config: Value,
    /// The config's `cniVersion`: the version to answer in.
    pub cni_version: String,
}

impl CmdArgs {
    /// The config's `name`.
    pub fn network_name(&self) -> &str {
        self.config["name"].as_str().unwrap_or_default()
    }

    /// A `CNI_ARGS` value.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Fails on `CNI_ARGS` keys the plugin does not know, unless
    /// `IgnoreUnknown` is set, as the reference `LoadArgs` does.
    pub fn check_known_args(&self, known: &[&str]) -> Result<(), PluginError> {
        let ignore = self
            .arg("IgnoreUnknown")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"));
        if ignore {
            return Ok(());
        }
        let unknown: Vec<&str> = self
            .args
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != "IgnoreUnknown" && !known.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(PluginError::new(
                ErrorCode::InvalidEnvironment,
                format!("ARGS: unknown args {unknown:?}"),
            ))
        }
    }

    /// The config's `prevResult`, if any.
    pub fn prev_result(&self) -> Result<Option<CniResult>, PluginError> {
        match self.config.get("prevResult") {
            None | Some(Value::Null) => Ok(None),
            Some(raw) => CniResult::from_value(raw.clone()).map(Some).map_err(|err| {
                PluginError::from_error(ErrorCode::Decode, &err)
                    .with_details(format!("could not parse prevResult: {err}"))
            }),
        }
    }

    /// `runtimeConfig.<key>`, if present.
    pub fn runtime_config(&self, key: &str) -> Option<&Value> {
        self.config
            .get("runtimeConfig")
            .and_then(|rc| rc.get(key))
            .filter(|v| !v.is_null())
    }
}

/// The commands a plugin implements. The defaults are what a plugin with
/// nothing to do answers.
pub trait Plugin {
    /// ADD: returns the result, which the skeleton writes in the config's version.
    fn add(&self, args: &CmdArgs) -> Result<CniResult, PluginError>;
    /// DEL.
    fn del(&self, args: &CmdArgs) -> Result<(), PluginError>;
    /// CHECK.
    fn check(&self, args: &CmdArgs) -> Result<(), PluginError>;
    /// GC, with the attachments that still exist in `cni.dev/valid-attachments`.
    fn gc(&self, _args: &CmdArgs) -> Result<(), PluginError> {
        Ok(())
    }
    /// STATUS.
    fn status(&self, _args: &CmdArgs) -> Result<(), PluginError> {
        Ok(())
    }
}

/// What one invocation produced; [`plugin_main`] turns it into output and
/// an exit code, tests inspect it directly.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success; the JSON to print, if any (ADD and VERSION print).
    Success(Option<Value>),
    /// Failure, with the version to write the error in.
    Failure(PluginError, String),
    /// No `CNI_COMMAND`: the text for stderr, exit 0 (reference behaviour).
    About(String),
}

impl Outcome {
    /// The stdout text and exit code.
    pub fn render(&self) -> (String, i32) {
        match self {
            Self::Success(Some(value)) => (pretty(value), 0),
            Self::Success(None) | Self::About(_) => (String::new(), 0),
            Self::Failure(err, version) => (pretty(&err.to_json(version)), 1),
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// The VERSION answer.
pub fn version_info() -> Value {
    json!({"cniVersion": CURRENT_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

/// Runs one invocation against an environment and stdin.
pub fn dispatch(
    plugin: &dyn Plugin,
    about: &str,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Outcome {
    let var = |name: &str| env(name).unwrap_or_default();
    let command_text = var("CNI_COMMAND");
    if command_text.is_empty() {
        return Outcome::About(format!(
            "{about}\nCNI protocol versions supported: {}",
            SUPPORTED_VERSIONS.join(", ")
        ));
    }
    let fail = |err: PluginError| Outcome::Failure(err, CURRENT_VERSION.to_owned());
    let Some(command) = Command::parse(&command_text) else {
        return fail(PluginError::new(
            ErrorCode::InvalidEnvironment,
            format!("unknown CNI_COMMAND: {command_text}"),
        ));
    };
    if command == Command::Version {
        return Outcome::Success(Some(version_info()));
    }
    let args = match read_args(command, &var, stdin) {
        Ok(args) => args,
        Err(err) => return fail(err),
    };
    let version = args.cni_version.clone();
    let outcome = match command {
        Command::Add => plugin.add(&args).and_then(|result| {
            result
                .to_value(&version)
                .map(Some)
                .map_err(|err| PluginError::from_error(ErrorCode::IncompatibleVersion, &err))
        }),
        Command::Del => plugin.del(&args).map(|()| None),
        Command::Check => plugin.check(&args).map(|()| None),
        Command::Gc => plugin.gc(&args).map(|()| None),
        Command::Status => plugin.status(&args).map(|()| None),
        Command::Version => unreachable!("answered above"),
    };
    match outcome {
        Ok(value) => Outcome::Success(value),
        Err(err) => Outcome::Failure(err, version),
    }
}

/// Reads and validates the environment and stdin for a non-VERSION command.
fn read_args(
    command: Command,
    var: &dyn Fn(&str) -> String,
    stdin: &mut dyn Read,
) -> Result<CmdArgs, PluginError> {
    let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
    let mut required = vec!["CNI_PATH"];
    if per_container {
        required.extend(["CNI_CONTAINERID", "CNI_IFNAME"]);
    }
    if matches!(command, Command::Add | Command::Check) {
        required.push("CNI_NETNS");
    }
    // Reported in the reference order.
    let order = [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
    ];
    let missing: Vec<&str> = order
        .into_iter()
        .filter(|name| required.contains(name) && var(name).is_empty())
        .collect();
    if !missing.is_empty() {
        return Err(PluginError::new(
            ErrorCode::InvalidEnvironment,
            format!("required env variables [{}] missing", missing.join(",")),
        ));
    }
    let container_id = var("CNI_CONTAINERID");
    let ifname = var("CNI_IFNAME");
    if per_container {
        if !is_valid_identifier(&container_id) {
            return Err(PluginError::new(
                ErrorCode::InvalidEnvironment,
                "invalid characters in containerID",
            )
            .with_details(container_id));
        }
        validate_ifname(&ifname)?;
    }
    let mut stdin_bytes = Vec::new();
    stdin.read_to_end(&mut stdin_bytes).map_err(|err| {
        PluginError::new(
            ErrorCode::IoFailure,
            format!("error reading from stdin: {err}"),
        )
    })?;
    let config: Value = serde_json::from_slice(&stdin_bytes).map_err(|err| {
        PluginError::new(
            ErrorCode::Decode,
            format!("error unmarshalling network config: {err}"),
        )
    })?;
    if !config.is_object() {
        return Err(PluginError::new(
            ErrorCode::Decode,
            "error unmarshalling network config: not a JSON object",
        ));
    }
    let name = match config.get("name") {
        None | Some(Value::Null) => "",
        Some(Value::String(name)) => name.as_str(),
        Some(_) => {
            return Err(PluginError::new(
                ErrorCode::Decode,
                "error unmarshalling network config: name is not a string",
            ));
        }
    };
    if name.is_empty() {
        return Err(PluginError::new(
            ErrorCode::InvalidNetworkConfig,
            "missing network name",
        ));
    }
    if !is_valid_identifier(name) {
        return Err(PluginError::new(
            ErrorCode::InvalidNetworkConfig,
            "invalid characters found in network name",
        )
        .with_details(name));
    }
    let cni_version = match config.get("cniVersion") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(v)) => v.clone(),
        Some(_) => {
            return Err(PluginError::new(
                ErrorCode::Decode,
                "error unmarshalling network config: cniVersion is not a string",
            ));
        }
    };
    if version::SpecVersion::parse(&cni_version).is_none() {
        return Err(PluginError::new(
            ErrorCode::Decode,
            format!("invalid version {cni_version:?}"),
        ));
    }
    if let Some(min) = command.min_version()
        && version::at_least(&cni_version, min) != Some(true)
    {
        return Err(PluginError::new(
            ErrorCode::IncompatibleVersion,
            format!("config version does not allow {}", command_name(command)),
        ));
    }
    if !version::is_supported(&cni_version) {
        return Err(
            PluginError::new(ErrorCode::IncompatibleVersion, "incompatible CNI versions")
                .with_details(format!(
                    "config is {cni_version:?}, plugin supports {SUPPORTED_VERSIONS:?}"
                )),
        );
    }
    let netns = var("CNI_NETNS");
    if matches!(command, Command::Add | Command::Del) && !netns.is_empty() && is_own_netns(&netns) {
        return Err(PluginError::new(
            ErrorCode::InvalidNetns,
            "plugin's netns and netns from CNI_NETNS should not be the same",
        ));
    }
    Ok(CmdArgs {
        command,
        container_id,
        netns,
        ifname,
        args: parse_cni_args(&var("CNI_ARGS"))?,
        path: std::env::split_paths(&var("CNI_PATH"))
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        stdin: stdin_bytes,
        config,
        cni_version,
    })
}

fn command_name(command: Command) -> &'static str {
    match command {
        Command::Add => "ADD",
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Gc => "GC",
        Command::Status => "STATUS",
        Command::Version => "VERSION",
    }
}

/// The kernel's rules for an interface name, as the reference checks them.
pub fn validate_ifname(name: &str) -> Result<(), PluginError> {
    let invalid = |msg: &str| Err(PluginError::new(ErrorCode::InvalidEnvironment, msg));
    if name.is_empty() {
        return invalid("interface name is empty");
    }
    if name.len() > 15 {
        return invalid("interface name is too long");
    }
    if name == "." || name == ".." {
        return invalid("interface name is . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return invalid("interface name contains / or : or whitespace characters");
    }
    Ok(())
}

/// `K=V;K2=V2`, as in `CNI_ARGS`.
pub fn parse_cni_args(text: &str) -> Result<Vec<(String, String)>, PluginError> {
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(PluginError::new(
                ErrorCode::InvalidEnvironment,
                format!("ARGS: invalid pair {pair:?}"),
            ));
        };
        if seen.insert(key.to_owned(), ()).is_none() {
            out.push((key.to_owned(), value.to_owned()));
        }
    }
    Ok(out)
}

/// Whether `path` is the netns this process runs in.
fn is_own_netns(path: &str) -> bool {
    let (Ok(own), Ok(theirs)) = (
        std::fs::metadata("/proc/self/ns/net"),
        std::fs::metadata(path),
    ) else {
        return false;
    };
    own.dev() == theirs.dev() && own.ino() == theirs.ino()
}

/// Sets up stderr logging (level from `CNI_LOG_LEVEL`, default `warn`).
pub fn init_logging() {
    let filter = std::env::var("CNI_LOG_LEVEL").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

/// The whole `main` of a plugin binary: runs the command from the process
/// environment and stdin, prints the answer, exits with its code.
pub fn plugin_main(plugin: &dyn Plugin, about: &str) -> ! {
    init_logging();
    let env = |name: &str| std::env::var(name).ok();
    let outcome = dispatch(plugin, about, &env, &mut std::io::stdin().lock());
    if let Outcome::About(text) = &outcome {
        eprintln!("{text}");
    }
    if let Outcome::Failure(err, _) = &outcome {
        tracing::error!(code = err.code.code(), "{err}");
    }
    let (text, code) = outcome.render();
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{Dns, Interface};
    use std::cell::RefCell;

    /// One recorded call: command, container id, CNI_ARGS.
    type Call = (Command, String, Vec<(String, String)>);

    /// Records what it was called with; ADD answers with one interface.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<Call>>,
        fail_with: Option<PluginError>,
    }

    impl Recorder {
        fn record(&self, args: &CmdArgs) -> Result<(), PluginError> {
            self.calls.borrow_mut().push((
                args.command,
                args.container_id.clone(),
                args.args.clone(),
            ));
            match &self.fail_with {
                Some(err) => Err(err.clone()),
                None => Ok(()),
            }
        }
    }

    impl Plugin for Recorder {
        fn add(&self, args: &CmdArgs) -> Result<CniResult, PluginError> {
            self.record(args)?;
            Ok(CniResult::new(
                vec![Interface {
                    name: args.ifname.clone(),
                    sandbox: Some(args.netns.clone()),
                    ..Interface::default()
                }],
                Vec::new(),
                Vec::new(),
                Dns::default(),
            ))
        }
        fn del(&self, args: &CmdArgs) -> Result<(), PluginError> {
            self.record(args)
        }
        fn check(&self, args: &CmdArgs) -> Result<(), PluginError> {
            self.record(args)
        }
        fn gc(&self, args: &CmdArgs) -> Result<(), PluginError> {
            self.record(args)
        }
    }

    fn run(plugin: &Recorder, env: &[(&str, &str)], stdin: &str) -> Outcome {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        dispatch(plugin, "test plugin", &lookup, &mut stdin.as_bytes())
    }

    const ADD_ENV: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/nonexistent-test"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
    ];

    fn failure_code(outcome: &Outcome) -> u32 {
        match outcome {
            Outcome::Failure(err, _) => err.code.code(),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn add_writes_result_in_config_version() {
        let plugin = Recorder::default();
        let outcome = run(&plugin, ADD_ENV, r#"{"cniVersion":"0.4.0","name":"net"}"#);
        let Outcome::Success(Some(value)) = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(value["cniVersion"], "0.4.0");
        assert_eq!(value["interfaces"][0]["name"], "eth0");
        let calls = plugin.calls.borrow();
        assert_eq!(calls[0].0, Command::Add);
        assert_eq!(calls[0].2[1], ("K8S_POD_NAME".into(), "web".into()));
        assert_eq!(outcome.render().1, 0);
    }

    #[test]
    fn version_needs_nothing_else() {
        let outcome = run(&Recorder::default(), &[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(outcome, Outcome::Success(Some(version_info())));
        let (text, code) = outcome.render();
        assert_eq!(code, 0);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["supportedVersions"], json!(SUPPORTED_VERSIONS));
    }

    #[test]
    fn missing_env_is_code_4_and_lists_the_variables() {
        let outcome = run(
            &Recorder::default(),
            &[("CNI_COMMAND", "ADD"), ("CNI_PATH", "/x")],
            "{}",
        );
        let Outcome::Failure(err, _) = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(err.code.code(), 4);
        assert_eq!(
            err.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
        );
        // DEL does not need CNI_NETNS.
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ];
        let plugin = Recorder::default();
        let outcome = run(&plugin, &env, r#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(outcome, Outcome::Success(None));
    }

    #[test]
    fn error_json_has_the_spec_fields() {
        let outcome = run(&Recorder::default(), ADD_ENV, "{not json");
        assert_eq!(failure_code(&outcome), 6);
        let (text, code) = outcome.render();
        assert_eq!(code, 1);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["code"], 6);
        assert_eq!(value["cniVersion"], CURRENT_VERSION);
        assert!(value["msg"].as_str().unwrap().contains("unmarshal"));
        let err = PluginError::new(ErrorCode::TryAgainLater, "busy").with_details("lock held");
        assert_eq!(
            err.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "busy", "details": "lock held"})
        );
    }

    #[test]
    fn config_checks_have_the_reference_codes() {
        let cases: &[(&str, u32)] = &[
            (r#"{"cniVersion":"1.0.0"}"#, 7),
            (r#"{"cniVersion":"1.0.0","name":"../x"}"#, 7),
            (r#"{"cniVersion":"9.9.9","name":"n"}"#, 1),
            (r#"{"cniVersion":"0.2.0","name":"n"}"#, 1),
            (r#"{"name":"n"}"#, 1),
            (r#"{"cniVersion":"x.y","name":"n"}"#, 6),
            (r#"[1,2]"#, 6),
        ];
        for (config, code) in cases {
            let outcome = run(&Recorder::default(), ADD_ENV, config);
            assert_eq!(failure_code(&outcome), *code, "{config}");
        }
    }

    #[test]
    fn bad_env_values_are_code_4() {
        let mut env = ADD_ENV.to_vec();
        env[1] = ("CNI_CONTAINERID", "bad/id");
        let config = r#"{"cniVersion":"1.0.0","name":"n"}"#;
        assert_eq!(failure_code(&run(&Recorder::default(), &env, config)), 4);
        let mut env = ADD_ENV.to_vec();
        env[3] = ("CNI_IFNAME", "a-very-long-interface-name");
        assert_eq!(failure_code(&run(&Recorder::default(), &env, config)), 4);
        let mut env = ADD_ENV.to_vec();
        env[0] = ("CNI_COMMAND", "FROB");
        assert_eq!(failure_code(&run(&Recorder::default(), &env, config)), 4);
        let mut env = ADD_ENV.to_vec();
        env[5] = ("CNI_ARGS", "novalue");
        assert_eq!(failure_code(&run(&Recorder::default(), &env, config)), 4);
    }

    #[test]
    fn check_and_gc_need_new_enough_configs() {
        let mut env = ADD_ENV.to_vec();
        env[0] = ("CNI_COMMAND", "CHECK");
        let old = r#"{"cniVersion":"0.3.1","name":"n"}"#;
        assert_eq!(failure_code(&run(&Recorder::default(), &env, old)), 1);
        let gc_env = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")];
        let v100 = r#"{"cniVersion":"1.0.0","name":"n"}"#;
        assert_eq!(failure_code(&run(&Recorder::default(), &gc_env, v100)), 1);
        let plugin = Recorder::default();
        let v110 = r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[]}"#;
        assert_eq!(run(&plugin, &gc_env, v110), Outcome::Success(None));
        assert_eq!(plugin.calls.borrow()[0].0, Command::Gc);
    }

    #[test]
    fn plugin_errors_keep_their_code_and_version() {
        let plugin = Recorder {
            fail_with: Some(PluginError::new(ErrorCode::InvalidNetworkConfig, "bad")),
            ..Recorder::default()
        };
        let outcome = run(&plugin, ADD_ENV, r#"{"cniVersion":"1.0.0","name":"n"}"#);
        let (text, _) = outcome.render();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad"})
        );
    }

    #[test]
    fn no_command_prints_about() {
        let outcome = run(&Recorder::default(), &[], "");
        let Outcome::About(text) = outcome else {
            panic!()
        };
        assert!(text.starts_with("test plugin\nCNI protocol versions supported: 0.3.0"));
    }

    #[test]
    fn cni_args_parsing_and_unknown_keys() {
        let args = parse_cni_args("IP=10.0.0.5;K8S_POD_NAME=a;;").unwrap();
        assert_eq!(args.len(), 2);
        let mut cmd = CmdArgs {
            command: Command::Add,
            container_id: "c".into(),
            netns: String::new(),
            ifname: "eth0".into(),
            args,
            path: Vec::new(),
            stdin: Vec::new(),
            config: json!({}),
            cni_version: "1.0.0".into(),
        };
        assert_eq!(cmd.arg("IP"), Some("10.0.0.5"));
        assert!(cmd.check_known_args(&["IP"]).is_err());
        cmd.args.push(("IgnoreUnknown".into(), "true".into()));
        assert!(cmd.check_known_args(&["IP"]).is_ok());
    }
}
