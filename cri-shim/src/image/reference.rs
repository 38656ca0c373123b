//! Image reference parsing and normalisation, as containerd and Docker do it.
//!
//! A normalised reference always names its registry and full repository
//! path: `busybox` is `docker.io/library/busybox:latest`. A reference carries
//! a tag or a digest, never both (a digest pins the content, so the tag is
//! dropped, as containerd's `ParseDockerRef` does).

use super::ImageError;

const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's legacy name, which means the same registry.
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
/// Upper bound of a repository name (domain and path), as in distribution/reference.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    /// `docker.io/library/busybox`.
    pub repository: String,
    /// Tag, absent when a digest is given.
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `reference`.
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let invalid = |reason| ImageError::InvalidReference {
            reference: reference.to_owned(),
            reason,
        };
        if reference.is_empty() {
            return Err(invalid("empty reference"));
        }
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                validate_digest(digest).map_err(invalid)?;
                (name, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a registry port.
        let last_component_start = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_component_start..].rfind(':') {
            Some(i) => {
                let split = last_component_start + i;
                (&name[..split], Some(&name[split + 1..]))
            }
            None => (name, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(invalid)?;
        }
        if name.is_empty() {
            return Err(invalid("missing repository name"));
        }
        if name.len() == 64 && is_lower_hex(name) {
            return Err(invalid(
                "a 64-character hexadecimal string is an image ID, not a name",
            ));
        }

        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first, rest.to_owned())
            }
            _ => (DEFAULT_DOMAIN, name.to_owned()),
        };
        let domain = if domain == LEGACY_DEFAULT_DOMAIN {
            DEFAULT_DOMAIN
        } else {
            domain
        };
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_REPO_PREFIX}{path}")
        } else {
            path
        };
        validate_domain(domain).map_err(invalid)?;
        validate_path(&path).map_err(invalid)?;
        let repository = format!("{domain}/{path}");
        if repository.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(invalid("repository name longer than 255 characters"));
        }

        let tag = match (&digest, tag) {
            (Some(_), _) => None,
            (None, Some(tag)) => Some(tag.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Self {
            repository,
            tag,
            digest,
        })
    }

    /// `repository@digest` of this repository with another digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.repository)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => write!(f, "{}@{digest}", self.repository),
            (None, Some(tag)) => write!(f, "{}:{tag}", self.repository),
            (None, None) => f.write_str(&self.repository),
        }
    }
}

/// Normalises a reference as containerd does: `busybox` ->
/// `docker.io/library/busybox:latest`, `foo/bar` -> `docker.io/foo/bar:latest`,
/// `localhost/pause` -> `localhost/pause:latest`, `repo@sha256:...` keeps the digest.
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    Reference::parse(reference).map(|r| r.to_string())
}

pub(crate) fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:<64 hex>` (or sha384/sha512 with their lengths).
pub(crate) fn validate_digest(digest: &str) -> Result<(), &'static str> {
    let (algorithm, hex) = digest.split_once(':').ok_or("digest lacks an algorithm")?;
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != len || !is_lower_hex(hex) {
        return Err("digest is not lowercase hex of the algorithm's length");
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), &'static str> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    match chars.next() {
        Some(c) if word(c) => {}
        _ => return Err("tag must start with a letter, digit or '_'"),
    }
    if tag.len() > 128 || !chars.all(|c| word(c) || c == '.' || c == '-') {
        return Err("tag may hold at most 128 letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// Host name components (letters, digits, inner '-') joined by '.', and an
/// optional numeric port.
fn validate_domain(domain: &str) -> Result<(), &'static str> {
    // `[v6 address]` with an optional port, as distribution/reference allows.
    if let Some(rest) = domain.strip_prefix('[') {
        let (address, port) = rest.split_once(']').ok_or("unterminated IPv6 address")?;
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 address");
        }
        return match port.strip_prefix(':') {
            None if port.is_empty() => Ok(()),
            Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
            _ => Err("registry port must be numeric"),
        };
    }
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("registry port must be numeric");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Err("invalid registry host name");
    }
    Ok(())
}

/// '/'-separated components of `[a-z0-9]+` joined by '.', '_', '__' or runs of '-'.
fn validate_path(path: &str) -> Result<(), &'static str> {
    const REASON: &str = "repository path components must be lowercase letters and digits \
                          separated by '.', '_', '__' or '-'";
    for component in path.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(REASON);
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let separator = &component[start..i];
            let dashes = separator.bytes().all(|b| b == b'-');
            if !(dashes || matches!(separator, "." | "_" | "__")) {
                return Err(REASON);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn normalizes_like_containerd() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("foo/bar", "docker.io/foo/bar:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
            ),
            ("localhost/pause", "localhost/pause:latest"),
            ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1"),
            ("[::1]:5000/busybox", "[::1]:5000/busybox:latest"),
            ("[fe80::1]/x:y", "[fe80::1]/x:y"),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            ("quay.io/a__b/c-d.e_f---g:x", "quay.io/a__b/c-d.e_f---g:x"),
        ] {
            assert_eq!(normalize_reference(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn digest_references_drop_the_tag() {
        assert_eq!(
            normalize_reference(&format!("busybox@{DIGEST}")).unwrap(),
            format!("docker.io/library/busybox@{DIGEST}")
        );
        assert_eq!(
            normalize_reference(&format!("busybox:1@{DIGEST}")).unwrap(),
            format!("docker.io/library/busybox@{DIGEST}")
        );
        let parsed = Reference::parse("localhost:5000/pause:3").unwrap();
        assert_eq!(parsed.repository, "localhost:5000/pause");
        assert_eq!(
            parsed.with_digest(DIGEST),
            format!("localhost:5000/pause@{DIGEST}")
        );
    }

    #[test]
    fn rejects_malformed_references() {
        for input in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
            "a//b",
            "a/-b",
            "a..b",
            "localhost:port/x",
            "[::1/x",
            "[not:v6]:5000/x",
            "[::1]:/x",
            &DIGEST["sha256:".len()..],
        ] {
            let err = normalize_reference(input).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidReference { .. }),
                "{input}: {err}"
            );
        }
    }
}
