//! API keys by hash: one hash-map hit per request on the SHA-256 of the presented key, and the final
//! equality check in constant time. Built once per config version; principals are shared `Arc`s, so a
//! hit allocates nothing.
//!
//! `SharedKeyIndex` is the one cell every `api-key` filter reads: the index is published into it when
//! its config version goes live, so filters (and the chains holding them) do not own the keys and a
//! key change swaps one pointer instead of requiring new filters.

use crate::{AuthMethod, Principal};
use arc_swap::{ArcSwap, Guard};
use leaky_config::ApiKey;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// A SHA-256 digest whose equality is constant-time.
#[derive(Clone, Copy)]
struct KeyHash([u8; 32]);

impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for KeyHash {}

impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0[..8]);
    }
}

/// The digest is already uniformly distributed: its first eight bytes are the hash.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub principal: Arc<Principal>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
}

/// The result of looking up a presented key.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Valid(&'a Arc<Principal>),
    Expired,
    Unknown,
}

#[derive(Default)]
pub struct KeyIndex {
    keys: HashMap<KeyHash, KeyEntry, BuildHasherDefault<DigestHasher>>,
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyIndex({} keys)", self.keys.len())
    }
}

impl KeyIndex {
    pub fn new(keys: &[ApiKey]) -> Self {
        let mut map = HashMap::with_capacity_and_hasher(keys.len(), Default::default());
        for k in keys {
            let principal = Arc::new(Principal {
                id: k.id.as_str().into(),
                user: k.user.as_str().into(),
                org: k.org.as_deref().map(Into::into),
                tier: k.tier.as_str().into(),
                roles: k.roles.clone().into(),
                models: k.models.clone().into(),
                method: AuthMethod::ApiKey,
            });
            map.insert(
                KeyHash(k.sha256),
                KeyEntry {
                    principal,
                    expires_at: k.expires_at,
                },
            );
        }
        KeyIndex { keys: map }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Looks up a presented plaintext key at time `now_unix`.
    pub fn lookup(&self, presented: &[u8], now_unix: i64) -> Lookup<'_> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        match self.keys.get(&KeyHash(digest)) {
            None => Lookup::Unknown,
            Some(e) if e.expires_at.is_some_and(|t| now_unix >= t) => Lookup::Expired,
            Some(e) => Lookup::Valid(&e.principal),
        }
    }
}

/// The live key index, shared by every `api-key` filter of every config version: one atomic load
/// per request (no lock), swapped by the reload that publishes a new version.
#[derive(Default)]
pub struct SharedKeyIndex {
    current: ArcSwap<KeyIndex>,
}

impl std::fmt::Debug for SharedKeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedKeyIndex({:?})", **self.current.load())
    }
}

impl SharedKeyIndex {
    pub fn new(index: Arc<KeyIndex>) -> Self {
        SharedKeyIndex {
            current: ArcSwap::new(index),
        }
    }

    /// The index in force now; hold the guard only for one lookup.
    pub fn load(&self) -> Guard<Arc<KeyIndex>> {
        self.current.load()
    }

    /// Makes `index` the one every filter reads from the next request on.
    pub fn publish(&self, index: Arc<KeyIndex>) {
        self.current.store(index);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    pub(crate) fn key(id: &str, plain: &str, expires_at: Option<i64>) -> ApiKey {
        ApiKey {
            id: id.into(),
            sha256: Sha256::digest(plain.as_bytes()).into(),
            user: format!("{id}-user"),
            org: Some("org".into()),
            tier: "pro".into(),
            roles: vec![],
            models: vec![],
            expires_at,
        }
    }

    #[test]
    fn finds_valid_keys_and_refuses_others() {
        let idx = KeyIndex::new(&[key("a", "secret-a", None), key("b", "secret-b", Some(100))]);
        match idx.lookup(b"secret-a", 0) {
            Lookup::Valid(p) => assert_eq!(&*p.id, "a"),
            other => panic!("{other:?}"),
        }
        assert_eq!(idx.lookup(b"secret-c", 0), Lookup::Unknown);
        assert!(matches!(idx.lookup(b"secret-b", 99), Lookup::Valid(_)));
        assert_eq!(idx.lookup(b"secret-b", 100), Lookup::Expired);
    }

    #[test]
    fn many_keys_all_resolve() {
        let keys: Vec<ApiKey> = (0..5000)
            .map(|i| key(&format!("k{i}"), &format!("s{i}"), None))
            .collect();
        let idx = KeyIndex::new(&keys);
        for i in (0..5000).step_by(97) {
            match idx.lookup(format!("s{i}").as_bytes(), 0) {
                Lookup::Valid(p) => assert_eq!(&*p.id, format!("k{i}")),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_published_index_replaces_the_old_one_for_every_reader() {
        let shared = SharedKeyIndex::new(Arc::new(KeyIndex::new(&[key("a", "secret-a", None)])));
        assert!(matches!(
            shared.load().lookup(b"secret-a", 0),
            Lookup::Valid(_)
        ));
        shared.publish(Arc::new(KeyIndex::new(&[key("b", "secret-b", None)])));
        assert_eq!(shared.load().lookup(b"secret-a", 0), Lookup::Unknown);
        assert!(matches!(
            shared.load().lookup(b"secret-b", 0),
            Lookup::Valid(_)
        ));
    }
}
