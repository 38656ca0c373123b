//! Reads an OCI image layout (a directory, or a tar archive of one) and
//! resolves it to the image manifests to import for this host's platform.
//!
//! Everything read from a layout is verified against its digest and size
//! before it is trusted. A tar archive is first extracted into a staging
//! directory inside the store, so that its blobs can later be moved into the
//! store by rename rather than copied.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, Descriptor, ImageIndex, MediaType, Os};
use sha2::{Digest as _, Sha256};

use super::ImageError;

/// Upper bound for JSON documents (index, manifest, config) read into memory;
/// real ones are a few KiB, so anything larger is not an image.
const MAX_JSON_SIZE: u64 = 8 << 20;
/// Nested indexes deeper than this are refused rather than followed.
const MAX_INDEX_DEPTH: usize = 4;

pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// An image layout on disk.
#[derive(Debug)]
pub(crate) struct Layout {
    /// The layout root (holds `index.json` and `blobs/`).
    pub dir: PathBuf,
    /// True when `dir` is a private staging copy whose blobs may be moved away.
    pub staged: bool,
}

/// One image manifest found in a layout, with the annotations of the
/// top-level `index.json` entry that led to it (where image names live).
#[derive(Debug, Clone)]
pub(crate) struct ManifestEntry {
    pub descriptor: Descriptor,
    pub annotations: HashMap<String, String>,
}

impl Layout {
    /// Opens `source`: a layout directory as is, or a tar archive (plain or
    /// gzip-compressed) extracted into `staging`.
    pub fn open(source: &Path, staging: &Path) -> Result<Self, ImageError> {
        let meta = fs::metadata(source).map_err(io_err("reading", source))?;
        if meta.is_dir() {
            return Ok(Self {
                dir: source.to_path_buf(),
                staged: false,
            });
        }
        extract_archive(source, staging)?;
        Ok(Self {
            dir: staging.to_path_buf(),
            staged: true,
        })
    }

    /// Path of a blob inside the layout. Only sha256 is accepted: the store
    /// is addressed by sha256, and other algorithms are not in use.
    pub fn blob_path(&self, descriptor: &Descriptor) -> Result<PathBuf, ImageError> {
        let hex = sha256_hex(descriptor)?;
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    /// Reads and verifies a small JSON blob.
    pub fn read_json_blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>, ImageError> {
        let digest = descriptor.digest().to_string();
        if descriptor.size() > MAX_JSON_SIZE {
            return Err(ImageError::BlobTooLarge {
                digest,
                size: descriptor.size(),
            });
        }
        let path = self.blob_path(descriptor)?;
        let data = fs::read(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ImageError::MissingBlob {
                digest: digest.clone(),
                path: path.clone(),
            },
            _ => ImageError::Io {
                op: "reading",
                path: path.clone(),
                source,
            },
        })?;
        verify(
            descriptor,
            data.len() as u64,
            &hex::encode(Sha256::digest(&data)),
        )?;
        Ok(data)
    }

    /// The image manifests to import: the entries of `index.json` that are
    /// image manifests for this platform (or carry no platform), and for each
    /// nested index, its manifest for this platform.
    pub fn manifests(&self) -> Result<Vec<ManifestEntry>, ImageError> {
        let path = self.dir.join("index.json");
        let file = File::open(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ImageError::NotALayout {
                path: self.dir.clone(),
            },
            _ => ImageError::Io {
                op: "opening",
                path: path.clone(),
                source,
            },
        })?;
        let index: ImageIndex = serde_json::from_reader(BufReader::new(file.take(MAX_JSON_SIZE)))
            .map_err(|source| ImageError::InvalidJson {
            what: "index.json".into(),
            path,
            source,
        })?;

        let mut found = Vec::new();
        for descriptor in index.manifests() {
            let annotations = descriptor.annotations().clone().unwrap_or_default();
            if let Some(descriptor) = self.resolve_for_host(descriptor, 0)? {
                found.push(ManifestEntry {
                    descriptor,
                    annotations,
                });
            }
        }
        Ok(found)
    }

    /// Follows `descriptor` down to an image manifest for this host, if any.
    fn resolve_for_host(
        &self,
        descriptor: &Descriptor,
        depth: usize,
    ) -> Result<Option<Descriptor>, ImageError> {
        if !platform_matches(descriptor) {
            return Ok(None);
        }
        match descriptor.media_type() {
            MediaType::ImageManifest => Ok(Some(descriptor.clone())),
            MediaType::Other(t) if t == DOCKER_MANIFEST => Ok(Some(descriptor.clone())),
            media_type if is_index(media_type) => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(ImageError::UnsupportedMediaType {
                        digest: descriptor.digest().to_string(),
                        media_type: "image index nested too deeply".into(),
                    });
                }
                let data = self.read_json_blob(descriptor)?;
                let nested: ImageIndex =
                    serde_json::from_slice(&data).map_err(|source| ImageError::InvalidJson {
                        what: format!("image index {}", descriptor.digest()),
                        path: self.dir.clone(),
                        source,
                    })?;
                for child in nested.manifests() {
                    if let Some(found) = self.resolve_for_host(child, depth + 1)? {
                        return Ok(Some(found));
                    }
                }
                Ok(None)
            }
            // Attestations, signatures and other artifacts are not images.
            _ => Ok(None),
        }
    }
}

fn is_index(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(t) => t == DOCKER_MANIFEST_LIST,
        _ => false,
    }
}

/// A descriptor without a platform is taken to fit, as containerd does for
/// single-image layouts; a platform must name linux and this architecture.
pub(crate) fn platform_matches(descriptor: &Descriptor) -> bool {
    descriptor
        .platform()
        .as_ref()
        .is_none_or(|p| *p.os() == Os::Linux && *p.architecture() == Arch::default())
}

/// The hex part of a sha256 descriptor digest.
pub(crate) fn sha256_hex(descriptor: &Descriptor) -> Result<&str, ImageError> {
    descriptor
        .as_digest_sha256()
        .ok_or_else(|| ImageError::UnsupportedDigest {
            digest: descriptor.digest().to_string(),
        })
}

/// Checks what was read against the descriptor.
pub(crate) fn verify(descriptor: &Descriptor, size: u64, hex: &str) -> Result<(), ImageError> {
    let digest = descriptor.digest().to_string();
    if size != descriptor.size() {
        return Err(ImageError::SizeMismatch {
            digest,
            expected: descriptor.size(),
            actual: size,
        });
    }
    if Some(hex) != descriptor.as_digest_sha256() {
        return Err(ImageError::DigestMismatch {
            digest,
            actual: format!("sha256:{hex}"),
        });
    }
    Ok(())
}

/// A reader that hashes what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream (so the hash covers all of it) and
    /// returns the byte count and the hex digest.
    pub fn finish(mut self) -> io::Result<(u64, String)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.count, hex::encode(self.hasher.finalize())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    move |source| ImageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Extracts the layout files of an archive into `staging`: `oci-layout`,
/// `index.json` and `blobs/<algorithm>/<hex>`. Anything else (Docker's
/// `manifest.json`, `repositories`) is skipped, and since only those exact
/// shapes are written, no entry can land outside `staging`.
fn extract_archive(archive_path: &Path, staging: &Path) -> Result<(), ImageError> {
    let archive_err = |source| ImageError::ReadArchive {
        path: archive_path.to_path_buf(),
        source,
    };
    let mut file =
        BufReader::new(File::open(archive_path).map_err(io_err("opening", archive_path))?);
    let gzipped = {
        use io::BufRead;
        let head = file.fill_buf().map_err(archive_err)?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    fs::create_dir_all(staging).map_err(io_err("creating", staging))?;
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw = entry
            .path()
            .map_err(archive_err)?
            .to_string_lossy()
            .into_owned();
        let Some(rel) = layout_file(&raw) else {
            continue;
        };
        let dest = staging.join(&rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        let mut out = File::create(&dest).map_err(io_err("creating", &dest))?;
        io::copy(&mut entry, &mut out).map_err(|source| match source.kind() {
            // A failed read is the archive's fault (truncated); a failed write is ours.
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => archive_err(source),
            _ => ImageError::Io {
                op: "writing",
                path: dest.clone(),
                source,
            },
        })?;
        out.flush().map_err(io_err("writing", &dest))?;
    }
    Ok(())
}

/// The staging path of an archive member, if it is a layout file.
fn layout_file(raw: &str) -> Option<String> {
    let path = raw.trim_start_matches("./").trim_start_matches('/');
    if path == "index.json" || path == "oci-layout" {
        return Some(path.to_owned());
    }
    let mut parts = path.split('/');
    let (Some("blobs"), Some(algorithm), Some(encoded), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        && !algorithm.starts_with('.');
    let encoded_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b));
    (algorithm_ok && encoded_ok).then(|| format!("blobs/{algorithm}/{encoded}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_layout_files_are_extracted() {
        assert_eq!(layout_file("./index.json").as_deref(), Some("index.json"));
        assert_eq!(layout_file("oci-layout").as_deref(), Some("oci-layout"));
        assert_eq!(
            layout_file("blobs/sha256/abc").as_deref(),
            Some("blobs/sha256/abc")
        );
        assert_eq!(layout_file("manifest.json"), None);
        assert_eq!(layout_file("blobs/sha256/../../x"), None);
        assert_eq!(layout_file("blobs/../x/y"), None);
        assert_eq!(layout_file("blobs/sha256/a/b"), None);
        assert_eq!(layout_file("blobs/sha256/"), None);
    }
}
