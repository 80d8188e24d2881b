//! Checks on the raw request target, before any route matching.
//!
//! The proxy never decodes or normalises the target: it rejects anything that a server
//! could read differently from the proxy, then signs and forwards the same bytes it checked.

/// The reason a request target is rejected. Each variant names the offending part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the path must start with '/'")]
    NotAbsolutePath,
    #[error("the path contains an empty segment ('//' or a trailing '/')")]
    EmptySegment,
    #[error("the path contains a '.' or '..' segment")]
    DotSegment,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a percent-encoded '{0}'")]
    EncodedDelimiter(char),
    #[error("the path contains an invalid percent-encoding")]
    InvalidPercentEncoding,
    #[error("the target contains a control byte or a byte outside ASCII")]
    ForbiddenByte,
}

/// Splits a target into path and query and checks the path.
///
/// Returns the path segments on success; the caller matches them against the route table.
pub fn check_path(path: &str) -> Result<Vec<&str>, TargetError> {
    let rest = path.strip_prefix('/').ok_or(TargetError::NotAbsolutePath)?;

    let segments: Vec<&str> = rest.split('/').collect();
    for segment in &segments {
        check_segment(segment)?;
    }
    Ok(segments)
}

/// Checks the query, which is forwarded byte for byte and never interpreted.
pub fn check_query(query: &str) -> Result<(), TargetError> {
    if query.bytes().any(is_forbidden_byte) {
        return Err(TargetError::ForbiddenByte);
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), TargetError> {
    if segment.is_empty() {
        return Err(TargetError::EmptySegment);
    }
    // Servlet-style servers drop `;parameters` before resolving dot segments, so `..;x`
    // is a dot segment to them and `;x` an empty one.
    let before_parameters = &segment[..parameters_start(segment)];
    if before_parameters.is_empty() {
        return Err(TargetError::EmptySegment);
    }
    if before_parameters == "." || before_parameters == ".." {
        return Err(TargetError::DotSegment);
    }

    let bytes = segment.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => return Err(TargetError::Backslash),
            b'%' => {
                check_percent_escape(&bytes[index + 1..])?;
                index += 3;
            }
            byte if is_forbidden_byte(byte) => return Err(TargetError::ForbiddenByte),
            _ => index += 1,
        }
    }
    Ok(())
}

/// Returns where the segment's path parameters start: at the first `;`, or at the first
/// `%3B` in either case, which a server behind another that decodes once reads as `;`.
fn parameters_start(segment: &str) -> usize {
    let raw = segment.find(';');
    let encoded = segment.as_bytes().windows(3).position(|window| {
        window[0] == b'%' && window[1] == b'3' && window[2].eq_ignore_ascii_case(&b'b')
    });
    raw.into_iter()
        .chain(encoded)
        .min()
        .unwrap_or(segment.len())
}

/// Rejects escapes that some server, framework or file system would turn into a
/// delimiter: `/`, `\`, `.`, and `%` itself (a double encoding such as `%252e` becomes
/// `%2e` after one decode). Escapes of control and non-ASCII bytes are rejected as well.
fn check_percent_escape(after_percent: &[u8]) -> Result<(), TargetError> {
    let [high, low, ..] = after_percent else {
        return Err(TargetError::InvalidPercentEncoding);
    };
    let (Some(high), Some(low)) = (hex_value(*high), hex_value(*low)) else {
        return Err(TargetError::InvalidPercentEncoding);
    };

    match high << 4 | low {
        b'/' => Err(TargetError::EncodedDelimiter('/')),
        b'\\' => Err(TargetError::EncodedDelimiter('\\')),
        b'.' => Err(TargetError::EncodedDelimiter('.')),
        b'%' => Err(TargetError::EncodedDelimiter('%')),
        // An escaped space is an ordinary character; escaped controls are not.
        decoded if decoded != b' ' && is_forbidden_byte(decoded) => Err(TargetError::ForbiddenByte),
        _ => Ok(()),
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

fn is_forbidden_byte(byte: u8) -> bool {
    !(0x21..0x7f).contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_check_table() {
        let cases: &[(&str, Result<usize, TargetError>)] = &[
            ("/agent-api/v1/workspaces/ws_1/environment", Ok(5)),
            ("/a/b%20c", Ok(2)),
            ("/a/b%41", Ok(2)),
            ("/a/..%41", Ok(2)),
            ("/a/.hidden", Ok(2)),
            ("a/b", Err(TargetError::NotAbsolutePath)),
            ("", Err(TargetError::NotAbsolutePath)),
            ("/", Err(TargetError::EmptySegment)),
            ("/a//b", Err(TargetError::EmptySegment)),
            ("/a/b/", Err(TargetError::EmptySegment)),
            ("/a/./b", Err(TargetError::DotSegment)),
            ("/a/../b", Err(TargetError::DotSegment)),
            ("/a/..", Err(TargetError::DotSegment)),
            ("/a/..;/b", Err(TargetError::DotSegment)),
            ("/a/..;jsessionid=1/b", Err(TargetError::DotSegment)),
            ("/a/.;x", Err(TargetError::DotSegment)),
            ("/a/b;v=1", Ok(2)),
            ("/a/..%3b/b", Err(TargetError::DotSegment)),
            ("/a/.%3Bx", Err(TargetError::DotSegment)),
            ("/a/b%3bv=1", Ok(2)),
            ("/a/;v=1/b", Err(TargetError::EmptySegment)),
            ("/a/%3B", Err(TargetError::EmptySegment)),
            ("/a\\b", Err(TargetError::Backslash)),
            ("/a/%2e%2e/b", Err(TargetError::EncodedDelimiter('.'))),
            ("/a/%2E%2E/b", Err(TargetError::EncodedDelimiter('.'))),
            ("/a/.%2e/b", Err(TargetError::EncodedDelimiter('.'))),
            ("/a%2fb", Err(TargetError::EncodedDelimiter('/'))),
            ("/a%2Fb", Err(TargetError::EncodedDelimiter('/'))),
            ("/a%5cb", Err(TargetError::EncodedDelimiter('\\'))),
            ("/a%5Cb", Err(TargetError::EncodedDelimiter('\\'))),
            ("/a/%252e%252e", Err(TargetError::EncodedDelimiter('%'))),
            ("/a/%c0%ae", Err(TargetError::ForbiddenByte)),
            ("/a/%00", Err(TargetError::ForbiddenByte)),
            ("/a/%0a", Err(TargetError::ForbiddenByte)),
            ("/a/%", Err(TargetError::InvalidPercentEncoding)),
            ("/a/%2", Err(TargetError::InvalidPercentEncoding)),
            ("/a/%zz", Err(TargetError::InvalidPercentEncoding)),
            ("/a/b\u{0}", Err(TargetError::ForbiddenByte)),
            ("/a/b c", Err(TargetError::ForbiddenByte)),
            ("/a/caf\u{e9}", Err(TargetError::ForbiddenByte)),
            ("/a/\u{7f}", Err(TargetError::ForbiddenByte)),
        ];

        for (path, expected) in cases {
            let got = check_path(path).map(|segments| segments.len());
            assert_eq!(&got, expected, "path {path:?}");
        }
    }

    #[test]
    fn query_is_checked_for_bytes_only() {
        assert_eq!(check_query("a=1&b=%2F..&c=/x/../y"), Ok(()));
        assert_eq!(check_query("a=\u{e9}"), Err(TargetError::ForbiddenByte));
        assert_eq!(check_query("a=\t"), Err(TargetError::ForbiddenByte));
    }
}
