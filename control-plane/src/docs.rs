//! Swagger UI at `/docs`, from assets vendored in `control-plane/assets/swagger-ui/` (the
//! `swagger-ui-dist` npm package, version in [`SWAGGER_UI_VERSION`]) and embedded in the binary: no
//! CDN, nothing fetched at build or run time. The page loads only same-origin URLs: the bundle and
//! stylesheet under `/docs/` and the spec at `/openapi.json`.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The vendored `swagger-ui-dist` version; see `control-plane/assets/swagger-ui/README.md`.
pub const SWAGGER_UI_VERSION: &str = "5.35.0";

const BUNDLE_JS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");
const LICENSE: &[u8] = include_bytes!("../assets/swagger-ui/LICENSE");

/// The assets change only with the binary: a year, immutable.
const ASSET_CACHE: &str = "public, max-age=31536000, immutable";

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Leaky Tokens control plane — API docs</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-ui-init.js"></script>
</body>
</html>
"#;

/// Inline scripts would need a CSP exception; this small script is served beside the bundle.
const INIT_JS: &str = r##"window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: "none",
  persistAuthorization: false
});
"##;

fn asset(body: &'static [u8], content_type: &'static str, cache: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

async fn page() -> Response {
    asset(PAGE.as_bytes(), "text/html; charset=utf-8", "no-cache")
}

async fn bundle_js() -> Response {
    asset(BUNDLE_JS, "text/javascript; charset=utf-8", ASSET_CACHE)
}

async fn init_js() -> Response {
    asset(
        INIT_JS.as_bytes(),
        "text/javascript; charset=utf-8",
        "no-cache",
    )
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8", ASSET_CACHE)
}

async fn license() -> Response {
    asset(LICENSE, "text/plain; charset=utf-8", ASSET_CACHE)
}

/// `/docs` and its assets (no auth: the page and the spec hold no secrets).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/docs", get(page))
        .route("/docs/swagger-ui-bundle.js", get(bundle_js))
        .route("/docs/swagger-ui-init.js", get(init_js))
        .route("/docs/swagger-ui.css", get(css))
        .route("/docs/LICENSE", get(license))
}
