//! Images as the docker API asks for them: look-ups that fail as docker's do, the list with its
//! filters, tagging, and removal with docker's rules (untag first; delete when no tag is left;
//! refuse while a container uses the image). Which containers use an image is asked through
//! [`ImageUsers`], so the rules are tested without containers and the lifecycle decides what
//! "uses" means.

use std::sync::Arc;

use thiserror::Error;

use crate::engine::layers::VmLayers;
use crate::engine::Engine;
use crate::store::images::load::{LoadEvent, LoadWork};
use crate::store::images::reference::{
    glob_match, parse_any, parse_normalized, AnyReference, BadPattern, Reference, ReferenceError,
};
use crate::store::images::{Image, ImageStore, LayerApplier, StoreError};
use crate::store::records;
use crate::store::state::ContainerStatus;

/// Who uses an image: the containers whose disks are layered on it.
pub trait ImageUsers {
    /// `(container id, running)` for every container made from `image_id` (`sha256:...`).
    fn containers_using(&self, image_id: &str) -> Vec<(String, bool)>;
}

/// The containers whose record names the image id; running as their state says.
impl ImageUsers for Engine {
    fn containers_using(&self, image_id: &str) -> Vec<(String, bool)> {
        records::list(self.home())
            .into_iter()
            .filter(|r| r.options.image_id == image_id || r.image == image_id)
            .map(|r| {
                let running = self.state(&r.id).status == ContainerStatus::Running;
                (r.id, running)
            })
            .collect()
    }
}

/// Why an image request fails; the API maps each to docker's status code.
#[derive(Debug, Error)]
pub enum ImageError {
    /// 404.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// 400: the reference (or tag) is malformed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// 400.
    #[error("{0}")]
    InvalidParameter(String),
    /// 409: docker's `conflict: unable to ...` texts.
    #[error("{0}")]
    Conflict(String),
    /// 400 for a bad archive, 500 for the rest.
    #[error(transparent)]
    Store(StoreError),
    /// A pull that failed before the store had the image; the status is the cause's.
    #[error(transparent)]
    Pull(crate::registry::PullError),
    /// A pulled image the store would not take.
    #[error("{image}: {source}")]
    Pulled {
        image: String,
        #[source]
        source: StoreError,
    },
    /// 500: a bug, said as one.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ImageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchImage(id) => Self::NoSuchImage(id),
            e => Self::Store(e),
        }
    }
}

impl From<BadPattern> for ImageError {
    fn from(e: BadPattern) -> Self {
        Self::InvalidParameter(e.to_string())
    }
}

/// What `docker images` filters on (`--all` and `--filter`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFilter {
    pub all: bool,
    /// Globs over `name:tag` and `name`, docker's familiar forms; any may match.
    pub reference: Vec<String>,
    /// `Some(true)`: untagged only; `Some(false)`: tagged only.
    pub dangling: Option<bool>,
    /// `key` or `key=value`; all must match.
    pub label: Vec<String>,
    /// Images created before (or since) these images.
    pub before: Vec<String>,
    pub since: Vec<String>,
}

/// One row of the list: the image and the tags and digest references to show (those the
/// reference filter kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub image: Image,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
}

/// One line of `docker rmi`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    Untagged(String),
    Deleted(String),
}

/// The text docker puts after "No such image: " for a reference it cannot find.
fn not_found(reference: &str) -> ImageError {
    let shown = match parse_any(reference) {
        Ok(AnyReference::Named(r)) => r.tag_name_only().familiar(),
        _ => reference.to_string(),
    };
    ImageError::NoSuchImage(shown)
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// The image a reference names, or docker's 400 (malformed) or 404.
pub fn lookup(store: &ImageStore, reference: &str) -> Result<Image, ImageError> {
    if let Err(e) = parse_any(reference) {
        // A hex prefix is never malformed; anything else that is no reference is.
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(e.into());
        }
    }
    store.resolve(reference).ok_or_else(|| not_found(reference))
}

/// Time of an RFC 3339 string, for `before`/`since`.
fn unix_nanos(rfc3339: &str) -> i128 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp_nanos())
}

impl Engine {
    /// The image a reference names, or docker's 400 (malformed) or 404.
    pub fn image(&self, reference: &str) -> Result<Image, ImageError> {
        lookup(&self.images, reference)
    }

    /// The images `filter` selects, newest first.
    pub fn image_list(&self, filter: &ImageFilter) -> Result<Vec<ImageSummary>, ImageError> {
        let bound = |refs: &[String]| -> Result<Vec<i128>, ImageError> {
            refs.iter()
                .map(|r| self.image(r).map(|i| unix_nanos(&i.created)))
                .collect()
        };
        let before = bound(&filter.before)?.into_iter().min();
        let since = bound(&filter.since)?.into_iter().max();
        let mut out = Vec::new();
        for image in self.images.list() {
            let created = unix_nanos(&image.created);
            if before.is_some_and(|b| created >= b) || since.is_some_and(|s| created <= s) {
                continue;
            }
            let labels_match = filter.label.iter().all(|kv| match kv.split_once('=') {
                Some((k, v)) => image.config.labels.get(k).is_some_and(|have| have == v),
                None => image.config.labels.contains_key(kv),
            });
            if !labels_match {
                continue;
            }
            let shown = |refs: &[String]| -> Result<Vec<String>, ImageError> {
                let mut out = Vec::new();
                for r in refs {
                    if filter.reference.is_empty() || reference_matches(&filter.reference, r)? {
                        out.push(r.clone());
                    }
                }
                Ok(out)
            };
            let repo_tags = shown(&image.tags)?;
            let repo_digests = shown(&image.digests)?;
            // dockerd's rules: an image with no reference left after the reference filter is
            // listed only without that filter and without dangling=false; dangling=true keeps
            // the images without tags (digest references do not count).
            let keep = if repo_tags.is_empty() && repo_digests.is_empty() {
                filter.reference.is_empty() && filter.dangling != Some(false)
            } else {
                filter.dangling != Some(true) || repo_tags.is_empty()
            };
            if keep {
                out.push(ImageSummary {
                    image,
                    repo_tags,
                    repo_digests,
                });
            }
        }
        Ok(out)
    }

    /// `docker tag`: gives the image `source` names the tag `repo:tag` (`latest` when `tag` is
    /// empty), taking it from any image that had it.
    pub fn image_tag(&self, source: &str, repo: &str, tag: &str) -> Result<Reference, ImageError> {
        let r = parse_normalized(repo)?;
        if r.digest.is_some() {
            return Err(ImageError::InvalidParameter(
                "cannot tag digested reference".into(),
            ));
        }
        let r = if tag.is_empty() {
            r.tag_name_only()
        } else {
            r.with_tag(tag)?
        };
        if r.familiar_name() == "sha256" {
            return Err(ImageError::InvalidParameter(
                "refusing to create an ambiguous tag using digest algorithm as name".into(),
            ));
        }
        let image = self.image(source)?;
        self.images.tag(&image.id, &r)?;
        Ok(r)
    }

    /// At the server's start: the disks of removed images no container uses any more, the
    /// layers no image needs, and the cached blobs no pull holds go (what a crash between an
    /// rmi and its collection, or in a pull, left).
    pub fn sweep_images(&self) -> Result<(), ImageError> {
        self.images
            .prune_removed(&|img| !self.containers_using(img).is_empty())?;
        self.registries.collect_blobs();
        Ok(())
    }

    /// `docker rmi` with the users this engine knows; it also collects the cached blobs no
    /// pull holds.
    pub fn image_remove(&self, reference: &str, force: bool) -> Result<Vec<Removed>, ImageError> {
        let removed = remove(&self.images, self, reference, force);
        self.registries.collect_blobs();
        removed
    }

    /// `docker load` of the archive in `work` (see [`crate::store::images::ImageStore::load`]).
    /// With a backend, layers go to the layer store, those above the bottom one applied in
    /// containerVMs (`layers.rs`); without one (unit tests, an engine that runs no VMs) each
    /// image gets a flattened disk. Runs on a blocking thread of the runtime.
    pub fn image_load(
        self: &Arc<Self>,
        work: &LoadWork,
        events: &mut dyn FnMut(LoadEvent),
    ) -> Result<Vec<Image>, ImageError> {
        Ok(self.with_layer_applier(|a| self.images.load(work, events, a))?)
    }

    /// A pulled image layout in `work` built as [`Engine::image_load`] builds a loaded one.
    pub fn image_load_layout(
        self: &Arc<Self>,
        work: &LoadWork,
        events: &mut dyn FnMut(LoadEvent),
    ) -> Result<Vec<Image>, StoreError> {
        self.with_layer_applier(|a| self.images.load_layout(work, events, a))
    }

    /// Runs a store load with the layer applier this engine has: its VMs, or none.
    fn with_layer_applier<T>(
        self: &Arc<Self>,
        load: impl FnOnce(Option<&dyn LayerApplier>) -> T,
    ) -> T {
        let vm = self.layer_applier();
        load(vm.as_ref().map(|v| v as &dyn LayerApplier))
    }

    /// The VMs that apply layers, when this engine runs VMs (and is inside its runtime).
    fn layer_applier(self: &Arc<Self>) -> Option<VmLayers> {
        match (
            self.can_apply_layers(),
            tokio::runtime::Handle::try_current(),
        ) {
            (true, Ok(runtime)) => Some(VmLayers {
                engine: self.clone(),
                runtime,
            }),
            _ => None,
        }
    }
}

fn reference_matches(patterns: &[String], tag: &str) -> Result<bool, ImageError> {
    let name = parse_normalized(tag).map_or_else(|_| tag.to_string(), |r| r.familiar_name());
    for p in patterns {
        if glob_match(p, tag)? || glob_match(p, &name)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The image's references, tags and digest references, in docker's order (lexical, by
/// their familiar form).
fn references(image: &Image) -> Vec<Reference> {
    let mut refs: Vec<(String, Reference)> = image
        .tags
        .iter()
        .chain(&image.digests)
        .filter_map(|r| parse_normalized(r).ok().map(|p| (r.clone(), p)))
        .collect();
    refs.sort_by(|a, b| a.0.cmp(&b.0));
    refs.into_iter().map(|(_, r)| r).collect()
}

/// dockerd's `isSingleReference`: the references are of one repository and hold at most one
/// tag (false for none).
fn is_single_reference(refs: &[Reference]) -> bool {
    if refs.len() <= 1 {
        return refs.len() == 1;
    }
    let mut tags = refs.iter().filter(|r| r.digest.is_none());
    let single = tags.next();
    if tags.next().is_some() {
        return false;
    }
    let digest_repos: std::collections::BTreeSet<String> = refs
        .iter()
        .filter(|r| r.digest.is_some())
        .map(Reference::name)
        .collect();
    let name = single.unwrap_or(&refs[0]).name();
    digest_repos.len() == 1 && digest_repos.contains(&name)
}

/// docker's image delete (daemon/images/image_delete.go), for images without parents:
/// * by reference (a tag or a digest reference): refused without `force` if it is the image's
///   only reference (one tag and its repository's digests count as one) and a container uses
///   the image; else it goes, with the digest references of its repository when a tag went
///   and no other tag of that repository is left, and the image too once no reference is
///   left (unless a running container uses it, when it stays, unreferenced);
/// * by id: refused without `force` if the image has references in several repositories or
///   several tags; else, refused if a running container (always) or a stopped one (without
///   `force`) uses it; else every reference goes and the image is deleted.
///
/// An image deleted while stopped containers still use it keeps its disk (their disks are
/// layered on it) until none does.
pub fn remove(
    store: &ImageStore,
    users: &dyn ImageUsers,
    reference: &str,
    force: bool,
) -> Result<Vec<Removed>, ImageError> {
    let image = lookup(store, reference)?;
    let id = image.id.clone();
    let using = users.containers_using(&id);
    let refs = references(&image);
    let mut records = Vec::new();
    let hex = id.strip_prefix("sha256:").unwrap_or(&id);
    let by_id = id.starts_with(reference) || hex.starts_with(reference);
    if !by_id {
        if !force && is_single_reference(&refs) {
            if let Some((cid, _)) = using.first() {
                return Err(ImageError::Conflict(format!(
                    "conflict: unable to remove repository reference {reference:?} (must force) \
                     - container {} is using its referenced image {}",
                    short(cid),
                    short(&id)
                )));
            }
        }
        let r = parse_normalized(reference)?.tag_name_only().favor_digest();
        if !store.untag(&id, &r)? {
            return Err(not_found(reference));
        }
        records.push(Removed::Untagged(r.familiar()));
        let mut left: Vec<Reference> = refs.into_iter().filter(|x| *x != r).collect();
        let tag_of_repo_left = left
            .iter()
            .any(|x| x.digest.is_none() && x.name() == r.name());
        if r.digest.is_none() && !tag_of_repo_left {
            for d in left
                .iter()
                .filter(|x| x.digest.is_some() && x.name() == r.name())
            {
                store.untag(&id, d)?;
                records.push(Removed::Untagged(d.familiar()));
            }
            left.retain(|x| x.digest.is_none() || x.name() != r.name());
        }
        if !left.is_empty() {
            return Ok(records);
        }
        // The last reference went: delete the image, unless a running container holds it,
        // which docker answers with the untag alone.
        if using.iter().any(|(_, running)| *running) {
            return Ok(records);
        }
    } else {
        if !force && refs.len() > 1 && !is_single_reference(&refs) {
            return Err(ImageError::Conflict(format!(
                "conflict: unable to delete {} (must be forced) - image is referenced in multiple \
                 repositories",
                short(&id)
            )));
        }
        if let Some((cid, _)) = using.iter().find(|(_, running)| *running) {
            return Err(ImageError::Conflict(format!(
                "conflict: unable to delete {} (cannot be forced) - image is being used by \
                 running container {}",
                short(&id),
                short(cid)
            )));
        }
        if !force {
            if let Some((cid, _)) = using.first() {
                return Err(ImageError::Conflict(format!(
                    "conflict: unable to delete {} (must be forced) - image is being used by \
                     stopped container {}",
                    short(&id),
                    short(cid)
                )));
            }
        }
        records.extend(refs.iter().map(|r| Removed::Untagged(r.familiar())));
    }
    store.delete(&id, !using.is_empty())?;
    records.push(Removed::Deleted(id));
    store.prune_removed(&|img| !users.containers_using(img).is_empty())?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::Home;

    /// Containers given by hand: `(container id, running)` per image id.
    struct Users(Vec<(String, String, bool)>);

    impl ImageUsers for Users {
        fn containers_using(&self, image_id: &str) -> Vec<(String, bool)> {
            self.0
                .iter()
                .filter(|(_, img, _)| img == image_id)
                .map(|(c, _, r)| (c.clone(), *r))
                .collect()
        }
    }

    const HEX: &str = "1234567890ab000000000000000000000000000000000000000000000000000f";
    const CID: &str = "c0ffee000000000000000000000000000000000000000000000000000000000a";

    fn store(tag: &str, tags: &[&str]) -> (ImageStore, String, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("img-rm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = ImageStore::new(Home::at(&dir));
        let id = s.insert_for_tests(HEX, tags, "2024-01-01T00:00:00Z");
        (s, id, dir)
    }

    fn msg(r: Result<Vec<Removed>, ImageError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn removal_follows_dockers_rules() {
        let none = Users(vec![]);
        let (s, id, dir) = store("rules", &["a:1", "b:2"]);
        assert_eq!(
            msg(remove(&s, &none, "1234567890ab", false)),
            "conflict: unable to delete 1234567890ab (must be forced) - image is referenced in \
             multiple repositories"
        );
        assert_eq!(
            remove(&s, &none, "a:1", false).unwrap(),
            [Removed::Untagged("a:1".into())]
        );
        assert_eq!(msg(remove(&s, &none, "a:1", false)), "No such image: a:1");
        assert!(msg(remove(&s, &none, "A:1", false)).contains("lowercase"));
        let stopped = Users(vec![(CID.into(), id.clone(), false)]);
        assert_eq!(
            msg(remove(&s, &stopped, "b:2", false)),
            "conflict: unable to remove repository reference \"b:2\" (must force) - container \
             c0ffee000000 is using its referenced image 1234567890ab"
        );
        assert_eq!(
            msg(remove(&s, &stopped, &id, false)),
            "conflict: unable to delete 1234567890ab (must be forced) - image is being used by \
             stopped container c0ffee000000"
        );
        let running = Users(vec![(CID.into(), id.clone(), true)]);
        assert_eq!(
            msg(remove(&s, &running, &id, true)),
            "conflict: unable to delete 1234567890ab (cannot be forced) - image is being used by \
             running container c0ffee000000"
        );
        // Forcing the last tag off an image a running container uses only untags it.
        assert_eq!(
            remove(&s, &running, "b:2", true).unwrap(),
            [Removed::Untagged("b:2".into())]
        );
        assert!(s.resolve(&id).is_some());
        // Forced by id with a stopped user: deleted, its disk kept for the container.
        assert_eq!(
            remove(&s, &stopped, &id, true).unwrap(),
            [Removed::Deleted(id.clone())]
        );
        assert!(s.resolve(&id).is_none());
        assert!(dir.join("images").join(HEX).join("disk.qcow2").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn digest_references_resolve_and_count_with_their_repositorys_tag() {
        let (s, id, dir) = store("digests", &["127.0.0.1:5000/app:v1"]);
        let d = format!("sha256:{}", "d".repeat(64));
        let by_digest = format!("127.0.0.1:5000/app@{d}");
        s.add_digest(&id, &parse_normalized(&by_digest).unwrap())
            .unwrap();
        assert_eq!(
            s.resolve(&id).unwrap().digests,
            std::slice::from_ref(&by_digest)
        );
        assert_eq!(s.resolve(&by_digest).unwrap().id, id);
        assert_eq!(
            s.resolve(&format!("127.0.0.1:5000/app:zz@{d}")).unwrap().id,
            id
        );
        assert!(s.resolve(&format!("127.0.0.1:5000/other@{d}")).is_none());
        // A digest that is the image's id names it, in any repository (as dockerd).
        assert_eq!(s.resolve(&format!("x@{id}")).unwrap().id, id);
        let refs = references(&s.resolve(&id).unwrap());
        assert!(
            is_single_reference(&refs),
            "a tag and its repository's digest"
        );
        let other = parse_normalized(&format!("other@{d}")).unwrap();
        assert!(!is_single_reference(&[refs[0].clone(), other]));
        // One reference in docker's sense: a stopped user blocks the tag's removal.
        let stopped = Users(vec![(CID.into(), id.clone(), false)]);
        assert!(msg(remove(&s, &stopped, "127.0.0.1:5000/app:v1", false)).contains("must force"));
        assert_eq!(
            remove(&s, &Users(vec![]), "127.0.0.1:5000/app:v1", false).unwrap(),
            [
                Removed::Untagged("127.0.0.1:5000/app:v1".into()),
                Removed::Untagged(by_digest),
                Removed::Deleted(id),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn removing_by_id_untags_a_single_tag_then_deletes() {
        let (s, id, dir) = store("single", &["only:1"]);
        assert_eq!(
            remove(&s, &Users(vec![]), "sha256:1234", false).unwrap(),
            [Removed::Untagged("only:1".into()), Removed::Deleted(id)]
        );
        assert!(!dir.join("images").join(HEX).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
