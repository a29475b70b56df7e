//! The HTTP side: a landing page, the metrics endpoint with content negotiation, basic auth,
//! and limits so that a slow or greedy client cannot starve Prometheus.
use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use tower::ServiceBuilder;

use super::{daemon::Daemon, scrape::Format, webconfig::BasicAuth};

/// Scrapes served at once; more wait their turn or are shed.
pub const CONCURRENT_REQUESTS: usize = 4;
/// A request not answered in this time gets 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct App {
    daemon: Arc<Daemon>,
    telemetry_path: Arc<str>,
    auth: Option<Arc<BasicAuth>>,
    headers: Arc<Vec<(header::HeaderName, header::HeaderValue)>>,
}

pub fn router(
    daemon: Arc<Daemon>,
    telemetry_path: &str,
    auth: Option<Arc<BasicAuth>>,
    headers: Vec<(header::HeaderName, header::HeaderValue)>,
) -> Router {
    let app = App {
        daemon,
        telemetry_path: telemetry_path.into(),
        auth,
        headers: Arc::new(headers),
    };
    let limits = ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(
            |_: tower::BoxError| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "zctrace is busy or the request took too long\n",
                )
            },
        ))
        .load_shed()
        .concurrency_limit(CONCURRENT_REQUESTS)
        .timeout(REQUEST_TIMEOUT);
    Router::new()
        .route("/", get(landing))
        .route(telemetry_path, get(metrics))
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .layer(limits)
        .with_state(app)
}

async fn authenticate(State(app): State<App>, request: Request, next: Next) -> Response {
    if let Some(auth) = &app.auth {
        let credentials = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let checker = auth.clone();
        let allowed = tokio::task::spawn_blocking(move || checker.allows(credentials.as_deref()))
            .await
            .unwrap_or(false);
        if !allowed {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"zctrace\"")],
                "Unauthorized\n",
            )
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    for (name, value) in app.headers.iter() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

async fn landing(State(app): State<App>) -> Html<String> {
    let path = &app.telemetry_path;
    Html(format!(
        "<!DOCTYPE html><html><head><title>zctrace</title></head><body><h1>zctrace</h1>\
         <p>How many times does each process copy the bytes it moves?</p>\
         <p><a href=\"{path}\">Metrics</a></p></body></html>\n"
    ))
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let daemon = app.daemon.clone();
    match tokio::task::spawn_blocking(move || daemon.scrape(format)).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Ok(Err(e)) => {
            tracing::error!("scrape failed: {e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("scrape failed: {e:#}\n"),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("scrape panicked: {e}\n"),
        )
            .into_response(),
    }
}
