//! The blob store over `object_store`, chosen by `TERRACE_BLOB_URL`:
//! `file:///dir`, `memory://`, `gs://bucket/prefix` or `s3://bucket/prefix`.
//! Cloud credentials come from the environment as `object_store` reads them
//! (`GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`,
//! `AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT`, …, or the instance's
//! metadata service). Every call runs under the blob timeout, and the client's
//! own retries are bounded by it too.

use async_trait::async_trait;
use bytes::Bytes;
use object_store::ObjectStore;
use object_store::path::Path;
use std::sync::Arc;
use std::time::Duration;
use terrace_domain::BlobError;
use terrace_ports::{BlobStore, Image};

/// Images in an object store. The content type is recognised from the bytes
/// (PNG, JPEG, WebP, GIF), so it works on every backend alike.
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    timeout: Duration,
}

/// Why a blob URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BlobUrlError(pub String);

impl ObjectBlobStore {
    /// A store for `url`: `file:///dir` (created if missing), `memory://`.
    /// `timeout` bounds every call, the client's own retries (at most
    /// `max_retries`, cloud backends only) included.
    pub fn from_url(url: &str, timeout: Duration, max_retries: usize) -> Result<Self, BlobUrlError> {
        let parsed = url::Url::parse(url).map_err(|e| BlobUrlError(format!("{url:?} is not a URL: {e}")))?;
        match parsed.scheme() {
            "memory" => {
                Ok(Self::new(Arc::new(object_store::memory::InMemory::new()), Path::default(), timeout))
            }
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| BlobUrlError(format!("{url:?} must name an absolute directory")))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| BlobUrlError(format!("cannot create {}: {e}", dir.display())))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| BlobUrlError(format!("cannot use {}: {e}", dir.display())))?;
                Ok(Self::new(Arc::new(fs), Path::default(), timeout))
            }
            "gs" | "s3" => {
                let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                    BlobUrlError(format!("{url:?} must name a bucket: {}://bucket/prefix", parsed.scheme()))
                })?;
                let prefix = Path::from(parsed.path().trim_matches('/'));
                let retry = object_store::RetryConfig {
                    max_retries,
                    retry_timeout: timeout,
                    backoff: object_store::BackoffConfig::default(),
                };
                let client = object_store::ClientOptions::new()
                    .with_timeout(timeout)
                    .with_connect_timeout(timeout.min(Duration::from_secs(5)));
                let store: Arc<dyn ObjectStore> = if parsed.scheme() == "gs" {
                    Arc::new(
                        object_store::gcp::GoogleCloudStorageBuilder::from_env()
                            .with_bucket_name(bucket)
                            .with_retry(retry)
                            .with_client_options(client)
                            .build()
                            .map_err(|e| BlobUrlError(format!("cannot use {url:?}: {e}")))?,
                    )
                } else {
                    Arc::new(
                        object_store::aws::AmazonS3Builder::from_env()
                            .with_bucket_name(bucket)
                            .with_retry(retry)
                            .with_client_options(client)
                            .build()
                            .map_err(|e| BlobUrlError(format!("cannot use {url:?}: {e}")))?,
                    )
                };
                Ok(Self::new(store, prefix, timeout))
            }
            other => Err(BlobUrlError(format!(
                "unknown blob store scheme {other:?}; use file://, memory://, gs:// or s3://"
            ))),
        }
    }

    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, timeout: Duration) -> Self {
        Self { store, prefix, timeout }
    }

    fn path(&self, key: &str) -> Path {
        key.split('/').filter(|p| !p.is_empty()).fold(self.prefix.clone(), |p, part| p.child(part))
    }
}

fn classify(e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound,
        other => BlobError::Unavailable { detail: other.to_string() },
    }
}

/// The content type of an image, recognised from its first bytes.
pub fn sniff_content_type(bytes: &[u8]) -> &'static str {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xff, 0xd8, 0xff, ..] => "image/jpeg",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        _ => "application/octet-stream",
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(&self, key: &str, image: Image) -> Result<(), BlobError> {
        let path = self.path(key);
        let put = self.store.put(&path, image.bytes.into());
        match tokio::time::timeout(self.timeout, put).await {
            Ok(r) => r.map(|_| ()).map_err(classify),
            Err(_) => Err(BlobError::Timeout),
        }
    }

    async fn get(&self, key: &str) -> Result<Image, BlobError> {
        let path = self.path(key);
        let get = async {
            let bytes: Bytes = self.store.get(&path).await?.bytes().await?;
            Ok::<_, object_store::Error>(bytes)
        };
        let bytes = match tokio::time::timeout(self.timeout, get).await {
            Ok(r) => r.map_err(classify)?,
            Err(_) => return Err(BlobError::Timeout),
        };
        Ok(Image { content_type: sniff_content_type(&bytes).to_owned(), bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0];

    async fn round_trip(store: ObjectBlobStore) {
        let img = Image { bytes: Bytes::from_static(PNG), content_type: "image/png".into() };
        store.put("generations/x/areas/patio", img.clone()).await.unwrap();
        assert_eq!(store.get("generations/x/areas/patio").await.unwrap(), img);
        assert_eq!(store.get("generations/x/areas/pool_area").await, Err(BlobError::NotFound));
    }

    #[tokio::test]
    async fn memory_and_file_stores_round_trip() {
        round_trip(ObjectBlobStore::from_url("memory://", Duration::from_secs(5), 2).unwrap()).await;
        let dir = std::env::temp_dir().join(format!("terrace-blobs-{}", uuid::Uuid::new_v4()));
        let url = format!("file://{}", dir.display());
        round_trip(ObjectBlobStore::from_url(&url, Duration::from_secs(5), 2).unwrap()).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cloud_urls_build_a_store_under_their_prefix() {
        // Building makes no request; nothing here reaches the network.
        let s3 = ObjectBlobStore::from_url("s3://bucket/designs/prod", Duration::from_secs(1), 2).unwrap();
        assert_eq!(s3.path("generations/g/areas/patio").as_ref(), "designs/prod/generations/g/areas/patio");
        let gs = ObjectBlobStore::from_url("gs://bucket", Duration::from_secs(1), 2).unwrap();
        assert_eq!(gs.path("generations/g/source/satellite").as_ref(), "generations/g/source/satellite");
    }

    #[test]
    fn unknown_schemes_are_refused_by_name() {
        let e = ObjectBlobStore::from_url("ftp://x", Duration::from_secs(1), 2).unwrap_err();
        assert!(e.0.contains("ftp"));
        assert!(ObjectBlobStore::from_url("s3:///no-bucket", Duration::from_secs(1), 2).is_err());
        assert_eq!(sniff_content_type(&[0xff, 0xd8, 0xff, 0xe0]), "image/jpeg");
    }
}
