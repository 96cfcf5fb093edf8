//! Images from registries: `docker pull` over the OCI distribution API, with oci-client for the
//! protocol (manifests, blobs, basic auth and the bearer-token dance) and oci-spec for the types.
//!
//! A pull resolves the reference to one linux/amd64 image manifest (following a manifest list
//! or OCI index), fetches its config and layers into the blob cache
//! (`$TETHER_HOME/images/blobs/sha256/<hex>`: each blob is written to a temporary file, its size
//! and sha256 checked, then renamed in, so the cache only ever holds verified blobs), and writes
//! an OCI image layout of hard links into the load's work directory. The image store then
//! checks and builds that layout with the same code `docker load` uses. This module stops at
//! the layout: it knows nothing of disks.
//!
//! Two pulls that need one blob at once download it once: the second waits on the first
//! ([`blobs::BlobCache`]). The cache keeps a blob only while a pull holds it (dockerd keeps no
//! compressed layers either); layers the store has built already, known by the DiffID their
//! blob was recorded to unpack to, are not downloaded at all ([`Local`]). Every request has a timeout, and a registry that is down, slow or
//! cuts a download short is retried a bounded number of times with backoff.

mod auth;
mod blobs;
mod config;
mod connect;
mod error;
mod fetch;
mod layout;
mod token;

use std::sync::{Arc, Mutex};

pub use self::auth::Credentials;
pub use self::blobs::BlobHolds;
pub use self::config::{RegistryConfig, DEFAULT_TIMEOUT};
pub use self::error::{Cause, PullError};
pub use self::fetch::{Fetched, Local, PullEvent};
use crate::home::Home;
use crate::store::images::reference::Reference;

/// The registries this appliance pulls from: their config, and the blob cache every pull
/// shares.
#[derive(Debug)]
pub struct Registries {
    config: Mutex<RegistryConfig>,
    blobs: Arc<blobs::BlobCache>,
}

impl Registries {
    pub fn new(home: &Home) -> Arc<Self> {
        Arc::new(Self {
            config: Mutex::new(RegistryConfig::default()),
            blobs: Arc::new(blobs::BlobCache::new(
                home.root().join("images").join("blobs").join("sha256"),
            )),
        })
    }

    pub fn configure(&self, config: RegistryConfig) {
        *self.config.lock().expect("registry config lock") = config;
    }

    fn config(&self) -> RegistryConfig {
        self.config.lock().expect("registry config lock").clone()
    }

    /// Resolves `reference` (which has a tag or a digest) to its linux/amd64 image. Unless
    /// `local` has that image already, fetches and verifies its blobs (but the layers `local`
    /// has built) and writes an OCI image layout of it, tagged with `reference` when that has
    /// a tag, at `layout`. Progress goes to `events`.
    pub async fn fetch(
        &self,
        reference: &Reference,
        creds: &Credentials,
        layout: &std::path::Path,
        local: &dyn Local,
        events: &tokio::sync::mpsc::UnboundedSender<PullEvent>,
    ) -> Result<Fetched, PullError> {
        let config = self.config();
        fetch::fetch(
            &config,
            &self.blobs,
            reference,
            creds,
            layout,
            local,
            events,
        )
        .await
        .map_err(|cause| PullError {
            image: reference.familiar(),
            cause,
        })
    }

    /// Removes the cached blobs no pull holds (what a server killed mid-pull left); returns
    /// how many went.
    pub fn collect_blobs(&self) -> usize {
        self.blobs.collect()
    }

    /// `docker login`: checks `creds` against the registry at `server` (`host[:port]`);
    /// returns the identity token its token server gave, if any.
    pub async fn login(
        &self,
        server: &str,
        creds: &Credentials,
    ) -> Result<Option<String>, PullError> {
        auth::login(&self.config(), server, creds)
            .await
            .map_err(|cause| PullError {
                image: server.to_string(),
                cause,
            })
    }
}
