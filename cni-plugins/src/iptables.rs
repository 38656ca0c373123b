//! iptables for the plugins, in batches: one `iptables-save` to read a
//! table, one `iptables-restore --noflush` to apply every change of an
//! invocation atomically (the reference plugins run `iptables` once per
//! rule check and once per rule change, through go-iptables).
//!
//! Only chains this invocation owns (per container) are ever declared in a
//! batch, since declaring a chain flushes it; shared chains are created
//! with `iptables -N` when missing and only appended to. Our plugins
//! serialize their read-modify-write on one lock file, and `-w` waits for
//! the xtables lock that every iptables user takes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::process::{Command, Stdio};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha512};

/// Lock file serializing our plugins' iptables updates.
pub const LOCK_PATH: &str = "/run/cni-plugins-iptables.lock";

/// A failed iptables operation.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The program could not be run.
    #[error("running {program}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The program failed.
    #[error("{program} failed: {stderr}")]
    Failed {
        /// The program.
        program: &'static str,
        /// What it printed on stderr (and the input, for restore).
        stderr: String,
    },
    /// The lock could not be taken.
    #[error("locking {LOCK_PATH}")]
    Lock(#[source] io::Error),
}

/// IPv4 or IPv6 tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &std::net::IpAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    fn program(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    fn save_program(self) -> &'static str {
        match self {
            Self::V4 => "iptables-save",
            Self::V6 => "ip6tables-save",
        }
    }

    fn restore_program(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }
}

/// One rule as iptables-save prints it: the chain and the text after
/// `-A <chain> `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRule {
    /// The chain holding it.
    pub chain: String,
    /// The rule specification.
    pub spec: String,
}

impl SavedRule {
    /// Whether the rule jumps to `target`.
    pub fn jumps_to(&self, target: &str) -> bool {
        self.spec.ends_with(&format!("-j {target}"))
            || self.spec.contains(&format!("-j {target} "))
            || self.spec.contains(&format!("-g {target}"))
    }
}

/// A table as iptables-save printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    /// Chain names, built-in ones included.
    pub chains: Vec<String>,
    /// Rules in order.
    pub rules: Vec<SavedRule>,
}

impl TableState {
    /// Parses the output of `iptables-save -t <table>`.
    pub fn parse(text: &str) -> Self {
        let mut state = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(':') {
                if let Some(name) = rest.split_whitespace().next() {
                    state.chains.push(name.to_owned());
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                state.rules.push(SavedRule {
                    chain: chain.to_owned(),
                    spec: spec.to_owned(),
                });
            }
        }
        state
    }

    /// Whether the chain exists.
    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c == name)
    }

    /// Whether this exact rule exists.
    pub fn has_rule(&self, chain: &str, spec: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.chain == chain && r.spec == spec)
    }

    /// Rules of `chain` that jump to `target`.
    pub fn jumps(&self, chain: &str, target: &str) -> Vec<&SavedRule> {
        self.rules
            .iter()
            .filter(|r| r.chain == chain && r.jumps_to(target))
            .collect()
    }

    /// Rules of any chain that jump to `target`.
    pub fn all_jumps(&self, target: &str) -> Vec<&SavedRule> {
        self.rules.iter().filter(|r| r.jumps_to(target)).collect()
    }
}

/// Renders one argument as iptables-save does: quoted when it holds
/// whitespace or quotes.
pub fn quote(arg: &str) -> String {
    if arg.is_empty()
        || arg
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        format!("\"{}\"", arg.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        arg.to_owned()
    }
}

/// Renders a rule given as arguments.
pub fn rule(args: &[&str]) -> String {
    args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// Changes to one table, applied together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    lines: Vec<String>,
}

impl Batch {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Creates a chain, or flushes it if it exists. Only for chains this
    /// invocation owns.
    pub fn declare_chain(&mut self, chain: &str) {
        self.lines.push(format!(":{chain} - [0:0]"));
    }

    /// Appends a rule.
    pub fn append(&mut self, chain: &str, spec: &str) {
        self.lines.push(format!("-A {chain} {spec}"));
    }

    /// Inserts a rule first in the chain.
    pub fn insert_first(&mut self, chain: &str, spec: &str) {
        self.lines.push(format!("-I {chain} 1 {spec}"));
    }

    /// Deletes a rule (as saved).
    pub fn delete(&mut self, chain: &str, spec: &str) {
        self.lines.push(format!("-D {chain} {spec}"));
    }

    /// Flushes a chain.
    pub fn flush(&mut self, chain: &str) {
        self.lines.push(format!("-F {chain}"));
    }

    /// Deletes an (empty, unreferenced) chain.
    pub fn delete_chain(&mut self, chain: &str) {
        self.lines.push(format!("-X {chain}"));
    }

    /// The iptables-restore input for `table`.
    pub fn render(&self, table: &str) -> String {
        let mut text = format!("*{table}\n");
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        text
    }
}

/// Runs iptables programs for one family.
#[derive(Debug, Clone, Copy)]
pub struct Iptables {
    family: Family,
}

/// Held while an invocation reads and changes tables.
#[derive(Debug)]
pub struct IptablesLock(#[allow(dead_code)] Flock<File>);

/// Takes the lock serializing our plugins' updates.
pub fn lock() -> Result<IptablesLock, IptablesError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .map_err(IptablesError::Lock)?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map(IptablesLock)
        .map_err(|(_, errno)| IptablesError::Lock(errno.into()))
}

fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, IptablesError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| IptablesError::Spawn { program, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| IptablesError::Spawn { program, source })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| IptablesError::Spawn { program, source })?;
    if !output.status.success() {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if let Some(input) = stdin {
            stderr.push_str("\ninput:\n");
            stderr.push_str(input);
        }
        return Err(IptablesError::Failed { program, stderr });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Iptables {
    /// The tables of `family`.
    pub fn new(family: Family) -> Self {
        Self { family }
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Whether the program is there and the nat table usable (the
    /// reference skips a family that is not, on DEL).
    pub fn usable(&self) -> bool {
        self.save("nat").is_ok()
    }

    /// Reads `table`.
    pub fn save(&self, table: &str) -> Result<TableState, IptablesError> {
        run(self.family.save_program(), &["-t", table], None).map(|text| TableState::parse(&text))
    }

    /// Creates a shared chain unless it exists (never flushes it).
    pub fn ensure_chain(
        &self,
        state: &TableState,
        table: &str,
        chain: &str,
    ) -> Result<(), IptablesError> {
        if state.has_chain(chain) {
            return Ok(());
        }
        match run(
            self.family.program(),
            &["-w", "-t", table, "-N", chain],
            None,
        ) {
            Err(IptablesError::Failed { stderr, .. }) if stderr.contains("exists") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Applies a batch to `table`, atomically.
    pub fn apply(&self, table: &str, batch: &Batch) -> Result<(), IptablesError> {
        if batch.is_empty() {
            return Ok(());
        }
        run(
            self.family.restore_program(),
            &["-w", "--noflush"],
            Some(&batch.render(table)),
        )
        .map(|_| ())
    }

    /// Whether a rule exists, asked of iptables itself (`-C`).
    pub fn check(&self, table: &str, chain: &str, args: &[&str]) -> bool {
        let mut full = vec!["-w", "-t", table, "-C", chain];
        full.extend_from_slice(args);
        run(self.family.program(), &full, None).is_ok()
    }
}

/// The reference's chain names: `prefix` then the hex SHA-512 of
/// `name + id`, cut to 28 characters (`CNI-` + 24 for a container's masq
/// chain, `CNI-DN-` + 21 for portmap's).
pub fn chain_name(prefix: &str, network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let mut name = format!("{prefix}{}", hex::encode(digest));
    name.truncate(28);
    name
}

/// The reference's rule comment for a container: `name: "N" id: "ID"`.
pub fn comment(network: &str, container_id: &str) -> String {
    format!("name: \"{network}\" id: \"{container_id}\"")
}

/// Comments are cut to iptables' 255-character limit as the reference does.
pub fn trim_comment(text: &str) -> String {
    if text.len() <= 255 {
        text.to_owned()
    } else {
        format!("{}...", &text[..253])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_match_the_reference() {
        // Observed from the reference bridge and portmap plugins for
        // network "cnit-ref" and container "refabc".
        assert_eq!(
            chain_name("CNI-", "cnit-ref", "refabc"),
            "CNI-15440f88a71c1407accc4e82"
        );
        assert_eq!(
            chain_name("CNI-DN-", "cnit-ref", "refabc"),
            "CNI-DN-15440f88a71c1407accc4"
        );
        assert_eq!(chain_name("CNI-", "n", "x").len(), 28);
    }

    #[test]
    fn quoting_matches_iptables_save() {
        let spec = rule(&[
            "-d",
            "10.240.99.0/24",
            "-m",
            "comment",
            "--comment",
            &comment("cnit-ref", "refabc"),
            "-j",
            "ACCEPT",
        ]);
        assert_eq!(
            spec,
            r#"-d 10.240.99.0/24 -m comment --comment "name: \"cnit-ref\" id: \"refabc\"" -j ACCEPT"#
        );
        assert_eq!(quote("plain"), "plain");
        let long = "x".repeat(300);
        assert_eq!(trim_comment(&long).len(), 256);
    }

    #[test]
    fn parses_saved_tables() {
        let text = r#"# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-DN-15440f88a71c1407accc4 - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"cnit-ref\" id: \"refabc\"" -m multiport --dports 18080 -j CNI-DN-15440f88a71c1407accc4
-A CNI-DN-15440f88a71c1407accc4 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.240.99.2:80
COMMIT
"#;
        let state = TableState::parse(text);
        assert!(state.has_chain("CNI-HOSTPORT-DNAT"));
        assert!(!state.has_chain("CNI-HOSTPORT-MASQ"));
        assert!(state.has_rule(
            "PREROUTING",
            "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"
        ));
        assert_eq!(
            state
                .jumps("CNI-HOSTPORT-DNAT", "CNI-DN-15440f88a71c1407accc4")
                .len(),
            1
        );
        assert_eq!(state.all_jumps("CNI-HOSTPORT-DNAT").len(), 1);
        let mut batch = Batch::default();
        batch.declare_chain("CNI-X");
        batch.append("CNI-X", "-j ACCEPT");
        batch.delete("POSTROUTING", "-j CNI-X");
        batch.delete_chain("CNI-X");
        assert_eq!(
            batch.render("nat"),
            "*nat\n:CNI-X - [0:0]\n-A CNI-X -j ACCEPT\n-D POSTROUTING -j CNI-X\n-X CNI-X\nCOMMIT\n"
        );
    }
}
