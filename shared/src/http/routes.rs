//! A router that remembers the paths it routes.
//!
//! axum cannot list a router's routes, and the contract test (`contract.rs`) needs them to
//! compare the router with `openapi.yaml`. Every route of the API is added through
//! [`Routes::route`], so the paths listed are the router's own, by construction; which methods
//! each path answers is then asked of the built router itself (a request that ends in the
//! fallback was not routed), so nothing here can claim a method the router does not have.

use super::AppState;
use axum::Router;
use axum::routing::MethodRouter;

/// A `Router<AppState>` and the paths given to it.
pub(crate) struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    /// No routes.
    pub(crate) fn new() -> Self {
        Self {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    /// Routes `path` to `method_router` (as `Router::route`), and remembers the path.
    pub(crate) fn route(
        mut self,
        path: &'static str,
        method_router: MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, method_router);
        if !self.paths.contains(&path) {
            self.paths.push(path);
        }
        self
    }

    /// Both sets of routes (as `Router::merge`).
    pub(crate) fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        for path in other.paths {
            if !self.paths.contains(&path) {
                self.paths.push(path);
            }
        }
        self
    }

    /// The same routes with `f` applied to the router (a `route_layer`); `f` adds no route.
    pub(crate) fn map_router(
        mut self,
        f: impl FnOnce(Router<AppState>) -> Router<AppState>,
    ) -> Self {
        self.router = f(self.router);
        self
    }

    /// Every path routed, in the order first given.
    #[cfg(test)]
    pub(crate) fn paths(&self) -> &[&'static str] {
        &self.paths
    }

    /// The router.
    pub(crate) fn into_router(self) -> Router<AppState> {
        self.router
    }
}
