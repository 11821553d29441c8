//! API keys by hash: one hash-map hit per request on the SHA-256 of the presented key, and the final
//! equality check in constant time. Built once per config version; principals are shared `Arc`s, so a
//! hit allocates nothing.
//!
//! `SharedKeyIndex` is the one cell every `api-key` filter reads: the index is published into it when
//! its config version goes live, so filters (and the chains holding them) do not own the keys and a
//! key change swaps one pointer instead of requiring new filters.
//!
//! Key deltas (a control plane's `keys` event) build the next index from the live one with
//! [`KeyIndex::with_delta`]: an id → hash side map finds the entry an upsert replaces or a removal
//! drops, without a scan. The live index is never mutated (requests may hold it), so a delta copies the
//! maps once: O(keys) pointer copies, no principal rebuilt (`loadtests/results/control-plane.md` has
//! the figure at 100k keys).

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

#[derive(Default, Clone)]
pub struct KeyIndex {
    keys: HashMap<KeyHash, KeyEntry, BuildHasherDefault<DigestHasher>>,
    /// Key id → its hash: the entry a delta replaces or removes. Never read on the request path.
    ids: HashMap<Arc<str>, KeyHash>,
}

/// Why a key delta cannot be applied; the live index is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// Two ids would share one secret: a lookup could not tell which principal presented it.
    #[error("key `{id}`: the same key hash is already used by key `{other}`")]
    DuplicateHash { id: String, other: String },
}

/// The principal a key authenticates as, built once per key.
fn principal_of(k: &ApiKey) -> Arc<Principal> {
    Arc::new(Principal {
        id: k.id.as_str().into(),
        user: k.user.as_str().into(),
        org: k.org.as_deref().map(Into::into),
        tier: k.tier.as_str().into(),
        roles: k.roles.clone().into(),
        models: k.models.clone().into(),
        method: AuthMethod::ApiKey,
    })
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyIndex({} keys)", self.keys.len())
    }
}

impl KeyIndex {
    /// The index of `keys` (validated config: ids and hashes unique).
    pub fn new(keys: &[ApiKey]) -> Self {
        let mut idx = KeyIndex {
            keys: HashMap::with_capacity_and_hasher(keys.len(), Default::default()),
            ids: HashMap::with_capacity(keys.len()),
        };
        for k in keys {
            idx.insert(k);
        }
        idx
    }

    fn insert(&mut self, k: &ApiKey) {
        let principal = principal_of(k);
        self.ids.insert(principal.id.clone(), KeyHash(k.sha256));
        let expires_at = k.expires_at;
        self.keys.insert(
            KeyHash(k.sha256),
            KeyEntry {
                principal,
                expires_at,
            },
        );
    }

    fn remove_id(&mut self, id: &str) {
        if let Some(hash) = self.ids.remove(id) {
            self.keys.remove(&hash);
        }
    }

    /// The next index: this one without the `remove` ids (unknown ids are ignored: a delta may be
    /// replayed), then with each `upsert` entry replacing the entry of the same id or added. Fails,
    /// building nothing, when an upserted secret is another id's.
    pub fn with_delta(&self, upsert: &[ApiKey], remove: &[String]) -> Result<KeyIndex, DeltaError> {
        let mut next = self.clone();
        for id in remove {
            next.remove_id(id);
        }
        for k in upsert {
            next.remove_id(&k.id);
            if let Some(other) = next.keys.get(&KeyHash(k.sha256)) {
                return Err(DeltaError::DuplicateHash {
                    id: k.id.clone(),
                    other: other.principal.id.to_string(),
                });
            }
            next.insert(k);
        }
        Ok(next)
    }

    /// Every key, sorted by id, in the config's shape (what a last-good cache persists).
    pub fn keys(&self) -> Vec<ApiKey> {
        let mut out: Vec<ApiKey> = self
            .keys
            .iter()
            .map(|(hash, e)| {
                let p = &e.principal;
                ApiKey {
                    id: p.id.to_string(),
                    sha256: hash.0,
                    user: p.user.to_string(),
                    org: p.org.as_deref().map(str::to_string),
                    tier: p.tier.to_string(),
                    roles: p.roles.to_vec(),
                    models: p.models.to_vec(),
                    expires_at: e.expires_at,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
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

    fn id_of(idx: &KeyIndex, plain: &str) -> Option<String> {
        match idx.lookup(plain.as_bytes(), 0) {
            Lookup::Valid(p) => Some(p.id.to_string()),
            _ => None,
        }
    }

    #[test]
    fn a_delta_adds_replaces_and_removes_by_id_and_leaves_the_live_index_alone() {
        let live = KeyIndex::new(&[key("a", "secret-a", None), key("b", "secret-b", None)]);
        // `a` rotated (new secret, same id), `b` revoked, `c` created.
        let next = live
            .with_delta(
                &[key("a", "secret-a2", None), key("c", "secret-c", None)],
                &["b".into()],
            )
            .unwrap();
        assert_eq!(id_of(&next, "secret-a2").as_deref(), Some("a"));
        assert_eq!(next.lookup(b"secret-a", 0), Lookup::Unknown);
        assert_eq!(next.lookup(b"secret-b", 0), Lookup::Unknown);
        assert_eq!(id_of(&next, "secret-c").as_deref(), Some("c"));
        assert_eq!(next.len(), 2);
        let ids: Vec<String> = next.keys().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["a", "c"]);
        // Requests holding the live index are unaffected.
        assert_eq!(id_of(&live, "secret-a").as_deref(), Some("a"));
        assert_eq!(id_of(&live, "secret-b").as_deref(), Some("b"));
        assert_eq!(live.len(), 2);
    }

    #[test]
    fn a_delta_keeps_expiry_and_replays_harmlessly() {
        let live = KeyIndex::new(&[key("a", "secret-a", None)]);
        // Rotation: the old key gets its grace expiry.
        let graced = live
            .with_delta(&[key("a", "secret-a", Some(50))], &[])
            .unwrap();
        assert!(matches!(graced.lookup(b"secret-a", 49), Lookup::Valid(_)));
        assert_eq!(graced.lookup(b"secret-a", 50), Lookup::Expired);
        // Removing an unknown id and re-upserting the same entry change nothing.
        let again = graced
            .with_delta(&[key("a", "secret-a", Some(50))], &["nope".into()])
            .unwrap();
        assert_eq!(again.keys()[0].expires_at, Some(50));
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn a_secret_shared_by_two_ids_is_refused() {
        let live = KeyIndex::new(&[key("a", "secret-a", None)]);
        let e = live
            .with_delta(&[key("b", "secret-a", None)], &[])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "key `b`: the same key hash is already used by key `a`"
        );
        // The same secret moving to a new id in one delta is fine once the old id is removed.
        let moved = live
            .with_delta(&[key("b", "secret-a", None)], &["a".into()])
            .unwrap();
        assert_eq!(id_of(&moved, "secret-a").as_deref(), Some("b"));
    }

    #[test]
    fn keys_round_trip_through_the_index() {
        let mut k = key("m", "secret-m", Some(7));
        k.roles = vec!["admin".into()];
        k.models = vec![leaky_config::ModelPattern::parse("gpt-*")];
        let idx = KeyIndex::new(std::slice::from_ref(&k));
        // `ApiKey` has no `PartialEq`: its debug form shows every field.
        assert_eq!(format!("{:?}", idx.keys()), format!("{:?}", [k]));
    }
}
