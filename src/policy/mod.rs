//! The allowlist: which requests the proxy signs.
//!
//! A request is forwarded only when its target passes the path checks, it matches a route,
//! the route's workspace segment is the pinned workspace, and the route's scope is in the
//! allowlist. Everything else is denied.

mod routes;
mod target;

use std::collections::BTreeSet;
use std::sync::Arc;

use http::Method;

pub use routes::{Lookup, Route, RouteTable, Scope, BUILT_IN_ROUTES, BUILT_IN_SCOPES};
pub use target::{check_path, check_query, TargetError};

/// The policy part of the configuration: what this proxy may sign.
#[derive(Clone, Debug)]
pub struct Policy {
    pub workspace: String,
    pub scopes: BTreeSet<Scope>,
    pub routes: RouteTable,
}

/// The reason a request is denied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("invalid request target: {0}")]
    InvalidTarget(#[from] TargetError),
    #[error("no route of the Agent Access API matches {method} {path}")]
    UnknownRoute { method: String, path: String },
    #[error(
        "the route {method} {route} needs scope '{scope}', which is not in this proxy's allowlist"
    )]
    ScopeNotAllowed {
        method: String,
        route: Arc<str>,
        scope: Arc<str>,
    },
    #[error("workspace '{requested}' is not the workspace this proxy is pinned to")]
    OtherWorkspace {
        requested: String,
        route: Arc<str>,
        scope: Arc<str>,
    },
}

/// A request the policy allows, with the route it matched.
#[derive(Debug)]
pub struct Allowed<'a> {
    pub route: &'a Route,
}

impl Denial {
    /// Returns the route template and scope of a denial that matched a route.
    pub fn matched_route(&self) -> Option<(Arc<str>, Arc<str>)> {
        match self {
            Denial::ScopeNotAllowed { route, scope, .. }
            | Denial::OtherWorkspace { route, scope, .. } => Some((route.clone(), scope.clone())),
            Denial::InvalidTarget(_) | Denial::UnknownRoute { .. } => None,
        }
    }
}

impl Policy {
    /// Returns the allowlist as one comma-separated line, for logs and banners.
    pub fn scope_list(&self) -> String {
        let names: Vec<&str> = self.scopes.iter().map(Scope::as_str).collect();
        names.join(",")
    }

    /// Decides whether `method path?query` may be signed and forwarded.
    ///
    /// `path` and `query` are the raw target as received; nothing is decoded, so what was
    /// checked here is exactly what is signed.
    pub fn decide(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<Allowed<'_>, Denial> {
        let segments = check_path(path)?;
        if let Some(query) = query {
            check_query(query)?;
        }

        let Lookup::Found { route, workspace } = self.routes.lookup(method, &segments) else {
            return Err(Denial::UnknownRoute {
                method: method.to_string(),
                path: path.to_owned(),
            });
        };

        if workspace != self.workspace {
            return Err(Denial::OtherWorkspace {
                requested: workspace.to_owned(),
                route: route.template.clone(),
                scope: route.scope.name(),
            });
        }
        if !self.scopes.contains(&route.scope) {
            return Err(Denial::ScopeNotAllowed {
                method: route.method.to_string(),
                route: route.template.clone(),
                scope: route.scope.name(),
            });
        }
        Ok(Allowed { route })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(scopes: &[&str]) -> Policy {
        Policy {
            workspace: "ws_demo".into(),
            scopes: scopes.iter().map(|s| Scope::parse(s).unwrap().0).collect(),
            routes: RouteTable::built_in(),
        }
    }

    #[test]
    fn decision_table() {
        let policy = policy(&["env:read", "artifacts:write"]);
        let ok = |m: Method, p: &str, q: Option<&str>| {
            policy
                .decide(&m, p, q)
                .map(|a| a.route.template.to_string())
        };

        assert!(ok(
            Method::GET,
            "/agent-api/v1/workspaces/ws_demo/environment",
            None
        )
        .is_ok());
        assert!(ok(
            Method::GET,
            "/agent-api/v1/workspaces/ws_demo/files/fn_1",
            Some("version=3")
        )
        .is_ok());
        assert!(ok(
            Method::POST,
            "/agent-api/v1/workspaces/ws_demo/artifacts",
            None
        )
        .is_ok());

        assert!(matches!(
            ok(Method::POST, "/agent-api/v1/workspaces/ws_demo/files/fn_1/proposals", None),
            Err(Denial::ScopeNotAllowed { ref scope, .. }) if &**scope == "files:propose"
        ));
        assert!(matches!(
            ok(Method::GET, "/agent-api/v1/workspaces/ws_other/environment", None),
            Err(Denial::OtherWorkspace { ref requested, .. }) if requested == "ws_other"
        ));
        assert!(matches!(
            ok(
                Method::GET,
                "/agent-api/v1/workspaces/ws_demo/secrets",
                None
            ),
            Err(Denial::UnknownRoute { .. })
        ));
        assert!(matches!(
            ok(
                Method::GET,
                "/agent-api/v1/workspaces/ws_demo/../ws_other/environment",
                None
            ),
            Err(Denial::InvalidTarget(TargetError::DotSegment))
        ));
        assert!(matches!(
            ok(
                Method::GET,
                "/agent-api/v1/workspaces/ws_demo/environment",
                Some("a=\u{7f}")
            ),
            Err(Denial::InvalidTarget(TargetError::ForbiddenByte))
        ));
    }

    #[test]
    fn scope_denial_message_names_scope_and_route() {
        let policy = policy(&["env:read"]);
        let denial = policy
            .decide(
                &Method::POST,
                "/agent-api/v1/workspaces/ws_demo/events",
                None,
            )
            .unwrap_err();
        let message = denial.to_string();
        assert!(message.contains("'events:write'"), "{message}");
        assert!(
            message.contains("POST /agent-api/v1/workspaces/{ws}/events"),
            "{message}"
        );
    }
}
