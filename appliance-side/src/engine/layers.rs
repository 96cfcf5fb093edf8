//! Image layers applied inside containerVMs: the half of a layer build that needs a VM. The
//! layer store (`store/images/layers.rs`) makes the layer's disk, a qcow2 overlay of the layer
//! below; the engine boots it as a VM's disk with a `hold` main session (as `docker cp` on a
//! stopped container does, `maintenance.rs`), streams the uncompressed layer into tether's
//! `ApplyLayer` built-in, and ends the session: tether syncs, remounts the root read-only and
//! powers off, so the overlay is consistent when the VM is gone. A layer that fails to apply,
//! or a VM that does not power itself off, is an error, and the store keeps nothing of it.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use guestinfo::spec::BUILTIN_HOLD_BUILD;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use wire::BuiltinOp;

use crate::engine::{Engine, EngineError};
use crate::store::images::LayerApplier;
use crate::store::records::Record;

/// The chunks the layer is streamed in.
const CHUNK: usize = 64 * 1024;

/// The engine as the layer store's [`LayerApplier`]. Called from a blocking thread of the
/// runtime (`docker load` runs in one); it drives the async VM work on `runtime`.
pub struct VmLayers {
    pub engine: Arc<Engine>,
    pub runtime: tokio::runtime::Handle,
}

impl LayerApplier for VmLayers {
    fn apply(&self, disk: &Path, tar: &Path, what: &str) -> Result<(), String> {
        self.runtime
            .block_on(self.engine.apply_layer(disk, tar, what))
            .map_err(|e| e.to_string())
    }
}

impl Engine {
    /// Whether layers can be applied here (a backend to boot VMs is configured).
    pub fn can_apply_layers(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| match b.can_boot() {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("image layers go to flattened disks: no VM can boot ({e})");
                false
            }
        })
    }

    /// Applies the layer tar `tar` to the filesystem on `disk` in a containerVM.
    pub async fn apply_layer(
        self: &Arc<Self>,
        disk: &Path,
        tar: &Path,
        what: &str,
    ) -> Result<(), EngineError> {
        let tag = crate::store::atomic::hex(&crate::store::atomic::random::<6>());
        // Never a listed container: not 64 hex digits.
        let rec = Record {
            id: format!("{tag}.layer"),
            name: format!("layer-{tag}"),
            secret: String::new(),
            created: String::new(),
            path: "hold".into(),
            args: vec!["hold".into()],
            env: Vec::new(),
            tty: false,
            open_stdin: false,
            image: String::new(),
            options: Default::default(),
            restart_count: 0,
        };
        let rec = self
            .boot_hold(
                rec,
                disk,
                disk.to_path_buf(),
                BUILTIN_HOLD_BUILD,
                Default::default(),
                "applying an image layer",
            )
            .await?;
        let applied = self.stream_layer(&rec, tar).await;
        let clean = self.end_hold(&rec.id).await;
        applied.map_err(|e| EngineError::Internal(format!("applying {what}: {e}")))?;
        if !clean {
            return Err(EngineError::Internal(format!(
                "applying {what}: the VM did not power off by itself, so its disk may be \
                 inconsistent"
            )));
        }
        Ok(())
    }

    /// Sends the tar to tether's `ApplyLayer` built-in and waits for its end.
    async fn stream_layer(&self, rec: &Record, tar: &Path) -> Result<(), String> {
        let mut file = tokio::fs::File::open(tar)
            .await
            .map_err(|e| format!("opening {}: {e}", tar.display()))?;
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let mut run = self
            .builtin(rec, BuiltinOp::ApplyLayer { path: "/".into() }, Some(rx))
            .await
            .map_err(|e| e.to_string())?;
        let feed = tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(format!("reading the layer: {e}")),
                }
            }
        });
        while run.stdout.recv().await.is_some() {}
        let end = run
            .end
            .await
            .map_err(|_| "the built-in's session was lost".to_string())?;
        if end.exit_code == 0 {
            feed.await.map_err(|e| e.to_string())??;
        } else {
            feed.abort();
        }
        if end.exit_code != 0 {
            let reason = end.stderr.trim();
            return Err(if reason.is_empty() {
                format!("tether's ApplyLayer exited {}", end.exit_code)
            } else {
                reason.to_string()
            });
        }
        Ok(())
    }
}

/// `docker system df`'s figures, in bytes on disk (the blocks each qcow2 takes), every layer
/// counted once however many images share it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Every layer's disk and every flattened image disk, once each.
    pub layers_size: u64,
    pub images: Vec<ImageUsage>,
    /// `(container id, bytes of its writable layer)`.
    pub containers: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUsage {
    pub image: crate::store::images::Image,
    /// Its whole chain (or its flattened disk).
    pub size: u64,
    /// The part of `size` in layers another image has too.
    pub shared_size: u64,
    /// Containers made from it.
    pub containers: usize,
}

impl Engine {
    /// What the images, their layers and the containers take on disk.
    pub fn disk_usage(&self) -> DiskUsage {
        use crate::engine::images::ImageUsers;
        use crate::store::images::allocated;
        use std::collections::HashMap;
        let layers = self.images.layers();
        let images = self.images.list();
        let mut users: HashMap<String, usize> = HashMap::new();
        for i in &images {
            for c in self.images.chain(i) {
                *users.entry(c).or_default() += 1;
            }
        }
        let layer_size = |c: &str| allocated(&layers.disk(c));
        let mut out = DiskUsage {
            layers_size: layers.list().iter().map(|l| layer_size(&l.chain_id)).sum(),
            ..Default::default()
        };
        for image in images {
            let chain = self.images.chain(&image);
            let (size, shared_size) = if chain.is_empty() {
                let own = allocated(&self.images.disk(&image));
                out.layers_size += own;
                (own, 0)
            } else {
                let size = chain.iter().map(|c| layer_size(c)).sum();
                let shared = chain
                    .iter()
                    .filter(|c| users.get(*c).copied().unwrap_or(0) > 1)
                    .map(|c| layer_size(c))
                    .sum();
                (size, shared)
            };
            out.images.push(ImageUsage {
                containers: self.containers_using(&image.id).len(),
                image,
                size,
                shared_size,
            });
        }
        out.containers = self
            .containers()
            .into_iter()
            .map(|r| {
                let size = allocated(&self.home().container(&r.id).join("disk.qcow2"));
                (r.id, size)
            })
            .collect();
        out
    }
}
