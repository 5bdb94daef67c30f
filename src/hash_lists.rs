//! The chunk hashes of the files a listener serves, for pulls from several
//! sources: hashing a file means reading all of it, so each list is kept for
//! as long as its file is the version it was made from.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::file_version::FileVersion;
use crate::protocol::hashing::HashList;

/// The lists made so far, by served name.
#[derive(Default)]
pub struct HashLists {
    lists: Mutex<HashMap<String, (FileVersion, Arc<HashList>)>>,
}

impl HashLists {
    /// The list of `name` as it is at `version`, if one was made.
    pub fn get(&self, name: &str, version: FileVersion) -> Option<Arc<HashList>> {
        let lists = self.lists.lock().expect("hash lists lock");
        lists
            .get(name)
            .filter(|(made_from, _)| *made_from == version)
            .map(|(_, list)| list.clone())
    }

    /// Keeps `list`, made from `name` at `version`, in place of an older one.
    pub fn keep(&self, name: &str, version: FileVersion, list: Arc<HashList>) {
        self.lists
            .lock()
            .expect("hash lists lock")
            .insert(name.to_string(), (version, list));
    }
}
