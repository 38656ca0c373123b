//! The CRI v1 ImageService over the local [`ImageStore`].
//!
//! PullImage always asks the registry (as containerd does: a tag may have
//! moved), fetching only what the store lacks. Every store call that touches
//! the disk runs on the blocking pool.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1::image_service_server::ImageService as CriImageService;
use k8s_cri::v1::{
    FilesystemIdentifier, FilesystemUsage, Image as CriImage, ImageFsInfoRequest,
    ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use tonic::{Request, Response, Status};

use super::registry::RegistryError;
use super::{Image, ImageError, ImageStore, PullError, Puller, RegistryConfig};

/// The one mapping of store errors to gRPC status codes.
impl From<ImageError> for Status {
    fn from(err: ImageError) -> Self {
        let message = err.to_string();
        match err {
            ImageError::InvalidReference { .. } | ImageError::AmbiguousReference { .. } => {
                Status::invalid_argument(message)
            }
            ImageError::NotFound { .. } => Status::not_found(message),
            // What an imported layout can get wrong: the caller's input.
            ImageError::NotALayout { .. }
            | ImageError::NoImages { .. }
            | ImageError::NameForSeveralImages { .. }
            | ImageError::InvalidJson { .. }
            | ImageError::MissingBlob { .. }
            | ImageError::BlobTooLarge { .. }
            | ImageError::SizeMismatch { .. }
            | ImageError::DigestMismatch { .. }
            | ImageError::DiffIdMismatch { .. }
            | ImageError::UnsupportedDigest { .. }
            | ImageError::UnsupportedMediaType { .. }
            | ImageError::LayerCount { .. }
            | ImageError::ReadArchive { .. } => Status::failed_precondition(message),
            ImageError::Io { .. } | ImageError::Unpack { .. } | ImageError::LayerMissing { .. } => {
                Status::internal(message)
            }
        }
    }
}

/// The one mapping of pull errors to gRPC status codes: what containerd's
/// `errdefs.ToGRPC` gives (not found, invalid argument, else unknown).
impl From<&PullError> for Status {
    fn from(err: &PullError) -> Self {
        let message = err.to_string();
        if err.is_not_found() {
            Status::not_found(message)
        } else if err.is_invalid_argument() {
            Status::invalid_argument(message)
        } else {
            Status::unknown(message)
        }
    }
}

/// CRI ImageService backed by the store under `root`.
#[derive(Debug, Clone)]
pub struct ImageService {
    store: ImageStore,
    puller: Puller,
    root: PathBuf,
}

impl ImageService {
    /// `root` is the runtime root the store was opened on (`<root>/images`
    /// is reported as the image filesystem); `registries` says how to reach
    /// registries for pulls.
    pub fn new(
        store: ImageStore,
        root: impl Into<PathBuf>,
        registries: RegistryConfig,
    ) -> Result<Self, RegistryError> {
        Ok(Self {
            puller: Puller::new(store.clone(), registries)?,
            store,
            root: root.into(),
        })
    }

    /// Runs a blocking store call off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(ImageStore) -> Result<T, ImageError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| Status::internal(format!("image store task failed: {e}")))?
            .map_err(Status::from)
    }
}

/// The image reference of a request, which CRI requires.
fn requested_image(spec: Option<ImageSpec>) -> Result<String, Status> {
    match spec {
        Some(spec) if !spec.image.is_empty() => Ok(spec.image),
        _ => Err(Status::invalid_argument(
            "image spec with a non-empty image is required",
        )),
    }
}

/// CRI's view of an image. The config `User` becomes `uid` when its user
/// part is numeric, `username` otherwise, as containerd reports it.
pub(super) fn to_cri_image(image: &Image) -> CriImage {
    let user = image.config.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(value) => (Some(Int64Value { value }), String::new()),
        Err(_) => (None, user.to_owned()),
    };
    CriImage {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: image.id.clone(),
            ..ImageSpec::default()
        }),
        pinned: false,
    }
}

#[tonic::async_trait]
impl CriImageService for ImageService {
    #[tracing::instrument(skip_all)]
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|spec| spec.image)
            .filter(|image| !image.is_empty());
        let images = match filter {
            Some(reference) => self.store.get(&reference).into_iter().collect(),
            None => self.store.list(),
        };
        Ok(Response::new(ListImagesResponse {
            images: images.iter().map(to_cri_image).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let reference = requested_image(request.image)?;
        let Some(image) = self.store.get(&reference) else {
            // CRI: an absent image is an empty response, not an error.
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if request.verbose {
            let details = serde_json::json!({ "id": image.id, "imageConfig": image.config });
            info.insert("info".to_owned(), details.to_string());
        }
        Ok(Response::new(ImageStatusResponse {
            image: Some(to_cri_image(&image)),
            info,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        let reference = requested_image(request.image)?;
        let image = self
            .puller
            .pull(&reference, request.auth.as_ref())
            .await
            .map_err(|e| Status::from(e.as_ref()))?;
        Ok(Response::new(PullImageResponse {
            image_ref: image.id,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let reference = requested_image(request.into_inner().image)?;
        self.blocking(move |store| store.remove(&reference)).await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let usage = self.blocking(|store| store.usage()).await?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        let mountpoint = self.root.join("images").to_string_lossy().into_owned();
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp,
                fs_id: Some(FilesystemIdentifier { mountpoint }),
                used_bytes: Some(UInt64Value {
                    value: usage.used_bytes,
                }),
                inodes_used: Some(UInt64Value {
                    value: usage.inodes_used,
                }),
            }],
            container_filesystems: Vec::new(),
        }))
    }
}
