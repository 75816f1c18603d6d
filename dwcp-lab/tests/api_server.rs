//! The API served for real on a Unix socket (and TCP) in a temp dir, fed by a real watch
//! channel. A small task plays the agent's command loop: it applies link and reload commands
//! to the snapshot it publishes, and reservation operations to a real reservation manager with
//! its file store, whose reservations and events it publishes as the state owner does.

use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use dwcp_agent::agent::AgentEvent;
use dwcp_agent::agent::AgentSnapshot;
use dwcp_agent::agent::LinkHealth;
use dwcp_agent::agent::LinkView;
use dwcp_agent::{agent::AgentHandle, api::*};
use dwcp_cli::client::*;
use dwcp_control::bandwidth::ManagerConfig;
use dwcp_control::bandwidth::Reservation;
use dwcp_control::bandwidth::ReservationManager;
use dwcp_control::input::unix_now;
use dwcp_control::view::*;
use dwcp_lab::api_harness::*;
use dwcp_lab::fixtures::*;
use dwcp_lab::idle_flood::{under_idle_flood, FloodTarget};

/// Asserts a JSON error answer with `status` whose message contains `needle`.
fn assert_error(r: &RawResponse, status: u16, needle: &str) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let body: ErrorBody = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {:?}", r.body));
    assert_eq!(body.status, status);
    assert!(
        body.error.contains(needle),
        "{:?} does not contain {needle:?}",
        body.error
    );
}

fn reservation_body(rate: Value, end: u64) -> String {
    json!({
        "owner": "video-team",
        "source": "us-east-1",
        "destination": "eu-west-1",
        "class": "realtime",
        "rate": rate,
        "end": end,
        "path": [1]
    })
    .to_string()
}

#[tokio::test]
async fn every_read_route_answers_from_the_snapshot() {
    let h = Harness::start(Agent::Answers, false).await;
    let s = three_region_snapshot();
    let status: StatusView = h.client.get("/v1/status").await.unwrap();
    assert_eq!(status.gateway, "gw-use1-a");
    assert_eq!((status.links_total, status.links_up), (3, 2));
    assert_eq!((status.regions_remote, status.regions_reachable), (2, 2));
    assert_eq!(status.reservations_active, Some(0));
    let topo: TopologyView = h.client.get("/v1/topology").await.unwrap();
    assert_eq!(topo.regions, s.regions);
    assert_eq!(topo.links.len(), 3);
    assert!(topo.links[0].local && !topo.links[1].local);
    let links: Vec<LinkView> = h.client.get("/v1/links").await.unwrap();
    assert_eq!(links, s.links);
    let by_id: LinkView = h.client.get("/v1/links/3").await.unwrap();
    let by_name: LinkView = h.client.get("/v1/links/use1-aps1").await.unwrap();
    assert_eq!(by_id, by_name);
    assert_eq!(by_id.health, LinkHealth::Degraded);
    let routes: Vec<dwcp_agent::agent::RouteView> = h.client.get("/v1/routes").await.unwrap();
    assert_eq!(routes, s.routes);
    let route: dwcp_agent::agent::RouteView = h.client.get("/v1/routes/ap-south-1").await.unwrap();
    assert!(route.reason.contains("link 3 degraded"));
    assert_eq!(route.paths[0].regions.len(), 3);
    let history: Vec<dwcp_agent::agent::RouteChange> = h.client.get("/v1/history").await.unwrap();
    assert_eq!(history.len(), 3);
    assert!(history
        .windows(2)
        .all(|w| w[0].at_unix_ms <= w[1].at_unix_ms));
    let aps1: Vec<dwcp_agent::agent::RouteChange> = h
        .client
        .get("/v1/history?destination=ap-south-1&limit=1")
        .await
        .unwrap();
    assert_eq!(aps1.len(), 1);
    assert_eq!(aps1[0].reason, "link 3 degraded (loss 7 %)");
    let tunnels: Vec<dwcp_agent::agent::TunnelView> = h.client.get("/v1/tunnels").await.unwrap();
    assert_eq!(tunnels, s.tunnels);
    let classes: Vec<dwcp_agent::agent::ClassView> = h.client.get("/v1/classes").await.unwrap();
    assert_eq!(classes, s.classes);
    assert_eq!(classes.len(), 5);
    // A newly published snapshot is what the next request sees.
    let mut next = s.clone();
    next.failovers_total = 9;
    h.snapshot.send_replace(Arc::new(next));
    let status: StatusView = h.client.get("/v1/status").await.unwrap();
    assert_eq!(status.failovers_total, 9);
    h.stop().await;
}

#[tokio::test]
async fn unknown_ids_and_routes_get_json_errors_naming_them() {
    let h = Harness::start(Agent::Answers, false).await;
    assert_error(&h.raw("GET", "/v1/links/9", None).await, 404, "link \"9\"");
    assert_error(
        &h.raw("GET", "/v1/links/nowhere", None).await,
        404,
        "link \"nowhere\"",
    );
    assert_error(
        &h.raw("GET", "/v1/routes/mars-1", None).await,
        404,
        "mars-1",
    );
    assert_error(
        &h.raw("GET", "/v1/reservations/77", None).await,
        404,
        "reservation 77 not found",
    );
    assert_error(
        &h.raw("DELETE", "/v1/reservations/77", None).await,
        404,
        "reservation 77",
    );
    assert_error(
        &h.raw("GET", "/v1/reservations/abc", None).await,
        400,
        "\"abc\" is not a whole number",
    );
    assert_error(
        &h.raw("GET", "/v1/history?destination=mars-1", None).await,
        404,
        "region \"mars-1\"",
    );
    assert_error(
        &h.raw("GET", "/v1/history?limit=ten", None).await,
        400,
        "limit",
    );
    assert_error(
        &h.raw("GET", "/v1/history?color=red", None).await,
        400,
        "color",
    );
    assert_error(
        &h.raw("GET", "/v2/status", None).await,
        404,
        "GET /v2/status",
    );
    assert_error(&h.raw("DELETE", "/v1/links", None).await, 405, "DELETE");
    assert_error(
        &h.raw("PUT", "/v1/links/9/admin", Some(r#"{"state":"down"}"#))
            .await,
        404,
        "link \"9\"",
    );
    // Only the cancel of reservation 77 reached the agent (which keeps the reservations).
    assert_eq!(h.commands_seen.load(Ordering::SeqCst), 1);
    h.stop().await;
}

#[tokio::test]
async fn reservations_crud_is_stored() {
    let h = Harness::start(Agent::Answers, false).await;
    let end = unix_now() + 3600;
    let created = h
        .raw(
            "POST",
            "/v1/reservations",
            Some(&reservation_body(json!("100M"), end)),
        )
        .await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let admission: dwcp_control::bandwidth::Admission =
        serde_json::from_slice(&created.body).unwrap();
    let id = admission.reservation.id.0;
    assert_eq!(admission.reservation.rate_bps, 100_000_000);
    assert!(String::from_utf8_lossy(&h.store_bytes().unwrap()).contains("video-team"));
    let one: Reservation = h
        .client
        .get(&format!("/v1/reservations/{id}"))
        .await
        .unwrap();
    assert_eq!(one, admission.reservation);
    let all: Vec<Reservation> = h.client.get("/v1/reservations").await.unwrap();
    assert_eq!(all, vec![one.clone()]);
    let extended = h
        .raw(
            "PATCH",
            &format!("/v1/reservations/{id}"),
            Some(&json!({"end": end + 600}).to_string()),
        )
        .await;
    assert_eq!(extended.status, 200);
    assert_eq!(h.stored()[0].end, end + 600);
    let status: StatusView = h.client.get("/v1/status").await.unwrap();
    assert_eq!(status.reservations_active, Some(1));
    let cancelled = h
        .raw("DELETE", &format!("/v1/reservations/{id}"), None)
        .await;
    assert_eq!(cancelled.status, 200);
    assert!(h.stored().is_empty());
    assert_error(
        &h.raw("GET", &format!("/v1/reservations/{id}"), None).await,
        404,
        "not found",
    );
    // Too much for the link: 1 Gbit/s link, 80 % reservable.
    assert_error(
        &h.raw(
            "POST",
            "/v1/reservations",
            Some(&reservation_body(json!("900M"), end)),
        )
        .await,
        409,
        "link 1",
    );
    h.stop().await;
}

#[tokio::test]
async fn malformed_or_oversized_requests_change_nothing() {
    let h = Harness::start(Agent::Answers, false).await;
    let end = unix_now() + 3600;
    let first = h
        .raw(
            "POST",
            "/v1/reservations",
            Some(&reservation_body(json!(1_000_000), end)),
        )
        .await;
    assert_eq!(first.status, 201);
    let before_store = h.store_bytes();
    let before = h.stored();
    let huge = format!(
        r#"{{"owner":"{}","source":"us-east-1","destination":"eu-west-1","class":"bulk","rate":1,"end":{end},"path":[1]}}"#,
        "x".repeat(5000)
    );
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("POST", r#"{"source": "us-east-1", "#.into(), 400, "JSON"),
        ("POST", "not json at all".into(), 400, "JSON"),
        (
            "POST",
            r#"{"source":"us-east-1"}"#.into(),
            422,
            "missing field",
        ),
        (
            "POST",
            reservation_body(json!(1), end).replace("\"owner\"", "\"colour\":1,\"owner\""),
            422,
            "unknown field `colour`",
        ),
        (
            "POST",
            reservation_body(json!(-5), end),
            400,
            "rate: -5 is negative",
        ),
        ("POST", reservation_body(json!("fast"), end), 400, "rate"),
        (
            "POST",
            reservation_body(json!(1), end).replace("\"path\":[1]", "\"path\":[42]"),
            400,
            "unknown link 42",
        ),
        ("POST", huge, 413, "larger than 4096 bytes"),
        ("PATCH", r#"{"end": "soon"}"#.into(), 400, "end"),
        ("PATCH", "{".into(), 400, "JSON"),
    ];
    for (method, body, status, needle) in cases {
        let path = if method == "POST" {
            "/v1/reservations".to_string()
        } else {
            format!("/v1/reservations/{}", before[0].id)
        };
        let r = h.raw(method, &path, Some(&body)).await;
        assert_error(&r, status, needle);
        assert_eq!(h.stored(), before, "after {method} {body:.60}");
        assert_eq!(h.store_bytes(), before_store);
    }
    // A JSON body without a JSON content type is refused too.
    let r = h
        .client
        .request_raw(
            "POST",
            "/v1/reservations",
            &[("content-type", "text/plain")],
            Some(reservation_body(json!(1), end).into_bytes()),
        )
        .await
        .unwrap();
    assert_error(&r, 415, "Content-Type");
    // A malformed admin request never reaches the agent.
    let seen = h.commands_seen.load(Ordering::SeqCst);
    for body in [
        r#"{"state":"sideways"}"#,
        r#"{"state":"down","x":1}"#,
        "[",
        "",
    ] {
        let r = h.raw("PUT", "/v1/links/1/admin", Some(body)).await;
        assert!(r.status == 400 || r.status == 422, "{body}: {}", r.status);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
    }
    assert_eq!(h.commands_seen.load(Ordering::SeqCst), seen);
    assert_eq!(h.stored(), before);
    h.stop().await;
}

#[tokio::test]
async fn link_admin_and_reload_go_to_the_agent() {
    let h = Harness::start(Agent::Answers, false).await;
    let r: AdminResponse = h
        .client
        .call(
            "PUT",
            "/v1/links/use1-aps1/admin",
            Some(&AdminRequest {
                state: AdminState::Down,
            }),
        )
        .await
        .unwrap();
    assert_eq!((r.link, r.name.as_str()), (3, "use1-aps1"));
    let l: LinkView = h.client.get("/v1/links/3").await.unwrap();
    assert_eq!(l.health, LinkHealth::AdminDown);
    let _: AdminResponse = h
        .client
        .call(
            "PUT",
            "/v1/links/3/admin",
            Some(&AdminRequest {
                state: AdminState::Up,
            }),
        )
        .await
        .unwrap();
    let l: LinkView = h.client.get("/v1/links/3").await.unwrap();
    assert_eq!(l.health, LinkHealth::Up);
    let g: ReloadResponse = h
        .client
        .call::<(), _>("POST", "/v1/reload", None)
        .await
        .unwrap();
    assert_eq!(g.generation, 2);
    assert_eq!(h.commands_seen.load(Ordering::SeqCst), 3);
    h.stop().await;
}

#[tokio::test]
async fn an_agent_that_does_not_answer_is_a_503_not_a_hang() {
    let h = Harness::start(Agent::Silent, false).await;
    let r = h
        .raw("PUT", "/v1/links/1/admin", Some(r#"{"state":"down"}"#))
        .await;
    assert_error(&r, 503, "did not answer within 300 ms");
    h.stop().await;
    let h = Harness::start(Agent::Gone, false).await;
    let r = h.raw("POST", "/v1/reload", None).await;
    assert_error(&r, 503, "not running");
    h.stop().await;
}

#[tokio::test]
async fn tcp_needs_the_bearer_token_and_refuses_without_changing_anything() {
    let h = Harness::start(Agent::Answers, true).await;
    let end = unix_now() + 3600;
    let body = reservation_body(json!("1M"), end).into_bytes();
    let anonymous = h
        .tcp(None)
        .request_raw("POST", "/v1/reservations", &[], Some(body.clone()))
        .await
        .unwrap();
    assert_error(&anonymous, 401, "missing bearer token");
    let wrong = h
        .tcp(Some("0123456789abcdef0123456789abcdeX"))
        .request_raw("POST", "/v1/reservations", &[], Some(body.clone()))
        .await
        .unwrap();
    assert_error(&wrong, 401, "wrong bearer token");
    let short = h
        .tcp(Some("0123"))
        .request_raw(
            "PUT",
            "/v1/links/1/admin",
            &[],
            Some(br#"{"state":"down"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_error(&short, 401, "wrong bearer token");
    let basic = h
        .tcp(None)
        .request_raw(
            "GET",
            "/v1/status",
            &[("authorization", "Basic dXNlcjpwYXNz")],
            None,
        )
        .await
        .unwrap();
    assert_error(&basic, 401, "missing bearer token");
    let lower_case_scheme = h
        .tcp(None)
        .request_raw(
            "GET",
            "/v1/status",
            &[("authorization", &format!("bearer {TOKEN}"))],
            None,
        )
        .await
        .unwrap();
    assert_eq!(lower_case_scheme.status, 200);
    assert!(h.stored().is_empty());
    assert_eq!(h.store_bytes(), None);
    assert_eq!(h.commands_seen.load(Ordering::SeqCst), 0);
    let ok = h
        .tcp(Some(TOKEN))
        .request_raw("POST", "/v1/reservations", &[], Some(body))
        .await
        .unwrap();
    assert_eq!(ok.status, 201);
    let status: StatusView = h.tcp(Some(TOKEN)).get("/v1/status").await.unwrap();
    assert_eq!(status.reservations_active, Some(1));
    h.stop().await;
}

#[tokio::test]
async fn the_socket_is_0660_and_a_live_one_is_not_taken_over() {
    let h = Harness::start(Agent::Answers, false).await;
    let path = h.config.socket.clone().unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    match bind_unix(&path, 0o660, None).await {
        Err(ServeError::SocketInUse(p)) => assert_eq!(p, path),
        other => panic!("expected SocketInUse, got {:?}", other.map(|_| ())),
    }
    // The refused second bind left the first one serving.
    let _: StatusView = h.client.get("/v1/status").await.unwrap();
    h.stop().await;
    // A stale socket file (no one listening) is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale: PathBuf = dir.path().join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let l = bind_unix(&stale, 0o600, None).await.unwrap();
    assert_eq!(
        std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(l);
    assert!(matches!(
        bind_unix(&stale, 0o660, Some("no-such-group-dwcp")).await,
        Err(ServeError::UnknownGroup(_))
    ));
}

#[tokio::test]
async fn tcp_without_tls_or_a_good_token_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(Arc::new(AgentSnapshot::default()));
    let handle = AgentHandle {
        snapshot: rx,
        events: broadcast::channel(1).0,
        commands: mpsc::channel(1).0,
    };
    let tls = ApiTls::create(dir.path());
    let mut config = ApiConfig {
        socket: Some(dir.path().join("api.sock")),
        tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls_cert: Some(tls.cert.clone()),
        tls_key: Some(tls.key.clone()),
        ..ApiConfig::default()
    };
    let ctx = ApiContext::new(handle, &config);
    let start = |config: ApiConfig| {
        let ctx = ctx.clone();
        async move { RunningApi::start(&config, ctx).await.err().unwrap() }
    };
    assert!(matches!(
        start(config.clone()).await,
        ServeError::TcpWithoutTlsOrToken
    ));
    let token = dir.path().join("token");
    write_secret(&token, b"short\n");
    config.token_file = Some(token.clone());
    let err = start(config.clone()).await;
    assert!(err.to_string().contains("is 5 characters"), "{err}");
    // A token or a key that group or others may read is refused, naming the file and the fix.
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    for mode in [0o640, 0o604, 0o620] {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = start(config.clone()).await;
        assert!(
            matches!(&err, ServeError::SecretExposed { path, mode: m } if path == &token && *m == mode),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(&tls.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = start(config.clone()).await;
    assert!(
        matches!(&err, ServeError::SecretExposed { path, .. } if path == &tls.key),
        "{err}"
    );
    std::fs::set_permissions(&tls.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Without the certificate (or with one that is not PEM), no TLS, no start.
    config.tls_cert = None;
    assert!(matches!(
        start(config.clone()).await,
        ServeError::TcpWithoutTlsOrToken
    ));
    config.tls_cert = Some(token.clone());
    let err = start(config.clone()).await;
    assert!(
        matches!(&err, ServeError::Tls { path, .. } if path == &token),
        "{err}"
    );
    // Nothing was bound.
    assert!(!dir.path().join("api.sock").exists());
}

#[tokio::test]
async fn events_stream_agent_and_reservation_events() {
    let h = Harness::start(Agent::Answers, false).await;
    let client = h.client.clone();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        client
            .events(|e| {
                let _ = got_tx.send(e);
                true
            })
            .await
    });
    // Wait until the stream has subscribed (the event channel counts its receivers).
    for _ in 0..200 {
        if h.events.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(h.events.receiver_count() > 0, "the event stream subscribed");
    h.events
        .send(AgentEvent::LinkDown {
            link: 3,
            reason: "no probe reply for 30 ms".into(),
        })
        .unwrap();
    let end = unix_now() + 60;
    let r = h
        .raw(
            "POST",
            "/v1/reservations",
            Some(&reservation_body(json!("1M"), end)),
        )
        .await;
    assert_eq!(r.status, 201);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(10), got_rx.recv())
            .await
            .expect("events arrive")
            .expect("stream open");
        seen.push(e);
    }
    let agent = seen
        .iter()
        .find(|e| e.event == "agent")
        .expect("agent event");
    let v: Value = serde_json::from_str(&agent.data).unwrap();
    assert_eq!(v["kind"], "link_down");
    assert_eq!(v["link"], 3);
    let res = seen
        .iter()
        .find(|e| e.event == "reservation")
        .expect("reservation event");
    let v: Value = serde_json::from_str(&res.data).unwrap();
    assert_eq!(v["event"], "created");
    // Shutting down ends the open stream instead of waiting for it.
    h.stop().await;
    tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the stream ended with the server")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn without_a_reservation_manager_reservations_are_501() {
    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(Arc::new(three_region_snapshot()));
    let handle = AgentHandle {
        snapshot: rx,
        events: broadcast::channel(1).0,
        commands: mpsc::channel(1).0,
    };
    let config = ApiConfig {
        socket: Some(dir.path().join("api.sock")),
        ..ApiConfig::default()
    };
    let api = RunningApi::start(&config, ApiContext::new(handle, &config))
        .await
        .unwrap();
    let client = ApiClient::new(Endpoint::Unix(dir.path().join("api.sock")));
    let r = client
        .request_raw("GET", "/v1/reservations", &[], None)
        .await
        .unwrap();
    assert_error(&r, 501, "keeps no reservations");
    let status: StatusView = client.get("/v1/status").await.unwrap();
    assert_eq!(status.reservations_active, None);
    api.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_owner_hears_only_about_its_own_reservations() {
    let h = Harness::start(Agent::Answers, false).await;
    let client = h.client.clone();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        client
            .events_at("/v1/events?owner=video-team", |e| {
                let _ = got_tx.send(e);
                true
            })
            .await
    });
    // The stream subscribes when its request arrives, which the test cannot see: make
    // changes (others' and ours, and an agent event) until the first event comes through.
    let end = unix_now() + 600;
    let mut first = None;
    for _ in 0..100 {
        h.events.send(AgentEvent::LinkUp { link: 1 }).ok();
        let other = reservation_body(json!("1M"), end).replace("video-team", "backup");
        assert_eq!(
            h.raw("POST", "/v1/reservations", Some(&other)).await.status,
            201
        );
        let mine = reservation_body(json!("2M"), end);
        assert_eq!(
            h.raw("POST", "/v1/reservations", Some(&mine)).await.status,
            201
        );
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), got_rx.recv()).await {
            first = Some(e);
            break;
        }
    }
    let mut seen = vec![first.expect("an event arrives")];
    while let Ok(e) = got_rx.try_recv() {
        seen.push(e);
    }
    for e in &seen {
        assert_eq!(e.event, "reservation", "{e:?}");
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["reservation"]["owner"], "video-team", "{e:?}");
        assert_eq!(v["reservation"]["rate_bps"], 2_000_000);
    }
    assert_error(
        &h.raw("GET", "/v1/events?colour=red", None).await,
        400,
        "colour",
    );
    h.stop().await;
    tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_tcp_api_speaks_tls_only_and_trusts_only_its_ca() {
    let h = Harness::start(Agent::Answers, true).await;
    let status: StatusView = h.tcp(Some(TOKEN)).get("/v1/status").await.unwrap();
    assert_eq!(status.gateway, "gw-use1-a");
    // Plain HTTP to the TLS port: the handshake fails, no answer.
    let plain = ApiClient::new(Endpoint::Http(h.tcp_addr().to_string()))
        .request_raw("GET", "/v1/status", &[], None)
        .await;
    assert!(matches!(plain, Err(ClientError::Http { .. })), "{plain:?}");
    // A client that trusts another CA refuses the server.
    let other = tempfile::tempdir().unwrap();
    let stranger = ApiClient::new(Endpoint::Https {
        addr: h.tcp_addr().to_string(),
        token: Some(TOKEN.into()),
        trust: TlsTrust::from_pem_file(&ApiTls::create(other.path()).ca).unwrap(),
    });
    let err = stranger.get::<StatusView>("/v1/status").await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    h.stop().await;
}

/// Reads from `stream` until the server closes it (or 5 s pass); returns when, counted from
/// `since`.
async fn closed_after(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    since: std::time::Instant,
) -> Duration {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let read_until_eof = async { while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {} };
    tokio::time::timeout(Duration::from_secs(5), read_until_eof)
        .await
        .expect("the server closes the connection");
    since.elapsed()
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_after_the_read_timeout() {
    use tokio::io::AsyncWriteExt;
    // The harness's read timeout is 1 s.
    let h = Harness::start(Agent::Answers, true).await;
    let socket = h.config.socket.clone().unwrap();

    // Slow loris: a request head trickled a byte every 100 ms is cut at 1 s.
    let mut loris = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let start = std::time::Instant::now();
    loris
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (mut read, mut write) = loris.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..50 {
            if write.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let took = closed_after(&mut read, start).await;
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "slow head cut after {took:?}"
    );
    trickle.abort();

    // A kept-alive connection that sends nothing more is closed as idle.
    let mut idle = tokio::net::UnixStream::connect(&socket).await.unwrap();
    idle.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let took = closed_after(&mut idle, std::time::Instant::now()).await;
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "idle connection closed after {took:?}"
    );

    // A TCP client that never starts its TLS handshake is cut too.
    let mut silent = tokio::net::TcpStream::connect(h.tcp_addr()).await.unwrap();
    let took = closed_after(&mut silent, std::time::Instant::now()).await;
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "silent TLS client cut after {took:?}"
    );

    // A body that does not arrive within the read timeout is refused with 408, and changes
    // nothing; others are served meanwhile.
    let mut slow_json = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let start = std::time::Instant::now();
    slow_json
        .write_all(
            b"PUT /v1/links/1/admin HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"state\"",
        )
        .await
        .unwrap();
    assert_eq!(h.raw("GET", "/v1/status", None).await.status, 200);
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut slow_json, &mut answer)
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("not received within 1000 ms"), "{answer}");
    assert!(start.elapsed() < Duration::from_millis(2500));
    assert_eq!(h.commands_seen.load(Ordering::SeqCst), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_request_head_over_16_kib_is_refused() {
    let h = Harness::start(Agent::Answers, false).await;
    let big = "x".repeat(dwcp_agent::http::MAX_HEAD_BYTES);
    let r = h
        .client
        .request_raw("GET", "/v1/status", &[("x-padding", &big)], None)
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    let r = h
        .client
        .request_raw(
            "GET",
            "/v1/status",
            &[("x-padding", &big[..8 * 1024])],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    h.stop().await;
}

/// `api_ok_under_idle_flood`: while 2,000 connections that send nothing are held open on the
/// TLS port, an operator's request is answered within a second, and none of them was shed
/// to make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_while_2000_idle_connections_are_held() {
    let h = Harness::start(Agent::Answers, true).await;
    let client = h.tcp(Some(TOKEN));
    for target in [
        FloodTarget::Tcp(h.tcp_addr()),
        FloodTarget::Unix(h.config.socket.clone().unwrap()),
    ] {
        let flood = under_idle_flood(&target, 2000, client.get::<StatusView>("/v1/status"))
            .await
            .unwrap();
        let status = flood.answer.unwrap();
        assert_eq!(status.gateway, "gw-use1-a");
        println!(
            "{target:?}: answered in {:?} with {} of {} idle connections open",
            flood.took, flood.still_open, flood.opened
        );
        assert!(flood.took < Duration::from_secs(1), "{:?}", flood.took);
        assert_eq!(flood.still_open, 2000);
    }
    h.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(Arc::new(three_region_snapshot()));
    let handle = AgentHandle {
        snapshot: rx,
        events: broadcast::channel(1).0,
        commands: mpsc::channel(1).0,
    };
    let config = ApiConfig {
        socket: Some(dir.path().join("api.sock")),
        max_connections: 4,
        read_timeout_ms: 1000,
        ..ApiConfig::default()
    };
    let api = RunningApi::start(&config, ApiContext::new(handle, &config))
        .await
        .unwrap();
    let socket = dir.path().join("api.sock");
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let took = closed_after(&mut fifth, std::time::Instant::now()).await;
    assert!(took < Duration::from_millis(500), "closed after {took:?}");
    // Once the idle ones are cut (read timeout), there is room again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let client = ApiClient::new(Endpoint::Unix(socket));
    let _: StatusView = client.get("/v1/status").await.unwrap();
    drop(held);
    api.shutdown().await.unwrap();
}

/// Property tests of the request parsers, at the router: whatever body, path or query a
/// request carries, the answer is a JSON error of 4xx or a success, never a 5xx or a panic.
mod fuzz {
    use super::*;
    use axum::body::Body;
    use dwcp_control::bandwidth::MemoryStore;
    use proptest::prelude::*;
    use tower::ServiceExt;

    /// The router of a running agent (reservations in memory, commands answered).
    fn router(rt: &tokio::runtime::Runtime) -> axum::Router {
        rt.block_on(async {
            let snapshot = three_region_snapshot();
            let (mut manager, _) = ReservationManager::open(
                Box::new(MemoryStore::default()),
                network_of(&snapshot),
                ManagerConfig::default(),
            )
            .unwrap();
            let (snap_tx, snap_rx) = watch::channel(Arc::new(snapshot));
            let (events, _) = broadcast::channel(64);
            publish_reservations(&mut manager, &snap_tx, &events);
            let (cmd_tx, cmd_rx) = mpsc::channel(8);
            tokio::spawn(apply_commands(
                cmd_rx,
                snap_tx,
                events.clone(),
                manager,
                Arc::new(AtomicUsize::new(0)),
            ));
            let config = ApiConfig {
                command_timeout_ms: 2000,
                ..ApiConfig::default()
            };
            let handle = AgentHandle {
                snapshot: snap_rx,
                events,
                commands: cmd_tx,
            };
            dwcp_agent::api::router(ApiContext::new(handle, &config))
        })
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            prop::sample::select(vec![
                "owner",
                "source",
                "destination",
                "class",
                "rate",
                "start",
                "end",
                "path",
                "priority",
                "state",
                "id",
                "note",
            ])
            .prop_map(str::to_string),
            "[a-z_]{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            prop::sample::select(vec![
                "us-east-1",
                "eu-west-1",
                "realtime",
                "bulk",
                "1M",
                "10G",
                "-1M",
                "1e308M",
                "up",
                "down",
                "",
                "+2h",
            ])
            .prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(key.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A valid reservation request with some fields removed, replaced or added.
    fn mutated_reservation() -> impl Strategy<Value = Value> {
        let valid = json!({
            "owner": "video-team", "source": "us-east-1", "destination": "eu-west-1",
            "class": "realtime", "rate": "1M", "end": unix_now() + 3600, "path": [1],
        });
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "owner",
                    "source",
                    "destination",
                    "class",
                    "rate",
                    "start",
                    "end",
                    "path",
                    "priority",
                    "extra",
                ]),
                prop::option::of(json_value()),
            ),
            1..4,
        )
        .prop_map(move |edits| {
            let mut v = valid.clone();
            for (key, value) in edits {
                match value {
                    Some(value) => v[key] = value,
                    None => {
                        v.as_object_mut().unwrap().remove(key);
                    }
                }
            }
            v
        })
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            json_value().prop_map(|v| v.to_string().into_bytes()),
            mutated_reservation().prop_map(|v| v.to_string().into_bytes()),
            json_value().prop_map(|v| json!({ "state": v }).to_string().into_bytes()),
            json_value().prop_map(|v| json!({ "end": v }).to_string().into_bytes()),
        ]
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "1",
                "3",
                "0",
                "use1-euw1",
                "99999999999999999999",
                "-1",
                "%20",
                "%ff",
            ])
            .prop_map(str::to_string),
            "[a-zA-Z0-9._~-]{0,12}",
        ]
    }

    fn request() -> impl Strategy<Value = (&'static str, String)> {
        prop_oneof![
            Just(("POST", "/v1/reservations".to_string())),
            segment().prop_map(|id| ("PATCH", format!("/v1/reservations/{id}"))),
            segment().prop_map(|id| ("DELETE", format!("/v1/reservations/{id}"))),
            segment().prop_map(|l| ("PUT", format!("/v1/links/{l}/admin"))),
            "[a-z=&%0-9]{0,20}".prop_map(|q| ("GET", format!("/v1/history?{q}"))),
            "[a-z=&%0-9-]{0,20}".prop_map(|q| ("GET", format!("/v1/events?{q}"))),
            Just(("POST", "/v1/reload".to_string())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_request_body_is_answered_without_a_5xx(
            (method, uri) in request(),
            body in body(),
            json_type in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let router = router(&rt);
            let mut req = axum::http::Request::builder().method(method).uri(&uri);
            if json_type {
                req = req.header("content-type", "application/json");
            }
            let req = req.body(Body::from(body.clone())).unwrap();
            let status = rt.block_on(router.oneshot(req)).unwrap().status();
            prop_assert!(
                status.as_u16() < 500,
                "{method} {uri} {:?} answered {status}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}
