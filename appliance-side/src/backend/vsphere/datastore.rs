//! Image disks on the datastore: the first `docker run` of an image uploads its disk.
//!
//! The image's disk chain is read through and written as one **streamOptimized** VMDK (qemu-img;
//! the subformat vSphere's import paths take), which goes by HTTP PUT to the datastore's file
//! service (`/folder/<path>?dcPath=<datacenter>&dsName=<datastore>`, with the API session's
//! cookie) under a temporary name, and is renamed to `<image_dir>/<key>.vmdk` by the
//! FileManager once whole. A failed upload deletes the temporary file: the final name only
//! ever holds a whole disk. Uploads are one at a time, and each image key is looked for (HTTP
//! HEAD) at most once per appliance run once found.

use std::path::Path;
use std::process::Command;

use super::soap::SoapError;
use super::{api, VsphereBackend, VsphereError};

/// The chunks the VMDK is streamed in.
const CHUNK: usize = 1024 * 1024;

/// Writes the qcow2 disk at `disk` (with its backing chain) as a streamOptimized VMDK at `out`.
pub fn convert_to_vmdk(disk: &Path, out: &Path) -> Result<(), String> {
    convert_to_vmdk_as(disk, out, "streamOptimized")
}

/// Writes the qcow2 disk at `disk` as a VMDK of qemu-img's `subformat` at `out`
/// (`monolithicFlat`: a descriptor at `out` and its extent beside it, `NAME-flat.vmdk`).
pub fn convert_to_vmdk_as(disk: &Path, out: &Path, subformat: &str) -> Result<(), String> {
    let o = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "vmdk", "-o"])
        .arg(format!("subformat={subformat},adapter_type=lsilogic"))
        .arg(disk)
        .arg(out)
        .output()
        .map_err(|e| format!("qemu-img: {e} (run `make deps`)"))?;
    if !o.status.success() {
        let _ = std::fs::remove_file(out);
        return Err(format!(
            "qemu-img convert: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

impl VsphereBackend {
    /// The image key of a disk in the image store: its directory's name.
    pub fn image_key(image_disk: &Path) -> String {
        image_disk
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into())
    }

    /// The file service's URL of `rel` (a path on the datastore).
    fn file_url(&self, rel: &str) -> Result<reqwest::Url, VsphereError> {
        let mut url = reqwest::Url::parse(self.vim.soap.url())
            .map_err(|e| VsphereError::Setup(format!("the vSphere URL: {e}")))?;
        url.set_path(&format!("/folder/{rel}"));
        url.query_pairs_mut()
            .clear()
            .append_pair("dcPath", &self.datacenter)
            .append_pair("dsName", &self.cfg.datastore);
        Ok(url)
    }

    fn with_cookie(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.vim.soap.cookie() {
            Some(c) => req.header("Cookie", c),
            None => req,
        }
    }

    fn http_error(&self, what: &str, source: reqwest::Error) -> VsphereError {
        VsphereError::Api {
            what: what.into(),
            source: SoapError::Http {
                url: self.cfg.url.clone(),
                source,
            },
        }
    }

    /// Whether the datastore holds `rel`.
    pub(super) async fn file_exists(&self, rel: &str) -> Result<bool, VsphereError> {
        let what = format!("looking for [{}] {rel}", self.cfg.datastore);
        let resp = self
            .with_cookie(self.vim.soap.http().head(self.file_url(rel)?))
            .send()
            .await
            .map_err(|e| self.http_error(&what, e))?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(VsphereError::Setup(format!(
                "{what}: the datastore's file service answered HTTP {s}"
            ))),
        }
    }

    /// Makes sure the image's disk is on the datastore (uploading it if not); its datastore
    /// path. `scratch` is a local directory for the VMDK while it is uploaded.
    pub async fn ensure_image(
        &self,
        image_disk: &Path,
        scratch: &Path,
    ) -> Result<String, VsphereError> {
        let key = Self::image_key(image_disk);
        let rel = format!("{}/{key}.vmdk", self.cfg.image_dir);
        let mut known = self.uploaded.lock().await;
        if known.contains(&key) || self.file_exists(&rel).await? {
            known.insert(key);
            return Ok(self.ds_path(&rel));
        }
        // Named as on the datastore: the VMDK's descriptor names its extent by the file's name.
        let local = scratch.join(format!("{key}.vmdk"));
        let outcome = self.upload(image_disk, &local, &rel).await;
        let _ = std::fs::remove_file(&local);
        outcome?;
        tracing::info!(image = %key, path = %self.ds_path(&rel), "image disk uploaded to the datastore");
        known.insert(key);
        Ok(self.ds_path(&rel))
    }

    /// Converts the qcow2 `image_disk` (an image's or a volume's) to a VMDK at `local` and
    /// uploads it to `rel`, whole or not at all.
    pub(super) async fn upload(
        &self,
        image_disk: &Path,
        local: &Path,
        rel: &str,
    ) -> Result<(), VsphereError> {
        let (disk, out) = (image_disk.to_path_buf(), local.to_path_buf());
        tokio::task::spawn_blocking(move || convert_to_vmdk(&disk, &out))
            .await
            .map_err(|e| VsphereError::Setup(format!("converting the disk: {e}")))?
            .map_err(|e| {
                VsphereError::Setup(format!("converting {} to VMDK: {e}", image_disk.display()))
            })?;
        self.put_whole(local, rel, "disk").await
    }

    /// PUTs `local` to the datastore under a temporary name and renames it to `rel`, so that
    /// `rel` only ever names a whole file; on failure the temporary name goes (it may not
    /// exist). `what` names the file in errors.
    pub(super) async fn put_whole(
        &self,
        local: &Path,
        rel: &str,
        what: &str,
    ) -> Result<(), VsphereError> {
        let part = format!(
            "{rel}.part-{}",
            crate::store::atomic::hex(&crate::store::atomic::random::<6>())
        );
        let moved = match self.put(local, &part).await {
            Ok(()) => self
                .vim
                .move_file(
                    &self.datacenter_ref,
                    &self.ds_path(&part),
                    &self.ds_path(rel),
                )
                .await
                .map_err(api(format!("renaming the uploaded {what} to {rel}"))),
            Err(e) => Err(e),
        };
        if moved.is_err() {
            let _ = self
                .vim
                .delete_file(&self.datacenter_ref, &self.ds_path(&part))
                .await;
        }
        moved
    }

    /// PUTs the local file to the datastore at `rel`, streamed.
    pub(super) async fn put(&self, local: &Path, rel: &str) -> Result<(), VsphereError> {
        let what = format!("uploading the disk to [{}] {rel}", self.cfg.datastore);
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| VsphereError::Setup(format!("{}: {e}", local.display())))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| VsphereError::Setup(format!("{}: {e}", local.display())))?
            .len();
        let chunks = futures_util::stream::unfold(file, |mut f| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let resp = self
            .with_cookie(self.vim.soap.http().put(self.file_url(rel)?))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .map_err(|e| self.http_error(&what, e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(VsphereError::Setup(format!(
                "{what}: the datastore's file service answered HTTP {} (is the datastore there, and may the user allocate space on it?)",
                status.as_u16()
            )));
        }
        Ok(())
    }
}
