//! The blob cache, `$TETHER_HOME/images/blobs/sha256/<hex>` (0700 directories, 0600 files):
//! content-addressed, every blob in it verified. A blob is downloaded to a `.tmp-<pid>-<random>`
//! file beside its place and renamed in only once its size and digest are right; a failed or
//! abandoned download leaves nothing (the temporary file goes when the download's future is
//! dropped, and those of a crashed server are swept by the next pull).
//!
//! Pulls that want the same blob at once share one download: the first takes the digest's
//! in-flight lock, the others wait on it and then find the blob in the cache. If the first
//! failed, the next waiter tries again itself.
//!
//! The cache keeps a blob only while a pull holds it ([`BlobHolds`]), as dockerd keeps no
//! compressed layers: once a pull's image is built (its layers in the layer store, a
//! flattened disk, its config in the image's record) the blobs it fetched go, when the last
//! pull holding one lets go of it. [`BlobCache::collect`] removes any other blob (what a
//! server killed mid-pull left), never one a pull holds.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::error::Cause;
use crate::store::atomic::{hex, random};
use crate::store::images::work_is_live;

#[derive(Debug)]
pub(super) struct BlobCache {
    dir: PathBuf,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How many pulls hold each blob (by hex digest).
    held: Mutex<HashMap<String, usize>>,
}

/// One pull's hold on the blobs it fetches: they stay in the cache while it lives, and each
/// goes when its last holder is dropped.
#[derive(Debug)]
pub struct BlobHolds {
    cache: Arc<BlobCache>,
    hexes: Mutex<Vec<String>>,
}

impl BlobHolds {
    pub(super) fn new(cache: Arc<BlobCache>) -> Self {
        Self {
            cache,
            hexes: Mutex::new(Vec::new()),
        }
    }

    /// Holds blob `hex` (before it is looked up or downloaded), once per pull.
    pub(super) fn hold(&self, hex: &str) {
        let mut mine = self.hexes.lock().expect("holds lock");
        if mine.iter().any(|h| h == hex) {
            return;
        }
        *self
            .cache
            .held
            .lock()
            .expect("held lock")
            .entry(hex.to_string())
            .or_default() += 1;
        mine.push(hex.to_string());
    }
}

impl Drop for BlobHolds {
    fn drop(&mut self) {
        let mine = std::mem::take(self.hexes.get_mut().expect("holds lock"));
        let mut held = self.cache.held.lock().expect("held lock");
        for hex in mine {
            let Some(n) = held.get_mut(&hex) else {
                continue;
            };
            *n -= 1;
            if *n == 0 {
                held.remove(&hex);
                // Under the lock: a pull that wants it next holds it after this, and finds
                // it gone (downloading it again) rather than half-removed.
                let _ = std::fs::remove_file(self.cache.path(&hex));
            }
        }
    }
}

/// Removes a temporary file unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Cause {
    let path = path.to_path_buf();
    move |source| Cause::Io { what, path, source }
}

impl BlobCache {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            inflight: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Removes every blob no pull holds (and the temporary files of dead servers); returns
    /// how many blobs went.
    pub fn collect(&self) -> usize {
        let held = self.held.lock().expect("held lock");
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                if !work_is_live(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            } else if !held.contains_key(&name) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    pub fn path(&self, hex: &str) -> PathBuf {
        self.dir.join(hex)
    }

    /// The cached blob, if it is there whole.
    pub fn cached(&self, hex: &str, size: u64) -> Option<PathBuf> {
        let p = self.path(hex);
        std::fs::metadata(&p)
            .ok()
            .filter(|m| m.is_file() && m.len() == size)
            .map(|_| p)
    }

    /// Creates the cache's directories (0700) and sweeps what dead servers left.
    fn prepare(&self) -> Result<(), Cause> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io("creating", &self.dir))?;
        for d in [self.dir.as_path(), self.dir.parent().unwrap_or(&self.dir)] {
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
        }
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") && !work_is_live(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Blob `hex` of `size` bytes, and whether this call downloaded it: from the cache, or
    /// written by `fetch` into the temporary file it is given (which it must leave complete and
    /// verified), once however many ask at the same time. `waiting` runs if another pull is
    /// downloading it right now.
    pub async fn get<F, Fut>(
        &self,
        hex_digest: &str,
        size: u64,
        waiting: impl FnOnce(),
        fetch: F,
    ) -> Result<(PathBuf, bool), Cause>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), Cause>>,
    {
        if let Some(p) = self.cached(hex_digest, size) {
            return Ok((p, false));
        }
        let lock = self
            .inflight
            .lock()
            .expect("in-flight lock")
            .entry(hex_digest.to_string())
            .or_default()
            .clone();
        let guard = match lock.try_lock() {
            Ok(g) => g,
            Err(_) => {
                waiting();
                lock.lock().await
            }
        };
        let result = async {
            // Downloaded by the pull this one waited for.
            if let Some(p) = self.cached(hex_digest, size) {
                return Ok((p, false));
            }
            self.prepare()?;
            let tmp = self.dir.join(format!(
                ".tmp-{}-{}",
                std::process::id(),
                hex(&random::<6>())
            ));
            let mut guard = TempFile(Some(tmp.clone()));
            fetch(tmp.clone()).await?;
            let dest = self.path(hex_digest);
            std::fs::rename(&tmp, &dest).map_err(io("installing the blob at", &dest))?;
            guard.0 = None;
            Ok::<_, Cause>((dest, true))
        }
        .await;
        drop(guard);
        let mut map = self.inflight.lock().expect("in-flight lock");
        // Only the map and this call hold it: nobody waits, the entry can go.
        if Arc::strong_count(&lock) == 2 {
            map.remove(hex_digest);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_gets_of_one_blob_download_it_once() {
        let dir = std::env::temp_dir().join(format!("blobcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Arc::new(BlobCache::new(dir.join("sha256")));
        let downloads = Arc::new(AtomicUsize::new(0));
        let waited = Arc::new(AtomicUsize::new(0));
        let hex = "ab".repeat(32);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (cache, downloads, waited, hex) = (
                cache.clone(),
                downloads.clone(),
                waited.clone(),
                hex.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let w = waited.clone();
                cache
                    .get(
                        &hex,
                        5,
                        move || {
                            w.fetch_add(1, Ordering::SeqCst);
                        },
                        |tmp| async move {
                            downloads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            std::fs::write(&tmp, b"hello").unwrap();
                            Ok(())
                        },
                    )
                    .await
                    .unwrap()
            }));
            // All start while the first download runs.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut fresh = 0;
        for t in tasks {
            let (path, downloaded) = t.await.unwrap();
            assert_eq!(std::fs::read(path).unwrap(), b"hello");
            fresh += downloaded as usize;
        }
        assert_eq!(downloads.load(Ordering::SeqCst), 1);
        assert_eq!(fresh, 1);
        assert_eq!(waited.load(Ordering::SeqCst), 3);
        assert!(cache.inflight.lock().unwrap().is_empty());
        let mode = std::fs::metadata(dir.join("sha256"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failed_download_leaves_nothing_and_the_next_tries_again() {
        let dir = std::env::temp_dir().join(format!("blobcache-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = BlobCache::new(dir.join("sha256"));
        let hex = "cd".repeat(32);
        let err = cache
            .get(
                &hex,
                3,
                || {},
                |tmp| async move {
                    std::fs::write(&tmp, b"xy").unwrap();
                    Err(Cause::Registry("500 boom".into()))
                },
            )
            .await;
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(dir.join("sha256")).unwrap().count(), 0);
        let (_, downloaded) = cache
            .get(
                &hex,
                3,
                || {},
                |tmp| async move {
                    std::fs::write(&tmp, b"xyz").unwrap();
                    Ok(())
                },
            )
            .await
            .unwrap();
        assert!(downloaded);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
