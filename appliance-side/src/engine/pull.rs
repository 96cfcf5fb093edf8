//! `docker pull` and `docker login`: the registry fetches and verifies an image into a load's
//! work directory, and the image store checks and builds it as it does a `docker load`.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::images::ImageError;
use crate::engine::Engine;
use crate::registry::{Credentials, Local, PullError, PullEvent};
use crate::store::images::load::{LoadEvent, LoadWork};
use crate::store::images::reference::{parse_normalized, Reference};
use crate::store::images::{Image, ImageStore};

/// The reference `POST /images/create?fromImage=&tag=` names: `tag` is a tag or, as the CLI
/// sends a `name@sha256:…` reference, a digest; neither means `latest`.
pub fn pull_reference(from_image: &str, tag: &str) -> Result<Reference, ImageError> {
    let mut r = parse_normalized(from_image)?;
    if !tag.is_empty() {
        if tag.contains(':') {
            let r2 = parse_normalized(&format!("{}@{tag}", r.name()))?;
            r.tag = None;
            r.digest = r2.digest;
        } else {
            r = Reference { digest: None, ..r }.with_tag(tag)?;
        }
    }
    Ok(r.tag_name_only())
}

/// The image store as a pull sees it before downloading.
struct LocalStore<'a> {
    images: &'a ImageStore,
    work: &'a LoadWork,
    /// Images of several layers go to the layer store (a backend runs VMs); else only one-layer
    /// images do, and the others get flattened disks built from every layer's blob.
    layered: bool,
}

impl Local for LocalStore<'_> {
    fn has_image(&self, id: &str) -> bool {
        self.images.resolve(id).is_some()
    }

    fn known_layers(&self, blobs: &[String], diff_ids: &[String]) -> usize {
        if !self.layered && diff_ids.len() != 1 {
            return 0;
        }
        self.images
            .pin_known_layers(self.work, blobs, diff_ids)
            .unwrap_or_else(|e| {
                tracing::warn!("looking up the layers a pull has: {e}");
                0
            })
    }
}

impl Engine {
    /// Pulls `reference`, telling `events` how it goes, and returns the image, tagged with the
    /// reference's tag. An image the store has already is only (re)tagged.
    pub async fn image_pull(
        self: &Arc<Self>,
        reference: &Reference,
        creds: &Credentials,
        events: UnboundedSender<PullEvent>,
    ) -> Result<Image, ImageError> {
        let work = self.images.begin_load()?;
        let local = LocalStore {
            images: &self.images,
            work: &work,
            layered: self.can_apply_layers(),
        };
        let fetched = self
            .registries
            .fetch(reference, creds, &work.layout(), &local, &events)
            .await
            .map_err(ImageError::Pull)?;
        let shown = reference.familiar();
        let tag = reference.tag.is_some().then(|| reference.clone());
        let in_store = |e| ImageError::Pulled {
            image: shown.clone(),
            source: e,
        };
        let (image, newer) = if fetched.present {
            drop(work);
            let image = self
                .images
                .resolve(&fetched.config_digest)
                .ok_or_else(|| ImageError::NoSuchImage(fetched.config_digest.clone()))?;
            let retag = tag
                .as_ref()
                .is_some_and(|t| !image.tags.contains(&t.familiar()));
            if let Some(t) = tag.filter(|_| retag) {
                self.images.tag(&image.id, &t).map_err(in_store)?;
            }
            (image, retag)
        } else {
            let engine = self.clone();
            let ev = events.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                let r = engine.image_load_layout(&work, &mut |e| {
                    if let LoadEvent::Status { id, status } = e {
                        let _ = ev.send(PullEvent::Image { id, status });
                    }
                });
                drop(work);
                r
            })
            .await
            .map_err(|e| ImageError::Internal(format!("the image build panicked: {e}")))?
            .map_err(in_store)?;
            for id in &fetched.downloaded {
                let _ = events.send(PullEvent::Layer {
                    id: id.clone(),
                    status: "Pull complete",
                });
            }
            let image = loaded
                .into_iter()
                .next()
                .ok_or_else(|| ImageError::Internal("the pulled layout held no image".into()))?;
            (image, true)
        };
        // The digest reference docker records for every pull, by tag or by digest
        // (`RepoDigests`): the repository at the manifest digest the reference resolved to.
        let digested = Reference {
            tag: None,
            digest: Some(fetched.digest.clone()),
            ..reference.clone()
        };
        self.images
            .add_digest(&image.id, &digested)
            .map_err(in_store)?;
        let image = self.images.resolve(&image.id).unwrap_or(image);
        let _ = events.send(PullEvent::Status(format!("Digest: {}", fetched.digest)));
        let _ = events.send(PullEvent::Status(if newer {
            format!("Status: Downloaded newer image for {shown}")
        } else {
            format!("Status: Image is up to date for {shown}")
        }));
        Ok(image)
    }

    /// `docker login`: Ok once the registry at `server` accepted `creds`, with the identity
    /// token its token server gave (the CLI keeps it instead of the password).
    pub async fn registry_login(
        &self,
        server: &str,
        creds: &Credentials,
    ) -> Result<Option<String>, PullError> {
        let server = server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let server = server
            .strip_suffix("/v1")
            .or(server.strip_suffix("/v2"))
            .unwrap_or(server);
        let domain = match server {
            "" | "index.docker.io" | "registry-1.docker.io" => "docker.io",
            s => s,
        };
        self.registries.login(domain, creds).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_from_the_query() {
        let r = pull_reference("busybox", "").unwrap();
        assert_eq!(r.full(), "docker.io/library/busybox:latest");
        let r = pull_reference("127.0.0.1:5000/a/b", "v1").unwrap();
        assert_eq!(r.full(), "127.0.0.1:5000/a/b:v1");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = pull_reference("127.0.0.1:5000/x", &d).unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.digest.as_deref()),
            (None, Some(d.as_str()))
        );
        let r = pull_reference(&format!("x@{d}"), "").unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert!(pull_reference("UPPER", "").is_err());
        assert!(pull_reference("x", "bad tag").is_err());
    }
}
