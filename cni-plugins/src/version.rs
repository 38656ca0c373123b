//! CNI spec versions: which ones our plugins speak, and how versions compare.
//!
//! Versions are `major.minor.patch` strings; an absent `cniVersion` means
//! 0.1.0, as in libcni. A plugin accepts a config only when its version is
//! one of [`SUPPORTED_VERSIONS`] exactly, as the reference `skel` does.

use std::cmp::Ordering;

/// The newest spec version, the one results are built in.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Spec versions our plugins accept and answer in. 0.3.x share the 0.4.0
/// result shape; 0.1/0.2 (one address per family) are not offered.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A parsed `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecVersion(pub u32, pub u32, pub u32);

impl SpecVersion {
    /// Parses a version string; `""` is 0.1.0 (spec: no version = 0.1.0).
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() {
            return Some(Self(0, 1, 0));
        }
        let mut parts = text.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self(major, minor, patch))
    }
}

/// `a >= b`; `None` if either does not parse.
pub fn at_least(a: &str, b: &str) -> Option<bool> {
    Some(SpecVersion::parse(a)?.cmp(&SpecVersion::parse(b)?) != Ordering::Less)
}

/// Whether our plugins accept a config of this version.
pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_compares() {
        assert_eq!(SpecVersion::parse("1.1.0"), Some(SpecVersion(1, 1, 0)));
        assert_eq!(SpecVersion::parse(""), Some(SpecVersion(0, 1, 0)));
        assert_eq!(SpecVersion::parse("0.4"), Some(SpecVersion(0, 4, 0)));
        assert_eq!(SpecVersion::parse("1.x.0"), None);
        assert_eq!(SpecVersion::parse("1.0.0.0"), None);
        assert_eq!(at_least("1.0.0", "0.4.0"), Some(true));
        assert_eq!(at_least("0.3.1", "0.4.0"), Some(false));
        assert_eq!(at_least("1.1.0", "1.1.0"), Some(true));
        assert_eq!(at_least("nope", "1.1.0"), None);
        assert!(is_supported("0.4.0") && is_supported("1.1.0"));
        assert!(!is_supported("0.2.0") && !is_supported("1.2.0"));
    }
}
