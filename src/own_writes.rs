//! The operator's memory of its own last writes: the one answer to a cache that lags.
//!
//! The watch caches lag behind the operator's own writes: right after it writes a target
//! Secret and a status, a watch event (of the Secret, say) can bring the credential back
//! while the cache still shows the status from before. Deciding on that old status could
//! request a second token, or retry a failure before its backoff. So for each credential the
//! operator remembers:
//! - the resourceVersion of its last status write and of its last target Secret write. A
//!   reconcile whose cache is older than either (resourceVersions of one resource compare as
//!   integers, KEP-5504) does nothing and waits for the watch event that is on its way; a
//!   target Secret still at the version the operator wrote is trusted without reading it;
//! - the last failure it recorded, also when the status write that carried it failed, so
//!   that a failed write cannot lose a backoff.
//!
//! Nothing else compensates for the cache: no fresh GET of the credential, no status
//! stand-in, no dropping of failures from a stale status.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::observe::Memo;

/// The memos, by credential uid.
#[derive(Default)]
pub struct OwnWrites {
    memos: Mutex<HashMap<String, Memo>>,
}

impl OwnWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Memo>> {
        crate::lock(&self.memos)
    }

    /// What is remembered for the credential `uid`.
    pub fn get(&self, uid: &str) -> Option<Memo> {
        self.lock().get(uid).cloned()
    }

    /// Remembers `memo` for `uid`; nothing is kept when there is nothing to remember.
    pub fn put(&self, uid: &str, memo: Memo) {
        let mut memos = self.lock();
        if memo == Memo::default() {
            memos.remove(uid);
        } else {
            memos.insert(uid.to_owned(), memo);
        }
    }

    /// Forgets a deleted credential.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }
}
