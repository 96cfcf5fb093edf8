//! The container engine: container state as the API sees it, built on the session server, the
//! backend that runs VMs, and the store.
