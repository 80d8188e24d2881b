//! The route table: which method and path template needs which scope.

use std::fmt;
use std::sync::Arc;

use http::Method;

/// A permission of an Agent Access key, such as `env:read`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Arc<str>);

/// The scopes the API documents today.
pub const BUILT_IN_SCOPES: [&str; 4] = [
    "env:read",
    "artifacts:write",
    "files:propose",
    "events:write",
];

/// The vendor's guide once spells `events:write` as `events.write`; both mean the same scope.
const SCOPE_ALIASES: [(&str, &str); 1] = [("events.write", "events:write")];

impl Scope {
    /// Parses a scope name, mapping a known alias to its canonical spelling.
    ///
    /// Returns the scope and whether an alias was used. Any `resource:action` name made of
    /// lowercase ASCII letters, digits, `-` and `_` is syntactically valid; whether it is
    /// known is the route table's concern.
    pub fn parse(name: &str) -> Result<(Scope, bool), String> {
        if let Some((_, canonical)) = SCOPE_ALIASES.iter().find(|(alias, _)| *alias == name) {
            return Ok((Scope(Arc::from(*canonical)), true));
        }

        let valid_part = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        };
        match name.split_once(':') {
            Some((resource, action)) if valid_part(resource) && valid_part(action) => {
                Ok((Scope(Arc::from(name)), false))
            }
            _ => Err(format!(
                "'{name}' is not a scope name; scopes look like 'env:read' (resource:action)"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the name as a shared string, cheap to clone into a request's record.
    pub fn name(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One segment of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{ws}`: the workspace id, which must equal the pinned workspace.
    Workspace,
    /// `{name}`: an opaque id that matches any single valid segment.
    Param,
}

/// A route of the API: a method, a path template and the scope it needs.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    /// The template as written, such as `/agent-api/v1/workspaces/{ws}/files/{node}`.
    /// It is also the `route` label of metrics and logs, because it is bounded.
    pub template: Arc<str>,
    pub scope: Scope,
    segments: Vec<Segment>,
    workspace_index: usize,
}

/// The seven endpoints of Agent Access API v1.
pub const BUILT_IN_ROUTES: [(&str, &str, &str); 7] = [
    (
        "GET",
        "/agent-api/v1/workspaces/{ws}/environment",
        "env:read",
    ),
    ("GET", "/agent-api/v1/workspaces/{ws}/prompts", "env:read"),
    ("GET", "/agent-api/v1/workspaces/{ws}/file-tree", "env:read"),
    (
        "GET",
        "/agent-api/v1/workspaces/{ws}/files/{node}",
        "env:read",
    ),
    (
        "POST",
        "/agent-api/v1/workspaces/{ws}/artifacts",
        "artifacts:write",
    ),
    (
        "POST",
        "/agent-api/v1/workspaces/{ws}/files/{node}/proposals",
        "files:propose",
    ),
    (
        "POST",
        "/agent-api/v1/workspaces/{ws}/events",
        "events:write",
    ),
];

impl Route {
    /// Parses a route. The template must start with `/`, contain exactly one `{ws}`
    /// segment, and its literal segments must pass the same checks as request paths.
    pub fn new(method: &str, template: &str, scope: Scope) -> Result<Route, String> {
        let method = parse_method(method)?;
        let segments = parse_template(template)?;

        let workspace_positions: Vec<usize> = segments
            .iter()
            .enumerate()
            .filter(|(_, segment)| **segment == Segment::Workspace)
            .map(|(index, _)| index)
            .collect();
        let [workspace_index] = workspace_positions[..] else {
            return Err(format!(
                "path template '{template}' must contain exactly one '{{ws}}' segment, \
                 so that the pinned workspace can be enforced"
            ));
        };

        Ok(Route {
            method,
            template: Arc::from(template),
            scope,
            segments,
            workspace_index,
        })
    }

    /// Tells whether `segments` fit this route's template, ignoring the method.
    fn matches_path(&self, segments: &[&str]) -> bool {
        self.segments.len() == segments.len()
            && self
                .segments
                .iter()
                .zip(segments)
                .all(|(template, actual)| match template {
                    Segment::Literal(literal) => literal == actual,
                    Segment::Workspace | Segment::Param => true,
                })
    }

    /// Tells whether this route serves `method`. HEAD is served wherever GET is.
    fn serves(&self, method: &Method) -> bool {
        self.method == method || (method == Method::HEAD && self.method == Method::GET)
    }
}

fn parse_method(method: &str) -> Result<Method, String> {
    let valid = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    match Method::from_bytes(method.as_bytes()) {
        Ok(parsed) if valid && parsed != Method::CONNECT => Ok(parsed),
        _ => Err(format!(
            "'{method}' is not a usable method; write it in upper case, such as GET or POST (CONNECT is never routed)"
        )),
    }
}

fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
    if template.contains(['?', '#']) {
        return Err(format!(
            "path template '{template}' contains '?' or '#'; routes match the path only, so remove the query"
        ));
    }
    // Placeholders are checked below; the braces alone would fail the path checks.
    let without_braces = template.replace(['{', '}'], "");
    super::target::check_path(&without_braces)
        .map_err(|error| format!("path template '{template}' is invalid: {error}"))?;

    let mut parsed = Vec::new();
    for raw in template[1..].split('/') {
        parsed.push(parse_template_segment(template, raw)?);
    }
    Ok(parsed)
}

fn parse_template_segment(template: &str, raw: &str) -> Result<Segment, String> {
    if raw == "{ws}" {
        return Ok(Segment::Workspace);
    }
    if let Some(name) = raw
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
    {
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Ok(Segment::Param);
        }
    }
    if raw.contains(['{', '}']) {
        return Err(format!(
            "path template '{template}' has a malformed placeholder '{raw}'; \
             a placeholder is a whole segment such as '{{node}}'"
        ));
    }
    Ok(Segment::Literal(raw.to_owned()))
}

/// The route table: the built-in routes followed by the configured extra routes.
#[derive(Clone, Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// The result of looking a request up in the table.
#[derive(Debug)]
pub enum Lookup<'r, 'p> {
    /// A route matched; the workspace segment of the request is returned with it.
    Found {
        route: &'r Route,
        workspace: &'p str,
    },
    /// No route serves this method on this path.
    NotFound,
}

impl RouteTable {
    pub fn built_in() -> RouteTable {
        let routes = BUILT_IN_ROUTES
            .iter()
            .map(|(method, template, scope)| {
                let (scope, _) = Scope::parse(scope).expect("built-in scopes are valid");
                Route::new(method, template, scope).expect("built-in routes are valid")
            })
            .collect();
        RouteTable { routes }
    }

    /// Appends an extra route. A route with the method and path shape of one already in
    /// the table is rejected, because the first would always win and the second would
    /// only mislead a reader of the configuration.
    pub fn push(&mut self, route: Route) -> Result<(), String> {
        let shadowing = self.routes.iter().find(|existing| {
            existing.method == route.method && existing.segments == route.segments
        });
        if let Some(existing) = shadowing {
            return Err(format!(
                "{} {} has the same method and path as the route {} {}, which already needs scope '{}'",
                route.method, route.template, existing.method, existing.template, existing.scope
            ));
        }
        self.routes.push(route);
        Ok(())
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Tells whether some route needs `scope`.
    pub fn knows_scope(&self, scope: &Scope) -> bool {
        self.routes.iter().any(|route| &route.scope == scope)
    }

    /// Finds the first route that serves `method` on `segments`.
    pub fn lookup<'r, 'p>(&'r self, method: &Method, segments: &[&'p str]) -> Lookup<'r, 'p> {
        let found = self
            .routes
            .iter()
            .find(|route| route.serves(method) && route.matches_path(segments));

        match found {
            Some(route) => Lookup::Found {
                route,
                workspace: segments[route.workspace_index],
            },
            None => Lookup::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(path: &str) -> Vec<&str> {
        path[1..].split('/').collect()
    }

    fn lookup_template(table: &RouteTable, method: Method, path: &str) -> Option<String> {
        match table.lookup(&method, &segments(path)) {
            Lookup::Found { route, .. } => Some(route.template.to_string()),
            Lookup::NotFound => None,
        }
    }

    #[test]
    fn built_in_routes_match() {
        let table = RouteTable::built_in();
        let cases = [
            (
                Method::GET,
                "/agent-api/v1/workspaces/w/environment",
                Some("/agent-api/v1/workspaces/{ws}/environment"),
            ),
            (
                Method::HEAD,
                "/agent-api/v1/workspaces/w/prompts",
                Some("/agent-api/v1/workspaces/{ws}/prompts"),
            ),
            (
                Method::GET,
                "/agent-api/v1/workspaces/w/file-tree",
                Some("/agent-api/v1/workspaces/{ws}/file-tree"),
            ),
            (
                Method::GET,
                "/agent-api/v1/workspaces/w/files/n",
                Some("/agent-api/v1/workspaces/{ws}/files/{node}"),
            ),
            (
                Method::POST,
                "/agent-api/v1/workspaces/w/artifacts",
                Some("/agent-api/v1/workspaces/{ws}/artifacts"),
            ),
            (
                Method::POST,
                "/agent-api/v1/workspaces/w/files/n/proposals",
                Some("/agent-api/v1/workspaces/{ws}/files/{node}/proposals"),
            ),
            (
                Method::POST,
                "/agent-api/v1/workspaces/w/events",
                Some("/agent-api/v1/workspaces/{ws}/events"),
            ),
            (Method::POST, "/agent-api/v1/workspaces/w/environment", None),
            (Method::GET, "/agent-api/v1/workspaces/w/artifacts", None),
            (Method::HEAD, "/agent-api/v1/workspaces/w/events", None),
            (Method::DELETE, "/agent-api/v1/workspaces/w/files/n", None),
            (
                Method::GET,
                "/agent-api/v1/workspaces/w/files/n/extra",
                None,
            ),
            (Method::GET, "/agent-api/v2/workspaces/w/environment", None),
            (Method::GET, "/agent-api/v1/workspaces/w", None),
        ];

        for (method, path, expected) in cases {
            assert_eq!(
                lookup_template(&table, method.clone(), path).as_deref(),
                expected,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn lookup_returns_workspace_segment() {
        let table = RouteTable::built_in();
        let path = segments("/agent-api/v1/workspaces/ws_9/files/fn_1");
        let Lookup::Found { workspace, .. } = table.lookup(&Method::GET, &path) else {
            panic!("route not found");
        };
        assert_eq!(workspace, "ws_9");
    }

    #[test]
    fn lowercase_method_matches_nothing() {
        let table = RouteTable::built_in();
        let method = Method::from_bytes(b"get").unwrap();
        assert!(
            lookup_template(&table, method, "/agent-api/v1/workspaces/w/environment").is_none()
        );
    }

    #[test]
    fn scope_alias_is_normalised() {
        assert_eq!(
            Scope::parse("events.write").unwrap(),
            (Scope(Arc::from("events:write")), true)
        );
        assert_eq!(
            Scope::parse("env:read").unwrap(),
            (Scope(Arc::from("env:read")), false)
        );
        assert!(Scope::parse("env").is_err());
        assert!(Scope::parse("Env:Read").is_err());
        assert!(Scope::parse("env:").is_err());
    }

    #[test]
    fn extra_route_template_errors() {
        let scope = Scope::parse("env:read").unwrap().0;
        let cases = [
            ("GET", "agent-api/{ws}", "invalid"),
            ("GET", "/agent-api/runs", "exactly one '{ws}'"),
            ("GET", "/a/{ws}/b/{ws}", "exactly one '{ws}'"),
            ("GET", "/a/{ws}/x{id}", "malformed placeholder"),
            ("GET", "/a/{ws}/../b", "invalid"),
            ("GET", "/a/{ws}/q?x=1", "remove the query"),
            ("get", "/a/{ws}", "upper case"),
            ("CONNECT", "/a/{ws}", "CONNECT"),
        ];
        for (method, template, expected) in cases {
            let error = Route::new(method, template, scope.clone()).unwrap_err();
            assert!(error.contains(expected), "{method} {template}: {error}");
        }
        assert!(Route::new("PUT", "/agent-api/v1/workspaces/{ws}/runs/{run_id}", scope).is_ok());
    }
}
