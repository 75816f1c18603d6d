//! The routes of API v1. Reads answer from the agent's latest snapshot (the gateways from the
//! cluster store); changes go to the agent as commands (links, reload, reservations).

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::{Method, StatusCode, Uri},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse,
    },
    Json,
};
use futures_util::Stream;
use tokio::sync::oneshot;
use tokio_stream::{
    wrappers::{errors::BroadcastStreamRecvError, BroadcastStream},
    StreamExt,
};

use super::{
    error::ApiError,
    extract::{ApiJson, ApiPath, ApiQuery},
    views::*,
    ApiContext,
};
use dwcp_control::bandwidth::{
    BandwidthError, ExtendRequest, Reservation, ReservationId, ReservationOp, ReservationReply,
    ReservationRequest,
};
use dwcp_control::store::{GatewayView, PublishedTopology};
use dwcp_control::topology::TopologyConfig;

use crate::agent::{
    AgentCommand, AgentEvent, AgentSnapshot, ClassView, LinkView, LsdbView, ReservationsView,
    RouteChange, RouteView, TunnelView,
};

type ApiResult<T> = Result<T, ApiError>;

pub async fn status(State(ctx): State<ApiContext>) -> Json<StatusView> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Json(StatusView::new(&ctx.snapshot(), now_ms))
}

pub async fn topology(State(ctx): State<ApiContext>) -> Json<TopologyView> {
    Json(TopologyView::new(&ctx.snapshot()))
}

pub async fn links(State(ctx): State<ApiContext>) -> Json<Vec<LinkView>> {
    Json(ctx.snapshot().links.clone())
}

/// A link by id (`3`) or by name (`use1-aps1`).
fn find_link<'a>(s: &'a AgentSnapshot, key: &str) -> ApiResult<&'a LinkView> {
    let by_id = key.parse::<u32>().ok();
    s.links
        .iter()
        .find(|l| Some(l.id) == by_id || l.name == key)
        .ok_or_else(|| ApiError::NotFound {
            what: "link",
            id: key.to_string(),
        })
}

pub async fn link(
    State(ctx): State<ApiContext>,
    ApiPath(key): ApiPath<String>,
) -> ApiResult<Json<LinkView>> {
    let s = ctx.snapshot();
    Ok(Json(find_link(&s, &key)?.clone()))
}

pub async fn set_link_admin(
    State(ctx): State<ApiContext>,
    ApiPath(key): ApiPath<String>,
    ApiJson(req): ApiJson<AdminRequest>,
) -> ApiResult<Json<AdminResponse>> {
    let (id, name) = {
        let s = ctx.snapshot();
        let l = find_link(&s, &key)?;
        (l.id, l.name.clone())
    };
    let (reply, rx) = oneshot::channel();
    ctx.command(
        AgentCommand::SetLinkAdmin {
            link: id,
            up: req.state == AdminState::Up,
            reply,
        },
        rx,
    )
    .await?;
    Ok(Json(AdminResponse {
        link: id,
        name,
        state: req.state,
    }))
}

pub async fn reload(State(ctx): State<ApiContext>) -> ApiResult<Json<ReloadResponse>> {
    let (reply, rx) = oneshot::channel();
    let generation = ctx.command(AgentCommand::Reload { reply }, rx).await?;
    Ok(Json(ReloadResponse { generation }))
}

pub async fn routes(State(ctx): State<ApiContext>) -> Json<Vec<RouteView>> {
    Json(ctx.snapshot().routes.clone())
}

pub async fn route(
    State(ctx): State<ApiContext>,
    ApiPath(destination): ApiPath<String>,
) -> ApiResult<Json<RouteView>> {
    ctx.snapshot()
        .routes
        .iter()
        .find(|r| r.destination == destination)
        .cloned()
        .map(Json)
        .ok_or(ApiError::NotFound {
            what: "route to region",
            id: destination,
        })
}

pub async fn history(
    State(ctx): State<ApiContext>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<Vec<std::sync::Arc<RouteChange>>>> {
    let s = ctx.snapshot();
    if let Some(d) = &q.destination {
        if !s.regions.contains(d) {
            return Err(ApiError::NotFound {
                what: "region",
                id: d.clone(),
            });
        }
    }
    let mut changes: Vec<std::sync::Arc<RouteChange>> = s
        .history
        .iter()
        .filter(|c| q.destination.as_ref().is_none_or(|d| &c.destination == d))
        .cloned()
        .collect();
    changes.sort_by_key(|c| c.at_unix_ms);
    if let Some(limit) = q.limit {
        let skip = changes.len().saturating_sub(limit);
        changes.drain(..skip);
    }
    Ok(Json(changes))
}

pub async fn lsdb(State(ctx): State<ApiContext>) -> ApiResult<Json<LsdbView>> {
    let s = ctx.snapshot();
    let lsdb = s.lsdb.as_deref().ok_or(ApiError::LinkStateOff)?;
    Ok(Json(lsdb.clone()))
}

/// Validates the file's topology (errors name its lines) and publishes it as the cluster
/// store's next generation; every gateway's watch applies it.
pub async fn push_topology(
    State(ctx): State<ApiContext>,
    ApiJson(file): ApiJson<TopologyFile>,
) -> ApiResult<Json<TopologyChanges>> {
    let store = ctx.cluster_store.as_ref().ok_or(ApiError::NoClusterStore)?;
    let (new, source) = PublishedTopology::source_of(&file.source)?;
    let current = store.topology().await?;
    let changes = changes_from(current.as_ref(), &new)?;
    let published = store.publish_topology(&source).await?;
    Ok(Json(TopologyChanges {
        from_generation: current.map(|c| c.generation),
        generation: Some(published.generation),
        changes,
    }))
}

/// What publishing the file's topology would change in the cluster store's.
pub async fn diff_topology(
    State(ctx): State<ApiContext>,
    ApiJson(file): ApiJson<TopologyFile>,
) -> ApiResult<Json<TopologyChanges>> {
    let store = ctx.cluster_store.as_ref().ok_or(ApiError::NoClusterStore)?;
    let (new, _) = PublishedTopology::source_of(&file.source)?;
    let current = store.topology().await?;
    Ok(Json(TopologyChanges {
        changes: changes_from(current.as_ref(), &new)?,
        from_generation: current.map(|c| c.generation),
        generation: None,
    }))
}

/// From the published topology, or from nothing.
fn changes_from(
    current: Option<&PublishedTopology>,
    new: &TopologyConfig,
) -> ApiResult<Vec<String>> {
    let current = match current {
        Some(c) => TopologyConfig::from_toml_str(&c.source)?,
        None => TopologyConfig::default(),
    };
    Ok(current.diff(new))
}

/// Read from the store at each request: a gateway that stopped renewing is gone from the
/// listing when etcd expires its lease, whatever this gateway's snapshot says.
pub async fn gateways(State(ctx): State<ApiContext>) -> ApiResult<Json<Vec<GatewayView>>> {
    let store = ctx.cluster_store.as_ref().ok_or(ApiError::NoClusterStore)?;
    Ok(Json(store.gateways().await?))
}

pub async fn tunnels(State(ctx): State<ApiContext>) -> Json<Vec<TunnelView>> {
    Json(ctx.snapshot().tunnels.clone())
}

pub async fn classes(State(ctx): State<ApiContext>) -> Json<Vec<ClassView>> {
    Json(ctx.snapshot().classes.clone())
}

pub async fn flows(State(ctx): State<ApiContext>) -> Json<dwcp_control::traffic::FlowsView> {
    Json(ctx.snapshot().flows.clone())
}

fn reservation_id(text: &str) -> ApiResult<ReservationId> {
    text.parse::<u64>().map(ReservationId).map_err(|_| {
        ApiError::BadRequest(format!(
            "reservation id {text:?} is not a whole number (ids are 1, 2, ...)"
        ))
    })
}

/// The reservations of snapshot `s`; an agent without a store keeps none.
fn reservations_of(s: &AgentSnapshot) -> ApiResult<&ReservationsView> {
    s.reservations
        .as_deref()
        .ok_or(ApiError::Reservation(BandwidthError::NoReservations))
}

pub async fn reservations(State(ctx): State<ApiContext>) -> ApiResult<Json<Vec<Reservation>>> {
    Ok(Json(reservations_of(&ctx.snapshot())?.stored.clone()))
}

pub async fn reservation(
    State(ctx): State<ApiContext>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Reservation>> {
    let id = reservation_id(&id)?;
    reservations_of(&ctx.snapshot())?
        .stored
        .iter()
        .find(|r| r.id == id)
        .cloned()
        .map(Json)
        .ok_or(ApiError::Reservation(BandwidthError::NotFound(id)))
}

/// Answers `Admission`.
pub async fn create_reservation(
    State(ctx): State<ApiContext>,
    ApiJson(req): ApiJson<ReservationRequest>,
) -> ApiResult<(StatusCode, Json<ReservationReply>)> {
    let admission = ctx
        .reservation(ReservationOp::Create(Box::new(req)))
        .await?;
    Ok((StatusCode::CREATED, Json(admission)))
}

/// Answers `Admission`.
pub async fn extend_reservation(
    State(ctx): State<ApiContext>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ExtendRequest>,
) -> ApiResult<Json<ReservationReply>> {
    let id = reservation_id(&id)?;
    ctx.reservation(ReservationOp::Extend { id, request })
        .await
        .map(Json)
}

/// Answers the cancelled `Reservation`.
pub async fn cancel_reservation(
    State(ctx): State<ApiContext>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ReservationReply>> {
    let id = reservation_id(&id)?;
    ctx.reservation(ReservationOp::Cancel { id })
        .await
        .map(Json)
}

/// Server-sent events: `agent` (link, route and config events), `reservation` (reservation
/// changes) and `lagged` (this stream fell behind and lost that many events; re-read the
/// state). Each `data:` is one JSON object. With `?owner=NAME` only the changes of NAME's
/// reservations are sent (created, extended, preempted, expired, ...): how a subscriber learns
/// that its reservation was taken away.
pub async fn events(
    State(ctx): State<ApiContext>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream_name = if q.owner.is_some() {
        "reservation"
    } else {
        "agent"
    };
    let owner = q.owner;
    let events = BroadcastStream::new(ctx.handle.events.subscribe())
        .filter(move |item| match (item, &owner) {
            (Ok(AgentEvent::Reservation(e)), Some(o)) => e.owner() == o,
            (Ok(_), Some(_)) => false,
            _ => true,
        })
        .map(move |item| {
            Ok(match item {
                Ok(e) => sse_event(&e),
                Err(BroadcastStreamRecvError::Lagged(n)) => Event::default()
                    .event("lagged")
                    .data(serde_json::json!({ "stream": stream_name, "lost": n }).to_string()),
            })
        });
    let events = futures_util::StreamExt::take_until(events, ctx.closed());
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A reservation change as a `reservation` event (the change itself), anything else as an
/// `agent` event.
fn sse_event(e: &AgentEvent) -> Event {
    let (name, json) = match e {
        AgentEvent::Reservation(r) => ("reservation", serde_json::to_string(r)),
        e => ("agent", serde_json::to_string(e)),
    };
    match json {
        Ok(json) => Event::default().event(name).data(json),
        Err(e) => Event::default()
            .event("error")
            .data(serde_json::json!({ "error": e.to_string() }).to_string()),
    }
}

pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> impl IntoResponse {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

impl ApiContext {
    pub(super) fn snapshot(&self) -> std::sync::Arc<AgentSnapshot> {
        self.handle.snapshot.borrow().clone()
    }

    /// Sends a reservation change to the agent, if it keeps reservations, and waits for its
    /// answer.
    pub(super) async fn reservation(&self, op: ReservationOp) -> ApiResult<ReservationReply> {
        reservations_of(&self.snapshot())?;
        let (reply, rx) = oneshot::channel();
        self.command(AgentCommand::Reservation { op, reply }, rx)
            .await
    }

    /// Sends `cmd` to the agent and waits for its answer on `rx`, each step within the
    /// command timeout.
    pub(super) async fn command<T, E>(
        &self,
        cmd: AgentCommand,
        rx: oneshot::Receiver<Result<T, E>>,
    ) -> ApiResult<T>
    where
        ApiError: From<E>,
    {
        let ms = self.command_timeout.as_millis() as u64;
        tokio::time::timeout(self.command_timeout, self.handle.commands.send(cmd))
            .await
            .map_err(|_| ApiError::AgentTimeout(ms))?
            .map_err(|_| ApiError::AgentGone)?;
        tokio::time::timeout(self.command_timeout, rx)
            .await
            .map_err(|_| ApiError::AgentTimeout(ms))?
            .map_err(|_| ApiError::AgentGone)?
            .map_err(ApiError::from)
    }
}
