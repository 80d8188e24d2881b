//! Header rules shared by the request and response paths.

use http::header::{self, HeaderMap, HeaderName};

use crate::signing::SIGNING_HEADER_PREFIX;

/// Headers that describe one connection rather than the message (RFC 9110, section 7.6.1),
/// plus the legacy `proxy-connection` and `keep-alive`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

const PROXY_CONNECTION: &str = "proxy-connection";

/// Removes hop-by-hop headers, including every header that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    // A message has a handful of headers and rarely more than one hop-by-hop header, so
    // comparing the names present is cheaper than nine hashed removals that find nothing.
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name) || name.as_str() == PROXY_CONNECTION)
        .cloned()
        .collect();

    for name in named.iter().chain(present.iter()) {
        headers.remove(name);
    }
}

/// Removes every `x-integration-*` header and returns how many values were removed.
/// Header names are stored in lower case, so this catches any letter case the agent used.
pub fn remove_signing_headers(headers: &mut HeaderMap) -> usize {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(SIGNING_HEADER_PREFIX))
        .cloned()
        .collect();

    names
        .iter()
        .map(|name| {
            let count = headers.get_all(name).iter().count();
            headers.remove(name);
            count
        })
        .sum()
}

/// Tells whether a request requests a protocol switch (`Upgrade`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-trace"),
        );
        headers.insert("x-trace", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("proxy-connection", HeaderValue::from_static("close"));
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));

        remove_hop_by_hop(&mut headers);

        assert_eq!(headers.len(), 1);
        assert_eq!(headers[header::ACCEPT_ENCODING], "gzip");
    }

    #[test]
    fn every_hop_by_hop_header_goes() {
        let mut headers = HeaderMap::new();
        for name in &HOP_BY_HOP {
            headers.append(name, HeaderValue::from_static("a"));
            headers.append(name, HeaderValue::from_static("b"));
        }
        headers.insert(PROXY_CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));

        remove_hop_by_hop(&mut headers);

        assert_eq!(headers.len(), 1);
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain");
    }

    #[test]
    fn no_hop_by_hop_header_leaves_map_unchanged() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let before = headers.clone();

        remove_hop_by_hop(&mut headers);

        assert_eq!(headers, before);
    }

    #[test]
    fn signing_headers_removed_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_bytes(b"X-Integration-Signature").unwrap(),
            HeaderValue::from_static("forged"),
        );
        headers.append(
            HeaderName::from_bytes(b"x-INTEGRATION-nonce").unwrap(),
            HeaderValue::from_static("n"),
        );
        headers.insert("x-integrationx", HeaderValue::from_static("kept"));

        assert_eq!(remove_signing_headers(&mut headers), 2);
        assert_eq!(headers.len(), 1);
    }
}
