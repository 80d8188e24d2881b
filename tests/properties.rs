//! Property tests of the proxy against hostile targets. The policy never allows a target
//! that a server could read as another route or workspace, and the proxy forwards exactly
//! the bytes it checked. Every signature verifies under an HMAC computed here with the
//! `hmac` and `sha2` crates.
//!
//! Each property runs a fixed number of cases from a fixed seed, so CI is deterministic.
//! To explore further, set `PROPTEST_RNG_SEED` and `PROPTEST_CASES`; a failure prints the
//! shrunk input, and no regression file is written.

use std::sync::atomic::{AtomicUsize, Ordering};

use agent_access_proxy::policy::{Policy, RouteTable, Scope, BUILT_IN_ROUTES, BUILT_IN_SCOPES};
use http::Method;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

const WORKSPACE: &str = "ws_test";
/// Seed of every property's generator, unless `PROPTEST_RNG_SEED` is set.
const SEED: u64 = 0x5eed_a9e7_0001;

fn config(cases: u32) -> Config {
    let base = Config::default();
    let from_env = |name: &str| std::env::var_os(name).is_some();
    Config {
        cases: if from_env("PROPTEST_CASES") {
            base.cases
        } else {
            cases
        },
        rng_seed: if from_env("PROPTEST_RNG_SEED") {
            base.rng_seed
        } else {
            RngSeed::Fixed(SEED)
        },
        failure_persistence: None,
        ..base
    }
}

/// Runs `test` on `cases` values of `strategy` and panics with the shrunk failure.
fn check<S: Strategy>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(config(cases));
    if let Err(error) = runner.run(&strategy, test) {
        panic!("{error}");
    }
}

fn policy() -> Policy {
    Policy {
        workspace: WORKSPACE.to_owned(),
        scopes: BUILT_IN_SCOPES
            .iter()
            .map(|name| Scope::parse(name).unwrap().0)
            .collect(),
        routes: RouteTable::built_in(),
    }
}

/// Generators of hostile request targets.
mod generate {
    use super::*;

    /// Path pieces that servers decode, normalise or resolve, next to ordinary ones.
    const PIECES: &[&str] = &[
        "agent-api",
        "v1",
        "workspaces",
        "ws_test",
        "ws_other",
        "WS_TEST",
        "Ws_Test",
        "ws%5ftest",
        "ws_tes%74",
        "environment",
        "files",
        "proposals",
        "artifacts",
        "fn_1",
        "",
        ".",
        "..",
        "...",
        ".hidden",
        "%2e",
        "%2E%2e",
        ".%2e",
        "%2e.",
        "%252e%252e",
        "%25",
        "%c0%ae%c0%ae",
        "%u002e",
        "..;",
        ".;x",
        "..%3b",
        "..%00",
        "%00",
        "%2f",
        "%2F",
        "%252f",
        "a%2fb",
        "%5c",
        "%5C",
        "\\",
        "..\\..",
        "%41",
        "%20",
        "%7e",
        "%",
        "%4",
        "%zz",
        "{ws}",
        "{}",
        "~",
        "\u{e9}",
        "\u{7f}",
        "a b",
        "?",
        "#",
    ];

    pub fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(PIECES).prop_map(str::to_owned),
            1 => "[a-zA-Z0-9._~%;{}\\\\-]{1,6}",
            1 => any::<u8>().prop_map(|byte| format!("%{byte:02x}")),
            1 => any::<u8>().prop_map(|byte| format!("%25{byte:02X}")),
            1 => any::<char>().prop_map(String::from),
        ]
    }

    /// Returns a target made of random pieces: mostly invalid or unknown.
    pub fn random_target() -> impl Strategy<Value = (String, Option<String>)> {
        let path = (
            prop::bool::weighted(0.9),
            prop::collection::vec(piece(), 0..9),
        )
            .prop_map(|(absolute, pieces)| {
                let joined = pieces.join("/");
                if absolute {
                    format!("/{joined}")
                } else {
                    joined
                }
            });
        (path, query())
    }

    pub fn query() -> impl Strategy<Value = Option<String>> {
        prop::option::weighted(
            0.3,
            prop_oneof![
                Just("workspace=ws_other".to_owned()),
                Just("next=/../../ws_other/%2e%2e".to_owned()),
                "[ -~]{0,12}",
                any::<String>(),
            ],
        )
    }

    /// A change to a valid target.
    #[derive(Clone, Debug)]
    pub enum Mutation {
        InsertSegment(Index, String),
        ReplaceSegment(Index, String),
        AppendToSegment(Index, String),
        DoubleSlash(Index),
        TrailingSlash,
        /// Replaces a `/` between segments with one of its encodings or a backslash.
        ReplaceSlash(Index, &'static str),
        /// Percent-encodes one byte of the path, once or twice, in either hex case.
        EncodeByte(Index, bool, bool),
        WorkspaceCase,
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let slash = prop::sample::select(&["\\", "%2f", "%2F", "%252f", "%5c", "%5C", "//"][..]);
        prop_oneof![
            (any::<Index>(), piece()).prop_map(|(at, piece)| Mutation::InsertSegment(at, piece)),
            (any::<Index>(), piece()).prop_map(|(at, piece)| Mutation::ReplaceSegment(at, piece)),
            (any::<Index>(), piece()).prop_map(|(at, piece)| Mutation::AppendToSegment(at, piece)),
            any::<Index>().prop_map(Mutation::DoubleSlash),
            Just(Mutation::TrailingSlash),
            (any::<Index>(), slash).prop_map(|(at, slash)| Mutation::ReplaceSlash(at, slash)),
            (any::<Index>(), any::<bool>(), any::<bool>())
                .prop_map(|(at, twice, upper)| Mutation::EncodeByte(at, twice, upper)),
            Just(Mutation::WorkspaceCase),
        ]
    }

    /// Returns a built-in route's target in the pinned workspace, with a node id from
    /// `node`, the route's method or sometimes another, and up to two mutations.
    pub fn route_target_with(
        node: impl Strategy<Value = String>,
    ) -> impl Strategy<Value = (Method, String, Option<String>)> {
        // Routes with a free `{node}` segment are drawn three times as often, because
        // that segment is the only one a hostile piece can fill and still be allowed.
        let routes: Vec<usize> = (0..BUILT_IN_ROUTES.len())
            .flat_map(|index| {
                let weight = if BUILT_IN_ROUTES[index].1.contains("{node}") {
                    3
                } else {
                    1
                };
                std::iter::repeat_n(index, weight)
            })
            .collect();
        let mutations = prop_oneof![
            2 => Just(Vec::new()),
            3 => prop::collection::vec(mutation(), 1..3),
        ];
        let other_method = prop::sample::select(&["HEAD", "GET", "POST", "PUT"][..]);
        (
            prop::sample::select(routes),
            node,
            mutations,
            query(),
            prop::option::weighted(0.15, other_method),
        )
            .prop_map(|(route, node, mutations, query, other_method)| {
                let (method, template, _) = BUILT_IN_ROUTES[route];
                let mut path = template.replace("{ws}", WORKSPACE).replace("{node}", &node);
                for mutation in &mutations {
                    path = apply(&path, mutation);
                }
                let method = other_method.unwrap_or(method);
                (Method::from_bytes(method.as_bytes()).unwrap(), path, query)
            })
    }

    /// Like [`route_target_with`], with node ids that are plain or hostile half the time.
    pub fn route_target() -> impl Strategy<Value = (Method, String, Option<String>)> {
        route_target_with(prop_oneof!["[a-zA-Z0-9_~-]{1,8}", piece()])
    }

    /// Returns `path` with `mutation` applied; a mutation that does not fit returns it unchanged.
    pub fn apply(path: &str, mutation: &Mutation) -> String {
        let Some(rest) = path.strip_prefix('/') else {
            return path.to_owned();
        };
        let mut segments: Vec<String> = rest.split('/').map(str::to_owned).collect();
        let slashes: Vec<usize> = path.match_indices('/').map(|(at, _)| at).skip(1).collect();
        match mutation {
            Mutation::InsertSegment(at, piece) => {
                segments.insert(at.index(segments.len() + 1), piece.clone())
            }
            Mutation::ReplaceSegment(at, piece) => {
                let at = at.index(segments.len());
                segments[at] = piece.clone();
            }
            Mutation::AppendToSegment(at, piece) => {
                let at = at.index(segments.len());
                segments[at].push_str(piece);
            }
            Mutation::DoubleSlash(at) => {
                segments.insert(at.index(segments.len() + 1), String::new())
            }
            Mutation::TrailingSlash => segments.push(String::new()),
            Mutation::ReplaceSlash(at, slash) if !slashes.is_empty() => {
                let at = slashes[at.index(slashes.len())];
                return format!("{}{slash}{}", &path[..at], &path[at + 1..]);
            }
            Mutation::EncodeByte(at, twice, upper) => {
                let at = at.index(path.len());
                if !path.is_char_boundary(at) || !path.is_char_boundary(at + 1) {
                    return path.to_owned();
                }
                let byte = path.as_bytes()[at];
                let hex = if *upper {
                    format!("{byte:02X}")
                } else {
                    format!("{byte:02x}")
                };
                let escape = if *twice {
                    format!("%25{hex}")
                } else {
                    format!("%{hex}")
                };
                return format!("{}{escape}{}", &path[..at], &path[at + 1..]);
            }
            Mutation::WorkspaceCase => {
                for segment in &mut segments {
                    if segment == WORKSPACE {
                        *segment = segment.to_ascii_uppercase();
                    }
                }
            }
            Mutation::ReplaceSlash(..) => {}
        }
        format!("/{}", segments.join("/"))
    }

    /// Returns a method, allowed-looking or not.
    pub fn method() -> impl Strategy<Value = Method> {
        prop::sample::select(
            &[
                "GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "get", "Get",
            ][..],
        )
        .prop_map(|name| Method::from_bytes(name.as_bytes()).unwrap())
    }
}

/// Servers' readings of a path, written independently of the proxy.
mod normalise {
    use super::{Method, BUILT_IN_ROUTES};

    /// One way a server may rewrite a path before routing it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Step {
        /// Decodes every valid `%XX` escape once.
        PercentDecode,
        /// Treats `\` as `/`, as Windows servers and some frameworks do.
        BackslashToSlash,
        /// Collapses runs of `/` into one.
        CollapseSlashes,
        /// Removes `.` and `..` segments per RFC 3986, section 5.2.4.
        RemoveDotSegments,
        /// Cuts every segment at its first `;`, as servlet containers do with path
        /// parameters.
        StripParameters,
    }

    /// The rewrites common to servers and frameworks: decoding (once or more), dot
    /// segments, backslashes and `//`. Case-folding the workspace is part of [`resolve`].
    pub const COMMON_STEPS: [Step; 4] = [
        Step::PercentDecode,
        Step::BackslashToSlash,
        Step::CollapseSlashes,
        Step::RemoveDotSegments,
    ];

    /// Returns every sequence of up to `length` steps drawn from `steps`, repeats allowed,
    /// the empty sequence first.
    pub fn sequences(steps: &[Step], length: usize) -> Vec<Vec<Step>> {
        let mut all = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..length {
            let mut next = Vec::new();
            for sequence in &last {
                for step in steps {
                    let mut longer = sequence.clone();
                    longer.push(*step);
                    next.push(longer);
                }
            }
            all.extend(next.iter().cloned());
            last = next;
        }
        all
    }

    pub fn apply(path: &[u8], steps: &[Step]) -> Vec<u8> {
        steps.iter().fold(path.to_vec(), |path, step| match step {
            Step::PercentDecode => percent_decode(&path),
            Step::BackslashToSlash => path
                .iter()
                .map(|&byte| if byte == b'\\' { b'/' } else { byte })
                .collect(),
            Step::CollapseSlashes => {
                let mut out: Vec<u8> = Vec::with_capacity(path.len());
                for &byte in &path {
                    if !(byte == b'/' && out.last() == Some(&b'/')) {
                        out.push(byte);
                    }
                }
                out
            }
            Step::RemoveDotSegments => remove_dot_segments(&path),
            Step::StripParameters => path
                .split(|&byte| byte == b'/')
                .map(|segment| {
                    let end = segment.iter().position(|&byte| byte == b';');
                    &segment[..end.unwrap_or(segment.len())]
                })
                .collect::<Vec<_>>()
                .join(&b'/'),
        })
    }

    fn percent_decode(input: &[u8]) -> Vec<u8> {
        let hex = |byte: u8| (byte as char).to_digit(16).map(|digit| digit as u8);
        let mut out = Vec::with_capacity(input.len());
        let mut index = 0;
        while index < input.len() {
            if input[index] == b'%' && index + 2 < input.len() {
                if let (Some(high), Some(low)) = (hex(input[index + 1]), hex(input[index + 2])) {
                    out.push(high << 4 | low);
                    index += 3;
                    continue;
                }
            }
            out.push(input[index]);
            index += 1;
        }
        out
    }

    /// RFC 3986, section 5.2.4, on bytes.
    pub fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
        let mut input = path.to_vec();
        let mut output: Vec<u8> = Vec::new();
        let pop_segment = |output: &mut Vec<u8>| {
            let cut = output.iter().rposition(|&byte| byte == b'/').unwrap_or(0);
            output.truncate(cut);
        };
        while !input.is_empty() {
            // Steps 2A to 2E of the RFC, in order.
            if input.starts_with(b"../") {
                input.drain(..3);
            } else if input.starts_with(b"./") || input.starts_with(b"/./") {
                input.drain(..2);
            } else if input == b"/." {
                input = b"/".to_vec();
            } else if input.starts_with(b"/../") {
                input.drain(..3);
                pop_segment(&mut output);
            } else if input == b"/.." {
                input = b"/".to_vec();
                pop_segment(&mut output);
            } else if input == b"." || input == b".." {
                input.clear();
            } else {
                let start = usize::from(input[0] == b'/');
                let end = input[start..]
                    .iter()
                    .position(|&byte| byte == b'/')
                    .map_or(input.len(), |at| at + start);
                output.extend(input.drain(..end));
            }
        }
        output
    }

    /// Matches a path against the built-in templates as a server would: the first route
    /// that serves `method` (HEAD wherever GET is) and whose literal segments are equal.
    /// Returns the template and the workspace segment.
    pub fn resolve(method: &Method, path: &[u8]) -> Option<(&'static str, Vec<u8>)> {
        let rest = path.strip_prefix(b"/")?;
        let segments: Vec<&[u8]> = rest.split(|&byte| byte == b'/').collect();
        BUILT_IN_ROUTES
            .iter()
            .filter(|(route_method, _, _)| {
                method.as_str() == *route_method
                    || (method == Method::HEAD && *route_method == "GET")
            })
            .find_map(|(_, template, _)| {
                let template_segments: Vec<&str> = template[1..].split('/').collect();
                if template_segments.len() != segments.len() {
                    return None;
                }
                let mut workspace = None;
                for (expected, actual) in template_segments.iter().zip(&segments) {
                    match *expected {
                        "{ws}" => workspace = Some(actual.to_vec()),
                        placeholder if placeholder.starts_with('{') => {
                            if actual.is_empty() {
                                return None;
                            }
                        }
                        literal if literal.as_bytes() == *actual => {}
                        _ => return None,
                    }
                }
                Some((*template, workspace?))
            })
    }
}

/// Fails unless an allowed target is clean. A clean target is absolute, visible ASCII, and
/// has no dot or empty segment, no backslash, and no encoded `.`, `/`, `\` or `%`. Its
/// segments equal the route's template with the pinned workspace, byte for byte.
fn check_allowed(path: &str, query: Option<&str>, template: &str) -> Result<(), TestCaseError> {
    let visible = |text: &str| text.bytes().all(|byte| (0x21..0x7f).contains(&byte));
    prop_assert!(path.starts_with('/'), "allowed a relative path");
    prop_assert!(visible(path), "allowed a forbidden byte in the path");
    prop_assert!(
        query.is_none_or(visible),
        "allowed a forbidden byte in the query"
    );
    prop_assert!(!path.contains('\\'), "allowed a backslash");
    let lower = path.to_ascii_lowercase();
    for escape in ["%2e", "%2f", "%5c", "%25"] {
        prop_assert!(!lower.contains(escape), "allowed {escape}");
    }

    let segments: Vec<&str> = path[1..].split('/').collect();
    let expected: Vec<&str> = template[1..].split('/').collect();
    prop_assert_eq!(segments.len(), expected.len(), "segments of {}", template);
    for (segment, expected) in segments.iter().zip(&expected) {
        prop_assert!(!segment.is_empty(), "allowed an empty segment");
        prop_assert!(*segment != "." && *segment != "..", "allowed a dot segment");
        match *expected {
            // No decoding: `ws%5ftest` or `WS_TEST` is not the pinned workspace.
            "{ws}" => prop_assert_eq!(*segment, WORKSPACE),
            placeholder if placeholder.starts_with('{') => {}
            literal => prop_assert_eq!(*segment, literal),
        }
    }
    Ok(())
}

/// Any target, random or derived from a route: the policy denies it or it is clean.
#[test]
fn decide_allows_only_clean_targets() {
    static ALLOWED: AtomicUsize = AtomicUsize::new(0);
    let policy = policy();
    let random = (generate::method(), generate::random_target())
        .prop_map(|(method, (path, query))| (method, path, query));
    let strategy = prop_oneof![1 => random, 2 => generate::route_target()];

    check(256, strategy, |(method, path, query)| {
        if let Ok(allowed) = policy.decide(&method, &path, query.as_deref()) {
            ALLOWED.fetch_add(1, Ordering::Relaxed);
            check_allowed(&path, query.as_deref(), &allowed.route.template)?;
        }
        Ok(())
    });
    assert!(
        ALLOWED.load(Ordering::Relaxed) >= 25,
        "only {} generated targets were allowed; the generator no longer reaches the routes",
        ALLOWED.load(Ordering::Relaxed)
    );
}

/// Checks every reading of an allowed target that `steps` produce: each must resolve to
/// the route the policy matched, in the pinned workspace (compared case-insensitively, as
/// a server that folds case would).
fn check_readings(
    policy: &Policy,
    steps: &[Vec<normalise::Step>],
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Result<bool, TestCaseError> {
    let Ok(allowed) = policy.decide(method, path, query) else {
        return Ok(false);
    };
    for sequence in steps {
        let reading = normalise::apply(path.as_bytes(), sequence);
        let resolved = normalise::resolve(method, &reading);
        let same = resolved.as_ref().is_some_and(|(template, workspace)| {
            *template == &*allowed.route.template
                && workspace.eq_ignore_ascii_case(WORKSPACE.as_bytes())
        });
        prop_assert!(
            same,
            "{method} {path:?} is allowed as {}, but {sequence:?} reads it as {:?}, which resolves to {:?}",
            allowed.route.template,
            String::from_utf8_lossy(&reading),
            resolved.map(|(template, workspace)| (template, String::from_utf8_lossy(&workspace).into_owned())),
        );
    }
    Ok(true)
}

/// No allowed target decodes, normalises or resolves to another route or workspace.
#[test]
fn normalised_target_keeps_route_and_workspace() {
    static ALLOWED: AtomicUsize = AtomicUsize::new(0);
    let policy = policy();
    // Every order of up to four steps, so that double decoding and each combination of
    // decoding with the path rewrites is covered.
    let steps = normalise::sequences(&normalise::COMMON_STEPS, 4);

    check(256, generate::route_target(), |(method, path, query)| {
        if check_readings(&policy, &steps, &method, &path, query.as_deref())? {
            ALLOWED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    assert!(
        ALLOWED.load(Ordering::Relaxed) >= 50,
        "only {} generated targets were allowed; the mutations deny too much to test anything",
        ALLOWED.load(Ordering::Relaxed)
    );
}

/// Servlet containers remove path parameters (`;` to the end of a segment) before they
/// resolve dot segments, so some route `/a/..;/b` as `/b`, while Servlet 6 containers
/// reject it by default. The target checks promise to reject whatever a server could read
/// differently, so no allowed target may change route under that reading.
#[test]
fn path_parameters_hide_no_dot_segment() {
    let policy = policy();
    let mut steps = normalise::COMMON_STEPS.to_vec();
    steps.push(normalise::Step::StripParameters);
    let steps = normalise::sequences(&steps, 3);

    // Node ids of dots followed by a parameter, raw or encoded, next to ordinary ones.
    let node = prop_oneof![
        "[a-zA-Z0-9_~-]{1,8}",
        "\\.{1,2}(;|%3[bB])[a-z0-9=]{0,6}",
        generate::piece(),
    ];
    check(
        128,
        generate::route_target_with(node),
        |(method, path, query)| {
            check_readings(&policy, &steps, &method, &path, query.as_deref()).map(|_| ())
        },
    );
}

/// Signing, checked against an HMAC-SHA256 computed here from the documented canonical
/// string: method, path and query, timestamp, nonce and body hash, joined by `\n`.
mod signature {
    use agent_access_proxy::secret::{Secret, SigningKey};
    use agent_access_proxy::signing::{self, SignatureEncoding, SignatureInput};
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    use super::*;

    /// Returns the signature the API expects, computed without the crate's signing code.
    pub fn independent_signature(
        secret: &[u8],
        method: &str,
        path_with_query: &str,
        timestamp: u64,
        nonce: &str,
        body: &[u8],
    ) -> [u8; 32] {
        let body_hash = hex::encode(Sha256::digest(body));
        let canonical = format!("{method}\n{path_with_query}\n{timestamp}\n{nonce}\n{body_hash}");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(canonical.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The inputs of one signature.
    #[derive(Clone, Debug)]
    struct Inputs {
        secret: Vec<u8>,
        method: String,
        path: String,
        query: Option<String>,
        timestamp: u64,
        nonce: String,
        body: Vec<u8>,
        base64: bool,
    }

    fn inputs() -> impl Strategy<Value = Inputs> {
        (
            prop::collection::vec(any::<u8>(), 1..80),
            "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}",
            any::<String>(),
            prop::option::of(any::<String>()),
            any::<u64>(),
            "[0-9a-f]{32}|[ -~]{0,40}",
            prop::collection::vec(any::<u8>(), 0..2048),
            any::<bool>(),
        )
            .prop_map(
                |(secret, method, path, query, timestamp, nonce, body, base64)| Inputs {
                    secret,
                    method,
                    path,
                    query,
                    timestamp,
                    nonce,
                    body,
                    base64,
                },
            )
    }

    /// `signing::sign` over any method, path, query and body matches the HMAC computed here.
    #[test]
    fn signer_matches_independent_hmac() {
        check(
            256,
            inputs(),
            |Inputs {
                 secret,
                 method,
                 path,
                 query,
                 timestamp,
                 nonce,
                 body,
                 base64,
             }| {
                let path_with_query = match &query {
                    Some(query) => format!("{path}?{query}"),
                    None => path.clone(),
                };
                let key = SigningKey {
                    id: "key_property".to_owned(),
                    secret: Secret::new(secret.clone()).unwrap(),
                };
                let body_sha256 = signing::body_sha256(&body);
                let input = SignatureInput {
                    method: &method,
                    path_with_query: &path_with_query,
                    timestamp,
                    nonce: &nonce,
                    body_sha256: &body_sha256,
                };
                let encoding = if base64 {
                    SignatureEncoding::Base64
                } else {
                    SignatureEncoding::Hex
                };

                let signed = signing::sign(&key, &input, encoding);

                let expected = independent_signature(
                    &secret,
                    &method,
                    &path_with_query,
                    timestamp,
                    &nonce,
                    &body,
                );
                let expected = if base64 {
                    base64::engine::general_purpose::STANDARD.encode(expected)
                } else {
                    hex::encode(expected)
                };
                prop_assert_eq!(signed.signature, expected);
                prop_assert_eq!(signed.key_id, "key_property");
                prop_assert_eq!(signed.timestamp, timestamp.to_string());
                prop_assert_eq!(signed.nonce, nonce);
                Ok(())
            },
        );
    }
}

/// The same properties end to end: a proxy in front of the stand-in, with a path prefix.
mod end_to_end {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use agent_access_proxy::config;
    use agent_access_proxy::proxy::Proxy;
    use agent_access_proxy::secret::Secret;
    use agent_access_proxy::server::{self, Listener, ServerOptions};
    use agent_access_proxy::signing::SignatureEncoding;
    use agent_access_proxy::standin::{RecordedRequest, StandIn};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::runtime::Runtime;
    use tokio::sync::oneshot;

    use super::signature::independent_signature;
    use super::*;

    const KEY_ID: &str = "key_properties";
    const SECRET: &str = "properties-secret-81d0c4";
    /// Path prefix of the upstream base URL; the proxy prepends it to every target.
    const PREFIX: &str = "/gateway/eu";

    /// A running proxy and stand-in; both stop when this drops.
    struct Stack {
        proxy: SocketAddr,
        stand_in: Arc<StandIn>,
        _dir: tempfile::TempDir,
        _stop: (oneshot::Sender<()>, oneshot::Sender<()>),
    }

    async fn start() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = upstream_listener.local_addr().unwrap();
        let stand_in = StandIn::new(WORKSPACE, PREFIX, SignatureEncoding::Hex);
        stand_in.add_key(KEY_ID, Secret::new(SECRET.as_bytes().to_vec()).unwrap());
        let (stop_upstream, upstream_stopped) = oneshot::channel::<()>();
        tokio::spawn(Arc::clone(&stand_in).serve(upstream_listener, None, async {
            let _ = upstream_stopped.await;
        }));

        let secret_path = dir.path().join("secret");
        std::fs::write(&secret_path, SECRET).unwrap();
        let scopes: Vec<String> = BUILT_IN_SCOPES.iter().map(|s| format!("{s:?}")).collect();
        let text = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n\n\
             [upstream]\nurl = \"http://{upstream}{PREFIX}\"\n\n\
             [key]\nid = \"{KEY_ID}\"\nsecret_file = {secret_path:?}\n\n\
             [policy]\nworkspace = \"{WORKSPACE}\"\nscopes = [{}]\n\n\
             [admin]\nenabled = false\n",
            scopes.join(", ")
        );
        let settings = config::load_toml(&text).expect("the configuration is valid");
        let proxy = Proxy::new(&settings).expect("the upstream client builds");
        let listener = Listener::bind(&settings.listen).await.unwrap();
        let config::ListenAddress::Tcp(address) = listener.local_address() else {
            panic!("the proxy listens on TCP");
        };
        let (stop_proxy, proxy_stopped) = oneshot::channel::<()>();
        tokio::spawn(server::serve(
            listener,
            proxy,
            ServerOptions::default(),
            async {
                let _ = proxy_stopped.await;
            },
        ));

        Stack {
            proxy: address,
            stand_in,
            _dir: dir,
            _stop: (stop_proxy, stop_upstream),
        }
    }

    fn runtime() -> Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Sends one request on a new connection and returns once the proxy has closed it.
    async fn exchange(address: SocketAddr, request: &[u8]) {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("the proxy closes the connection within 10 s")
            .ok();
    }

    /// Sends `request` and returns what the upstream received for it, if anything.
    fn forward(runtime: &Runtime, stack: &Stack, request: &[u8]) -> Option<RecordedRequest> {
        let before = stack.stand_in.received_total();
        runtime.block_on(exchange(stack.proxy, request));
        match stack.stand_in.received_total() - before {
            0 => None,
            1 => stack.stand_in.recorded().pop(),
            more => panic!("one request reached the upstream {more} times"),
        }
    }

    /// Whatever hostile target the proxy forwards reaches the upstream byte for byte, and
    /// is clean.
    #[test]
    fn forwarded_target_is_byte_exact() {
        static FORWARDED: AtomicUsize = AtomicUsize::new(0);
        let runtime = runtime();
        let stack = runtime.block_on(start());
        let policy = policy();
        let random = (generate::method(), generate::random_target())
            .prop_map(|(method, (path, query))| (method, path, query));
        // Only bytes that a request line allows; tests/hostile.rs sends the others.
        let strategy = prop_oneof![1 => random, 2 => generate::route_target()].prop_filter(
            "the target must fit in a request line",
            |(_, path, query)| {
                let target = format!("{path}?{}", query.as_deref().unwrap_or(""));
                target.bytes().all(|byte| (0x21..0x7f).contains(&byte))
            },
        );

        check(128, strategy, |(method, path, query)| {
            let target = match &query {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            let request =
                format!("{method} {target} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n");
            let Some(received) = forward(&runtime, &stack, request.as_bytes()) else {
                return Ok(());
            };
            FORWARDED.fetch_add(1, Ordering::Relaxed);

            // The http crate drops a fragment before the policy checks the target.
            let sent = target.split('#').next().unwrap();
            prop_assert_eq!(&received.path_with_query, &format!("{PREFIX}{sent}"));
            let (path, query) = match sent.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (sent, None),
            };
            let allowed = policy.decide(&method, path, query);
            prop_assert!(allowed.is_ok(), "forwarded a target the policy denies");
            check_allowed(path, query, &allowed.unwrap().route.template)?;
            Ok(())
        });
        assert!(
            FORWARDED.load(Ordering::Relaxed) >= 15,
            "only {} generated targets were forwarded",
            FORWARDED.load(Ordering::Relaxed)
        );
    }

    /// Every forwarded request carries a signature that an HMAC computed here verifies,
    /// over the prefixed target and the body exactly as the upstream received them.
    #[test]
    fn forwarded_signature_verifies() {
        let runtime = runtime();
        let stack = runtime.block_on(start());
        let strategy = (
            0..BUILT_IN_ROUTES.len(),
            "[A-Za-z0-9_~!$&'()*+,;=:@-]{1,10}|[a-z]{1,4}%[2-7][0-9a-dA-D]",
            prop::option::of("[A-Za-z0-9_~!$&'()*+,;=:@/?%.-]{0,24}"),
            prop::collection::vec(any::<u8>(), 0..1024),
            any::<bool>(),
        );

        check(96, strategy, |(route, node, query, body, head)| {
            let (method, template, _) = BUILT_IN_ROUTES[route];
            let method = if head && method == "GET" {
                "HEAD"
            } else {
                method
            };
            let body = if method == "POST" { body } else { Vec::new() };
            let mut target = template.replace("{ws}", WORKSPACE).replace("{node}", &node);
            if let Some(query) = &query {
                target = format!("{target}?{query}");
            }
            let head_text = format!(
                "{method} {target} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let request = [head_text.as_bytes(), &body].concat();

            let received = forward(&runtime, &stack, &request);
            prop_assert!(received.is_some(), "{method} {target} was not forwarded");
            let received = received.unwrap();
            let header = |name: &str| {
                received
                    .headers
                    .get(name)
                    .map(|value| value.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            prop_assert_eq!(&received.path_with_query, &format!("{PREFIX}{target}"));
            prop_assert_eq!(&received.body[..], &body[..]);
            prop_assert_eq!(header("x-integration-key-id"), KEY_ID);
            let timestamp: u64 = header("x-integration-timestamp").parse().unwrap();
            let nonce = header("x-integration-nonce");
            prop_assert_eq!(nonce.len(), 32);

            let expected = independent_signature(
                SECRET.as_bytes(),
                received.method.as_str(),
                &received.path_with_query,
                timestamp,
                &nonce,
                &received.body,
            );
            prop_assert_eq!(header("x-integration-signature"), hex::encode(expected));
            Ok(())
        });
    }
}
