//! The request path's scope checks cost no allocation for a normal request: path normalization of an
//! already-normal path and the endpoint allow-list match, counted by a test allocator on this thread.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A counting global allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use http::Method;
use leaky_config::endpoints::{default_endpoints, Endpoint, EndpointMethod, PathPattern};
use leaky_config::Dialect;
use leaky_filters::{AuthMethod, Principal};
use leaky_proxy::endpoints::EndpointMatcher;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn normal_paths_and_endpoint_checks_do_not_allocate() {
    let mut rules: Vec<Endpoint> = default_endpoints(Dialect::Openai)
        .iter()
        .map(|(method, p)| Endpoint {
            method: *method,
            path: PathPattern::parse(p).unwrap(),
            roles: Vec::new(),
            tiers: Vec::new(),
        })
        .collect();
    rules.push(Endpoint {
        method: EndpointMethod::Delete,
        path: PathPattern::parse("/files/{id}").unwrap(),
        roles: vec!["admin".into()],
        tiers: vec!["pro".into()],
    });
    let matcher = EndpointMatcher::new(&rules);
    let who = Principal {
        id: "k".into(),
        user: "u".into(),
        org: None,
        tier: "pro".into(),
        roles: vec!["developer".to_string(), "admin".to_string()].into(),
        models: Arc::from(Vec::new()),
        method: AuthMethod::ApiKey,
    };
    let (post, get, delete) = (Method::POST, Method::GET, Method::DELETE);

    let before = allocations();
    let mut allowed = 0;
    for _ in 0..1000 {
        let n = leaky_proxy::path::normalize("/openai/v1/chat/completions").unwrap();
        let rest = &n.path["/openai/v1".len()..];
        allowed += usize::from(matcher.allows(&post, rest, Some(&who)));
        allowed += usize::from(matcher.allows(&get, "/models/gpt-4o", Some(&who)));
        allowed += usize::from(matcher.allows(&delete, "/files/file-1", Some(&who)));
        allowed += usize::from(matcher.allows(&get, "/files", Some(&who)));
    }
    let spent = allocations() - before;
    assert_eq!(allowed, 3000);
    assert_eq!(spent, 0, "allocations on the normal path");

    // The slow path (a path that needs work) does allocate: the counter sees allocations at all.
    let n = leaky_proxy::path::normalize("/openai/v1//chat/completions").unwrap();
    assert_eq!(n.path, "/openai/v1/chat/completions");
    assert!(allocations() > before);
}
