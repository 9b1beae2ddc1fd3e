//! What is in force and how it changes: the compiled runtime, the manifests
//! read in standalone mode, the watch on the config files and the reload
//! that swaps a new runtime in without dropping sessions.

pub mod reload;
pub mod runtime;
pub(crate) mod standalone;
pub(crate) mod watch;

use std::sync::{Arc, RwLock};

use self::runtime::Runtime;

/// The configuration in force; swapped on reload, read per connection.
#[derive(Clone)]
pub(crate) struct Current(Arc<RwLock<Arc<Runtime>>>);

impl Current {
    pub(crate) fn new(rt: Runtime) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(rt))))
    }

    pub(crate) fn get(&self) -> Arc<Runtime> {
        match self.0.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    pub(crate) fn set(&self, rt: Runtime) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(rt),
            Err(p) => *p.into_inner() = Arc::new(rt),
        }
    }
}
