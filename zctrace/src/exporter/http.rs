//! The HTTP side: a landing page, the metrics endpoint with content negotiation, basic auth,
//! and limits so that neither a slow or greedy client nor a password guesser starves Prometheus.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use tokio::sync::Semaphore;
use tower::{
    limit::{ConcurrencyLimitLayer, GlobalConcurrencyLimitLayer},
    ServiceBuilder,
};

use super::{
    connections::{HttpStats, Refusal},
    daemon::Daemon,
    scrape::Format,
    webconfig::BasicAuth,
};
use crate::stacks::pprof::ProfileKind;

/// Scrapes encoded at once. More wait their turn, within the request timeout, rather than fail.
pub const CONCURRENT_SCRAPES: usize = 4;
/// bcrypt checks at once, apart from the scrapes' slots: a flood of wrong passwords queues here.
pub const CONCURRENT_AUTH_CHECKS: usize = 2;
/// After this many failed checks from one address within [`FAILURE_WINDOW`], its unremembered
/// attempts are refused (429) without a check until the window ends.
pub const FAILURES_PER_ADDRESS: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// Addresses whose failures are remembered; past it, the oldest windows are forgotten first.
const THROTTLED_ADDRESSES: usize = 4096;
/// A request not answered in this time, waiting included, gets 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Failed credential checks per client address, over fixed windows. Pure, given the time.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Address -> (start of its window, failures in it).
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Throttle {
    pub fn refuses(&self, client: IpAddr, now: Instant) -> bool {
        let failures = self.failures.lock().expect("throttle");
        failures.get(&client).is_some_and(|(since, n)| {
            now.duration_since(*since) < FAILURE_WINDOW && *n >= FAILURES_PER_ADDRESS
        })
    }

    pub fn failed(&self, client: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().expect("throttle");
        if failures.len() >= THROTTLED_ADDRESSES {
            failures.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
        }
        if failures.len() >= THROTTLED_ADDRESSES {
            let oldest = failures
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(ip, _)| *ip);
            oldest.map(|ip| failures.remove(&ip));
        }
        let window = failures.entry(client).or_insert((now, 0));
        if now.duration_since(window.0) >= FAILURE_WINDOW {
            *window = (now, 0);
        }
        window.1 += 1;
    }
}

#[derive(Clone)]
struct App {
    daemon: Arc<Daemon>,
    telemetry_path: Arc<str>,
    auth: Option<Arc<BasicAuth>>,
    auth_checks: Arc<Semaphore>,
    throttle: Arc<Throttle>,
    stats: Arc<HttpStats>,
    headers: Arc<Vec<(header::HeaderName, header::HeaderValue)>>,
}

pub fn router(
    daemon: Arc<Daemon>,
    telemetry_path: &str,
    auth: Option<Arc<BasicAuth>>,
    headers: Vec<(header::HeaderName, header::HeaderValue)>,
    stats: Arc<HttpStats>,
) -> Router {
    let app = App {
        daemon,
        telemetry_path: telemetry_path.into(),
        auth,
        auth_checks: Arc::new(Semaphore::new(CONCURRENT_AUTH_CHECKS)),
        throttle: Arc::default(),
        stats: stats.clone(),
        headers: Arc::new(headers),
    };
    // A profile over N seconds takes N seconds: it has a deadline and a slot of its own, apart
    // from the scrapes'.
    let one_profile_at_a_time = GlobalConcurrencyLimitLayer::new(CONCURRENT_PROFILES);
    let profiles = Router::new()
        .route(
            PROFILE_PATH,
            get(|state, uri| profile(state, uri, ProfileKind::Calls)).layer(one_profile_at_a_time.clone()),
        )
        .route(
            KERNEL_PROFILE_PATH,
            get(|state, uri| profile(state, uri, ProfileKind::Copies)).layer(one_profile_at_a_time),
        )
        .layer(middleware::from_fn_with_state(app.clone(), authenticate));
    // Credentials are checked outside the scrape slots; the deadline covers both waits.
    let scrapes = Router::new()
        .route("/", get(landing))
        .route(
            telemetry_path,
            get(metrics).layer(ConcurrencyLimitLayer::new(CONCURRENT_SCRAPES)),
        )
        .layer(middleware::from_fn_with_state(app.clone(), authenticate));
    with_deadline(scrapes, stats.clone(), REQUEST_TIMEOUT)
        .merge(with_deadline(
            profiles,
            stats,
            MAX_PROFILE_WINDOW + REQUEST_TIMEOUT,
        ))
        .with_state(app)
}

/// `routes`, answering 503 to a request not answered within `timeout`, waiting included.
fn with_deadline(routes: Router<App>, stats: Arc<HttpStats>, timeout: Duration) -> Router<App> {
    routes.layer(
        ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(
                move |_: tower::BoxError| {
                    stats.refuse(Refusal::Timeout);
                    std::future::ready((
                        StatusCode::SERVICE_UNAVAILABLE,
                        "zctrace is busy or the request took too long\n",
                    ))
                },
            ))
            .timeout(timeout),
    )
}

async fn authenticate(
    State(app): State<App>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(auth) = &app.auth {
        let credentials = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !auth.remembers(credentials.as_deref()) {
            if let Some(refused) = check(&app, auth.clone(), credentials, client.ip()).await {
                return refused;
            }
        }
    }
    let mut response = next.run(request).await;
    for (name, value) in app.headers.iter() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The bcrypt check of credentials not yet remembered, throttled per client address; `Some`
/// response when refused.
async fn check(
    app: &App,
    auth: Arc<BasicAuth>,
    credentials: Option<String>,
    client: IpAddr,
) -> Option<Response> {
    if app.throttle.refuses(client, Instant::now()) {
        app.stats.refuse(Refusal::Throttled);
        let retry = FAILURE_WINDOW.as_secs().to_string();
        return Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry)],
                "Too many failed logins from this address\n",
            )
                .into_response(),
        );
    }
    let permit = app.auth_checks.clone().acquire_owned().await.ok()?;
    let allowed = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        auth.allows(credentials.as_deref())
    })
    .await
    .unwrap_or(false);
    if allowed {
        return None;
    }
    app.throttle.failed(client, Instant::now());
    app.stats.refuse(Refusal::Unauthorized);
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"zctrace\"")],
            "Unauthorized\n",
        )
            .into_response(),
    )
}

async fn landing(State(app): State<App>) -> Html<String> {
    let path = &app.telemetry_path;
    Html(format!(
        "<!DOCTYPE html><html><head><title>zctrace</title></head><body><h1>zctrace</h1>\
         <p>How many times does each process copy the bytes it moves?</p>\
         <p><a href=\"{path}\">Metrics</a></p></body></html>\n"
    ))
}

/// Where `--profiles` serves the copy profile (call sites), as Go's net/http/pprof names its
/// profiles.
pub const PROFILE_PATH: &str = "/debug/pprof/copies";
/// Where it serves the kernel copy profile (observed copies, with their kernel stacks).
pub const KERNEL_PROFILE_PATH: &str = "/debug/pprof/kernel_copies";
/// The longest `?seconds=` a profile request may ask for.
pub const MAX_PROFILE_WINDOW: Duration = Duration::from_secs(300);
/// Profiles taken at once; more wait for a slot within their deadline.
const CONCURRENT_PROFILES: usize = 1;

/// The `kind` profile since the daemon started, or over the next `?seconds=N`, gzipped pprof.
async fn profile(State(app): State<App>, uri: axum::http::Uri, kind: ProfileKind) -> Response {
    let seconds = match profile_window(uri.query().unwrap_or("")) {
        Ok(seconds) => seconds,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    };
    match profile_body(app.daemon, seconds, kind).await {
        Ok(Some(body)) => ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            "profiles are off: start the daemon with --profiles\n",
        )
            .into_response(),
        Err(e) => {
            tracing::error!("profile failed: {e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("profile failed: {e:#}\n"),
            )
                .into_response()
        }
    }
}

/// The window a profile request's query asks for: `None` for all since the start.
fn profile_window(query: &str) -> Result<Option<Duration>, String> {
    let Some(value) = query.split('&').find_map(|pair| pair.strip_prefix("seconds=")) else {
        return Ok(None);
    };
    match value.parse::<u64>() {
        Ok(n) if (1..=MAX_PROFILE_WINDOW.as_secs()).contains(&n) => Ok(Some(Duration::from_secs(n))),
        _ => Err(format!(
            "seconds={value}: give a whole number of seconds from 1 to {}",
            MAX_PROFILE_WINDOW.as_secs()
        )),
    }
}

async fn profile_body(
    daemon: Arc<Daemon>,
    window: Option<Duration>,
    kind: ProfileKind,
) -> anyhow::Result<Option<Vec<u8>>> {
    let read = |daemon: Arc<Daemon>| async move {
        tokio::task::spawn_blocking(move || daemon.profile_samples()).await?
    };
    let Some((earlier, period)) = read(daemon.clone()).await? else {
        return Ok(None);
    };
    let (samples, start, duration) = match window {
        None => {
            let start = daemon.started();
            (earlier, start, start.elapsed().unwrap_or_default())
        }
        Some(window) => {
            let start = std::time::SystemTime::now();
            tokio::time::sleep(window).await;
            let (later, _) = read(daemon).await?.unwrap_or_default();
            (super::profiles::delta(&earlier, later), start, window)
        }
    };
    let window = crate::stacks::pprof::Window {
        start_nanos: start
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        duration,
        period,
    };
    let profile = crate::stacks::pprof::profile(&samples, kind, &window);
    Ok(Some(crate::stacks::pprof::gzipped(&profile)?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_window_is_whole_seconds_within_the_limit() {
        assert_eq!(profile_window(""), Ok(None));
        assert_eq!(
            profile_window("debug=1&seconds=9"),
            Ok(Some(Duration::from_secs(9)))
        );
        for bad in [
            "seconds=0",
            "seconds=301",
            "seconds=-1",
            "seconds=1.5",
            "seconds=",
        ] {
            let refused = profile_window(bad).unwrap_err();
            assert!(refused.contains("from 1 to 300"), "{bad}: {refused}");
        }
    }

    #[test]
    fn an_address_is_throttled_after_its_failures_until_its_window_ends() {
        let throttle = Throttle::default();
        let (attacker, scraper): (IpAddr, IpAddr) =
            ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let start = Instant::now();
        for _ in 0..FAILURES_PER_ADDRESS {
            assert!(!throttle.refuses(attacker, start));
            throttle.failed(attacker, start);
        }
        assert!(throttle.refuses(attacker, start));
        assert!(
            !throttle.refuses(scraper, start),
            "other addresses are not held to it"
        );
        assert!(throttle.refuses(attacker, start + FAILURE_WINDOW / 2));
        assert!(
            !throttle.refuses(attacker, start + FAILURE_WINDOW),
            "a new window starts clean"
        );
    }

    #[test]
    fn remembered_addresses_stay_bounded() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for i in 0..(THROTTLED_ADDRESSES as u32 + 100) {
            throttle.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(throttle.failures.lock().unwrap().len() <= THROTTLED_ADDRESSES);
    }
}
