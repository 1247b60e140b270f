//! Requests over loopback to the crate's mock server through a hyper-util client, with the
//! layer and with a fixed token that tower-http's `AddAuthorization` sets: the layer's share
//! of the round trip.

mod support;

use std::time::{Duration, Instant};

use bigvision_auth::mock::MockServer;
use bigvision_auth::{BigVisionAuthLayer, Credentials, NoReplay};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The mock server's default user.
const LOGIN_BODY: &[u8] = br#"{"username": "demo", "password": "demo-password"}"#;
/// Requests per variant and round in the printed comparison.
const ROUND_REQUESTS: u32 = 2_000;
const ROUNDS: usize = 5;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Logs in once with a plain request and returns the access token.
async fn login_token(client: &HttpClient, server: &MockServer) -> String {
    let request = Request::post(server.url("/user/login"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(LOGIN_BODY)))
        .expect("valid login request");
    let response = client.request(request).await.expect("login call");
    assert_eq!(response.status(), StatusCode::OK, "login failed");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("login reply body")
        .to_bytes();
    let reply: serde_json::Value = serde_json::from_slice(&body).expect("login reply is JSON");
    reply["result"]["token"]
        .as_str()
        .expect("login reply has result.token")
        .to_owned()
}

/// Sends `count` requests one after another and returns the time they took. Each response
/// body is read to the end, so the connection goes back to the client's pool.
async fn send_sequentially<S>(service: &mut S, uri: &Uri, count: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>>,
    S::Error: Into<BoxError>,
{
    let started = Instant::now();
    for _ in 0..count {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri.clone();
        let response = service
            .ready()
            .await
            .map_err(Into::into)
            .expect("service ready")
            .call(request)
            .await
            .map_err(Into::into)
            .expect("API call");
        assert_eq!(response.status(), StatusCode::OK, "API call failed");
        response
            .into_body()
            .collect()
            .await
            .expect("API reply body");
    }
    started.elapsed()
}

fn end_to_end(c: &mut Criterion) {
    let runtime = support::runtime();
    let _entered = runtime.enter();
    let server = runtime
        .block_on(MockServer::start())
        .expect("mock server on loopback");
    let client = client();
    let uri: Uri = server.url("/ocr").parse().expect("valid API URL");

    let token = runtime.block_on(login_token(&client, &server));
    let floor = AddAuthorizationLayer::bearer(&token)
        .as_sensitive(true)
        .layer(client.clone());
    let credentials = || Credentials::new("demo", "demo-password");
    let replay = BigVisionAuthLayer::builder(client.clone(), credentials())
        .base_url(server.base_url())
        .build()
        .expect("valid settings");
    let no_replay = BigVisionAuthLayer::builder(client.clone(), credentials())
        .base_url(server.base_url())
        .replay_body(NoReplay)
        .build()
        .expect("valid settings");
    runtime.block_on(replay.handle().login()).expect("login");
    runtime.block_on(no_replay.handle().login()).expect("login");
    let ours = replay.layer(client.clone());
    let ours_no_replay = no_replay.layer(client.clone());

    // Interleaved rounds, so that load from other processes hits every variant alike.
    let mut per_request = [Vec::new(), Vec::new(), Vec::new()];
    runtime.block_on(async {
        let (mut floor, mut ours, mut ours_no_replay) =
            (floor.clone(), ours.clone(), ours_no_replay.clone());
        let count = u64::from(ROUND_REQUESTS);
        for _ in 0..ROUNDS {
            let floor_time = send_sequentially(&mut floor, &uri, count).await;
            per_request[0].push(floor_time / ROUND_REQUESTS);
            let ours_time = send_sequentially(&mut ours, &uri, count).await;
            per_request[1].push(ours_time / ROUND_REQUESTS);
            let no_replay_time = send_sequentially(&mut ours_no_replay, &uri, count).await;
            per_request[2].push(no_replay_time / ROUND_REQUESTS);
        }
    });
    let [floor_median, ours_median, no_replay_median] = per_request.map(|mut times| {
        times.sort_unstable();
        times[times.len() / 2]
    });
    let share = |time: Duration| {
        (time.as_secs_f64() - floor_median.as_secs_f64()) / time.as_secs_f64() * 100.0
    };
    eprintln!(
        "end_to_end: median of {ROUNDS} rounds of {ROUND_REQUESTS} requests: fixed token \
         {floor_median:.1?}, layer {ours_median:.1?} ({:+.2} % of the round trip), layer \
         without replay {no_replay_median:.1?} ({:+.2} %)",
        share(ours_median),
        share(no_replay_median),
    );

    let mut group = c.benchmark_group("end_to_end");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("add_authorization", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let mut service = floor.clone();
            let uri = uri.clone();
            async move { send_sequentially(&mut service, &uri, iters).await }
        })
    });
    group.bench_function("bigvision_auth_replay", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let mut service = ours.clone();
            let uri = uri.clone();
            async move { send_sequentially(&mut service, &uri, iters).await }
        })
    });
    group.bench_function("bigvision_auth_no_replay", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let mut service = ours_no_replay.clone();
            let uri = uri.clone();
            async move { send_sequentially(&mut service, &uri, iters).await }
        })
    });
    group.finish();

    let stats = server.stats();
    assert_eq!(
        stats.logins, 3,
        "expected one login for the fixed token and one per layer, got {}",
        stats.logins
    );
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
