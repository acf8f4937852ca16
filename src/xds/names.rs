//! Subscribed name sets, shared between streams. Every sidecar of a class subscribes to
//! the same few thousand EDS names; kept per stream they would be a few hundred
//! kilobytes per proxy, shared they are one pointer. A set is interned after each
//! request that changed it and copied on the next change (`Arc::make_mut`).

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex, Weak};

pub type Names = Arc<BTreeSet<String>>;

#[derive(Default)]
struct Interner {
    sets: HashMap<u64, Vec<Weak<BTreeSet<String>>>>,
    inserts: usize,
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(Default::default);

/// Sets smaller than this are not worth a lookup.
const SHARE_FROM: usize = 16;

/// The shared copy of `set`: an equal set another stream holds, or `set` itself,
/// remembered for the next stream.
pub fn intern(set: Names) -> Names {
    if set.len() < SHARE_FROM {
        return set;
    }
    let mut h = std::hash::DefaultHasher::new();
    set.hash(&mut h);
    let key = h.finish();
    let Ok(mut i) = INTERNER.lock() else {
        return set;
    };
    let bucket = i.sets.entry(key).or_default();
    bucket.retain(|w| w.strong_count() > 0);
    if let Some(shared) = bucket
        .iter()
        .filter_map(Weak::upgrade)
        .find(|s| **s == *set)
    {
        return shared;
    }
    bucket.push(Arc::downgrade(&set));
    i.inserts += 1;
    // Sets no stream holds any more are swept now and then.
    if i.inserts.is_multiple_of(1024) {
        i.sets.retain(|_, b| {
            b.retain(|w| w.strong_count() > 0);
            !b.is_empty()
        });
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sets_are_shared_and_forgotten_when_unused() {
        let mk = || -> Names { Arc::new((0..100).map(|i| format!("n{i}")).collect()) };
        let a = intern(mk());
        let b = intern(mk());
        assert!(Arc::ptr_eq(&a, &b));
        let mut c = b.clone();
        Arc::make_mut(&mut c).insert("extra".into());
        let c = intern(c);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(a.len(), 100, "a change never shows in the shared copy");
        drop((a, b));
        let d = intern(mk());
        assert_eq!(Arc::strong_count(&d), 1);
    }
}
