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

    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(PROXY_CONNECTION);
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

/// Tells whether a request asks to switch protocols.
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
