//! Fuzzes the request-target checks and the route matcher: `Policy::decide` on arbitrary
//! bytes, both directly and after `http::Uri` parsing as the proxy receives them.
//!
//! Besides not panicking, every allowed target must pass the invariants that the property
//! tests in `tests/properties.rs` check. It has no dot or empty segment, no backslash and no
//! encoded `.`, `/`, `\` or `%`. It is visible ASCII, and its raw workspace segment equals
//! the pinned one.

#![no_main]

use std::sync::OnceLock;

use agent_access_proxy::policy::{Policy, RouteTable, Scope, BUILT_IN_SCOPES};
use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;

const WORKSPACE: &str = "ws_fuzz";

const METHODS: [&[u8]; 8] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"TRACE", b"get", b"Get",
];

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| Policy {
        workspace: WORKSPACE.to_owned(),
        scopes: BUILT_IN_SCOPES
            .iter()
            .map(|name| Scope::parse(name).expect("built-in scope").0)
            .collect(),
        routes: RouteTable::built_in(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, target)) = data.split_first() else {
        return;
    };
    let method = Method::from_bytes(METHODS[usize::from(selector) % METHODS.len()])
        .expect("the listed methods are valid tokens");

    // Direct: the raw text split at the first '?', as a server would.
    let text = String::from_utf8_lossy(target);
    let (path, query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (text.as_ref(), None),
    };
    check_decision(&method, path, query);

    // Through the URI parser, as the proxy does.
    if let Ok(uri) = Uri::try_from(target) {
        check_decision(&method, uri.path(), uri.query());
    }
});

fn check_decision(method: &Method, path: &str, query: Option<&str>) {
    let Ok(allowed) = policy().decide(method, path, query) else {
        return;
    };

    assert!(path.starts_with('/'), "allowed a relative path {path:?}");
    let visible = |text: &str| text.bytes().all(|byte| (0x21..0x7f).contains(&byte));
    assert!(visible(path), "allowed a forbidden byte in {path:?}");
    assert!(
        query.is_none_or(visible),
        "allowed a forbidden byte in {query:?}"
    );
    assert!(!path.contains('\\'), "allowed a backslash in {path:?}");
    let lower = path.to_ascii_lowercase();
    for escape in ["%2e", "%2f", "%5c", "%25"] {
        assert!(!lower.contains(escape), "allowed {escape} in {path:?}");
    }

    let segments: Vec<&str> = path[1..].split('/').collect();
    let template: Vec<&str> = allowed.route.template[1..].split('/').collect();
    assert_eq!(segments.len(), template.len(), "{path:?}");
    for (segment, expected) in segments.iter().zip(&template) {
        assert!(
            !segment.is_empty() && *segment != "." && *segment != "..",
            "allowed segment {segment:?} in {path:?}"
        );
        match *expected {
            "{ws}" => assert_eq!(*segment, WORKSPACE, "{path:?}"),
            placeholder if placeholder.starts_with('{') => {}
            literal => assert_eq!(*segment, literal, "{path:?}"),
        }
    }
}
