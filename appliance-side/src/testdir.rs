//! A temporary directory for the unit tests, fresh when made and removed on drop, also when the
//! test fails.

use std::path::{Path, PathBuf};

use crate::home::Home;

pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("appliance-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A `$TETHER_HOME` here, its containers directory made.
    pub fn home(&self) -> Home {
        let home = Home::at(&self.0);
        std::fs::create_dir_all(home.containers()).expect("the containers directory");
        home
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
