//! The console's HTTP face: the page and its assets, sign-in, the JSON API the page calls
//! (each a planner query or command over NATS, on behalf of the signed-in operator), the
//! live stream, and `/healthz`, `/readyz`, `/metrics`.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /`, `/console.js`, `/console.css` | anyone | the page (it holds no data) |
//! | `GET /healthz`, `/readyz`, `/metrics` | anyone | process, NATS connection, counters |
//! | `POST /api/signin`, `/api/signout` | anyone / signed in | cookie session |
//! | `GET /api/session` | signed in | name, role, CSRF token, namespaces |
//! | `GET /api/rollouts`, `/api/rollouts/{ns}/{id}`, `…/audit` | signed in | list, status and counts, audit |
//! | `GET /api/flags`, `/api/flags/{ns}/{key}` | signed in | flags with their serve |
//! | `POST /api/plan`, `/api/explain` | signed in | plan preview, one entity explained |
//! | `POST /api/rollouts`, `/api/rollouts/{ns}/{id}/{verb}` | operators | create, pause, resume, continue, approve (as the signed-in operator), promote, stop, rollback, delete |
//! | `GET /api/events` | signed in | server-sent events ([`crate::live`]) |
//! | `POST /api/alerts/{ns}?action=&match=` | operators (bearer token) | Alertmanager's webhook: each firing alert to `rollout.alert.<ns>` ([`crate::alertmanager`]) |
//!
//! Every refusal is JSON `{"error": {"code", "message", "field"}}` with a fitting status:
//! the planner's own code and words for its refusals, `unauthenticated` (401) without a
//! valid sign-in, `permission_denied` (403) for a viewer's action or a missing CSRF token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream::{self, Stream, StreamExt};
use rollout_core::{Attributes, Entity, Lifecycle};
use rollout_sdk::specs::{self, SpecFormat};
use rollout_sdk::{CommandClient, ErrorKind, EvalClient};
use rollout_wire::subjects::Namespace;

use crate::alertmanager;
use rollout_wire::{AuditQuery, ErrorCode, FlagListQuery, ListState, RolloutListQuery};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::auth::{Credential, Operator, Role, CSRF_HEADER, SESSION_COOKIE};
use crate::Console;

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// Largest request body: a pasted rollout spec.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// The console's routes.
pub(crate) fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/console.js", get(script))
        .route("/console.css", get(stylesheet))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/signin", post(sign_in))
        .route("/api/signout", post(sign_out))
        .route("/api/session", get(session))
        .route("/api/rollouts", get(list_rollouts).post(create_rollout))
        .route("/api/rollouts/{namespace}/{rollout_id}", get(rollout))
        .route("/api/rollouts/{namespace}/{rollout_id}/audit", get(audit))
        .route("/api/rollouts/{namespace}/{rollout_id}/{verb}", post(act))
        .route("/api/flags", get(list_flags))
        .route("/api/flags/{namespace}/{key}", get(flag))
        .route("/api/plan", post(plan))
        .route("/api/explain", post(explain))
        .route("/api/alerts/{namespace}", post(alertmanager_webhook))
        .route("/api/events", get(events))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(console)
}

/// A refusal, as the page shows it next to what was tried.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
        }
    }

    fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "sign in first: no session, or it has expired",
        )
    }

    fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message)
    }

    /// A planner (or evaluator) refusal or an unanswered request, in the planner's words.
    fn from_sdk(error: &rollout_sdk::Error) -> ApiError {
        let status = match error.kind() {
            ErrorKind::Refused => match error.code() {
                ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
                ErrorCode::NotFound => StatusCode::NOT_FOUND,
                ErrorCode::Conflict | ErrorCode::FailedPrecondition => StatusCode::CONFLICT,
                ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
                ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            ErrorKind::NoResponders | ErrorKind::Transport => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Decode => StatusCode::BAD_GATEWAY,
        };
        ApiError {
            status,
            code: error.code().as_str(),
            message: error.message().to_owned(),
            field: error.field().map(str::to_owned),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        json_response(self.status, &body)
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn ok(body: &impl serde::Serialize) -> ApiResult {
    let value = serde_json::to_value(body).map_err(|error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    })?;
    Ok(json_response(StatusCode::OK, &value))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    response
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn readyz(State(console): State<Arc<Console>>) -> Response {
    match rollout_runtime::probes::nats_readiness(&console.nats) {
        Ok(()) => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Err(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not ready", "reason": reason}),
        ),
    }
}

async fn metrics(State(console): State<Arc<Console>>) -> Response {
    let mut response = console.metrics.render().into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

impl Console {
    /// Who sent the request: a bearer token, else the session cookie.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Operator, ApiError> {
        if let Some(authorization) = headers.get(AUTHORIZATION) {
            let token = authorization
                .to_str()
                .ok()
                .and_then(|value| value.strip_prefix("Bearer "))
                .ok_or_else(ApiError::unauthenticated)?;
            return self
                .authority
                .bearer(token.trim())
                .ok_or_else(ApiError::unauthenticated);
        }
        let cookie = cookie_value(headers).ok_or_else(ApiError::unauthenticated)?;
        self.authority
            .session(cookie, SystemTime::now())
            .ok_or_else(ApiError::unauthenticated)
    }

    /// Who sent a state-changing request, checked for the operator role and, for cookie
    /// sessions, the CSRF token. `what` names the action in the refusal.
    fn authorize(&self, headers: &HeaderMap, what: &str) -> Result<Operator, ApiError> {
        let operator = self.authenticate(headers)?;
        if operator.credential == Credential::Cookie {
            let cookie = cookie_value(headers).unwrap_or_default();
            let presented = headers
                .get(CSRF_HEADER)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            if !self.authority.csrf_matches(cookie, presented) {
                return Err(ApiError::forbidden(
                    "missing or wrong X-CSRF-Token: reload the page and try again",
                ));
            }
        }
        if operator.role != Role::Operator {
            return Err(ApiError::forbidden(format!(
                "{} is a viewer and may not {what}: viewers see everything and change nothing",
                operator.name
            )));
        }
        Ok(operator)
    }

    fn namespace(&self, name: &str) -> Result<Namespace, ApiError> {
        let namespace = Namespace::new(name)
            .map_err(|error| ApiError::invalid("namespace", error.message()))?;
        if !self.settings.namespaces.0.iter().any(|shown| shown == name) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "namespace {name:?} is not one this console shows ({})",
                    self.settings.namespaces.0.join(", ")
                ),
            ));
        }
        Ok(namespace)
    }

    /// The planner client of `namespace`, acting as `operator`.
    fn planner(&self, namespace: Namespace, operator: &Operator) -> CommandClient {
        CommandClient::new(self.nats.clone(), namespace)
            .with_subjects(self.subjects.clone())
            .with_timeout(self.settings.request_timeout)
            .with_actor(operator.name.clone())
    }
}

/// A JSON request body; a refusal names what is wrong with it.
/// A request body: a JSON object of `T`'s shape. Serde would also read a struct from an
/// array of its fields in order (`[]` for one whose fields all have defaults); every body
/// of this API is an object, so anything else is refused first.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::invalid("body", error.to_string()))?;
    if !value.is_object() {
        return Err(ApiError::invalid("body", "expected a JSON object"));
    }
    serde_json::from_value(value).map_err(|error| ApiError::invalid("body", error.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    name: String,
    password: String,
}

fn session_cookie(console: &Console, value: &str, max_age: Duration) -> HeaderValue {
    let secure = if console.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.as_secs()
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn session_body(console: &Console, operator: &Operator, cookie: Option<&str>) -> Value {
    json!({
        "name": operator.name,
        "role": operator.role.as_str(),
        "csrf": cookie.map(|cookie| console.authority.csrf_token(cookie)),
        "expires_at": operator.expires_at,
        "namespaces": console.settings.namespaces.0,
        "trace_url": console.settings.trace_url,
    })
}

async fn sign_in(State(console): State<Arc<Console>>, body: Bytes) -> ApiResult {
    let request: SignIn = parse_body(&body)?;
    let authority = Arc::clone(&console);
    // argon2 takes tens of milliseconds of CPU: off the reactor
    let signed_in = tokio::task::spawn_blocking(move || {
        authority
            .authority
            .sign_in(&request.name, &request.password, SystemTime::now())
    })
    .await
    .ok()
    .flatten();
    console.metrics.sign_in(signed_in.is_some());
    let Some((operator, cookie)) = signed_in else {
        console.metrics.request("signin", 401);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "wrong name or password",
        ));
    };
    tracing::info!(operator = %operator.name, role = operator.role.as_str(), "signed in");
    let mut response = json_response(
        StatusCode::OK,
        &session_body(&console, &operator, Some(&cookie)),
    );
    response.headers_mut().insert(
        SET_COOKIE,
        session_cookie(&console, &cookie, console.authority.ttl()),
    );
    Ok(response)
}

async fn sign_out(State(console): State<Arc<Console>>) -> Response {
    let mut response = json_response(StatusCode::OK, &json!({"signed_out": true}));
    response
        .headers_mut()
        .insert(SET_COOKIE, session_cookie(&console, "", Duration::ZERO));
    response
}

async fn session(State(console): State<Arc<Console>>, headers: HeaderMap) -> ApiResult {
    let operator = console.authenticate(&headers)?;
    let cookie = (operator.credential == Credential::Cookie)
        .then(|| cookie_value(&headers))
        .flatten();
    Ok(json_response(
        StatusCode::OK,
        &session_body(&console, &operator, cookie),
    ))
}

/// Query parameters whose rejection (a page that is no number) is a JSON `invalid_argument`
/// like every other refusal.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Params<T>, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(params)| Params(params))
            .map_err(|rejection| ApiError::invalid("query", rejection.body_text()))
    }
}

#[derive(Deserialize)]
struct ListParams {
    namespace: Option<String>,
    flag: Option<String>,
    /// `active` (default), `finished`, or one lifecycle state.
    state: Option<String>,
    page: Option<u32>,
}

impl Console {
    fn namespace_or_first(&self, name: Option<&str>) -> Result<Namespace, ApiError> {
        match name.filter(|name| !name.is_empty()) {
            Some(name) => self.namespace(name),
            None => self.namespace(
                self.settings
                    .namespaces
                    .0
                    .first()
                    .map_or("default", String::as_str),
            ),
        }
    }
}

fn list_query(params: &ListParams) -> Result<RolloutListQuery, ApiError> {
    let mut query = RolloutListQuery {
        flag: params.flag.clone().filter(|flag| !flag.is_empty()),
        page: params.page,
        page_size: Some(50),
        ..RolloutListQuery::default()
    };
    match params.state.as_deref().unwrap_or("active") {
        "active" => query.state = ListState::Active,
        "finished" => query.state = ListState::Finished,
        other => {
            let lifecycle: Lifecycle = serde_json::from_value(Value::String(other.to_owned()))
                .map_err(|_| {
                    ApiError::invalid(
                        "state",
                        format!("unknown state {other:?}: expected active, finished, queued, running, paused, rolling_back, completed, stopped or rolled_back"),
                    )
                })?;
            query.state = if lifecycle.is_active() {
                ListState::Active
            } else {
                ListState::Finished
            };
            query.lifecycle = Some(lifecycle);
        }
    }
    Ok(query)
}

async fn list_rollouts(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Params(params): Params<ListParams>,
) -> ApiResult {
    let operator = console.authenticate(&headers)?;
    let namespace = console.namespace_or_first(params.namespace.as_deref())?;
    let query = list_query(&params)?;
    let list = console
        .planner(namespace.clone(), &operator)
        .list_rollouts(query)
        .await
        .map_err(|error| ApiError::from_sdk(&error))?;
    ok(
        &json!({"namespace": namespace.as_str(), "rollouts": list.rollouts, "next_page": list.next_page}),
    )
}

async fn rollout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((namespace, rollout_id)): Path<(String, String)>,
) -> ApiResult {
    let operator = console.authenticate(&headers)?;
    let namespace = console.namespace(&namespace)?;
    let planner = console.planner(namespace.clone(), &operator);
    let (status, counts) = tokio::join!(
        planner.rollout_status(&rollout_id),
        planner.rollout_counts(&rollout_id)
    );
    let status = status.map_err(|error| ApiError::from_sdk(&error))?;
    // counts are figures beside the status: a failure to read them is shown, not fatal
    let counts = match counts {
        Ok(counts) => json!(counts),
        Err(error) => json!({"error": {"code": error.code().as_str(), "message": error.message()}}),
    };
    ok(&json!({"namespace": namespace.as_str(), "status": status, "counts": counts}))
}

#[derive(Deserialize)]
struct PageParams {
    page: Option<u32>,
}

async fn audit(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((namespace, rollout_id)): Path<(String, String)>,
    Params(params): Params<PageParams>,
) -> ApiResult {
    let operator = console.authenticate(&headers)?;
    let namespace = console.namespace(&namespace)?;
    let page = console
        .planner(namespace, &operator)
        .audit(AuditQuery {
            rollout_id: Some(rollout_id),
            flag: None,
            namespace: false,
            page: params.page,
            page_size: Some(20),
        })
        .await
        .map_err(|error| ApiError::from_sdk(&error))?;
    ok(&page)
}

#[derive(Deserialize)]
struct FlagParams {
    namespace: Option<String>,
    page: Option<u32>,
}

async fn list_flags(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Params(params): Params<FlagParams>,
) -> ApiResult {
    let operator = console.authenticate(&headers)?;
    let namespace = console.namespace_or_first(params.namespace.as_deref())?;
    let planner = console.planner(namespace.clone(), &operator);
    let (list, active) = tokio::join!(
        planner.list_flags(FlagListQuery {
            page: params.page,
            page_size: Some(100),
        }),
        planner.list_rollouts(RolloutListQuery {
            page_size: Some(100),
            ..RolloutListQuery::default()
        })
    );
    let list = list.map_err(|error| ApiError::from_sdk(&error))?;
    let shares: std::collections::HashMap<String, Option<f64>> = active
        .map(|active| {
            active
                .rollouts
                .into_iter()
                .map(|rollout| {
                    (
                        rollout.rollout_id,
                        rollout.share.map(|share| share.percentage()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // what each flag serves: its definition, read flag by flag (a page is at most 100)
    let definitions = futures_util::future::join_all(
        list.flags
            .iter()
            .map(|summary| planner.get_flag(&summary.key)),
    )
    .await;
    let flags: Vec<Value> = list
        .flags
        .iter()
        .zip(definitions)
        .map(|(summary, definition)| {
            let mut serve = match definition {
                Ok(result) if !result.flag.enabled => {
                    format!("{} to everyone (disabled)", result.flag.off_variation)
                }
                Ok(result) => result.flag.default.describe(),
                Err(error) => format!("unreadable: {}", error.message()),
            };
            if let Some(rollout) = &summary.active_rollout {
                match shares.get(rollout) {
                    Some(Some(share)) => {
                        serve.push_str(&format!("; rollout {rollout} at {share}%"))
                    }
                    _ => serve.push_str(&format!("; rollout {rollout} active")),
                }
            }
            let mut value = json!(summary);
            value["serve"] = Value::String(serve);
            value
        })
        .collect();
    ok(&json!({"namespace": namespace.as_str(), "flags": flags, "next_page": list.next_page}))
}

async fn flag(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((namespace, key)): Path<(String, String)>,
) -> ApiResult {
    let operator = console.authenticate(&headers)?;
    let namespace = console.namespace(&namespace)?;
    let flag = console
        .planner(namespace, &operator)
        .get_flag(&key)
        .await
        .map_err(|error| ApiError::from_sdk(&error))?;
    ok(&flag)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecText {
    namespace: String,
    /// The rollout spec as YAML or JSON, bare or under `rollout:`.
    spec: String,
}

/// Parses pasted spec text; a refusal names the line and field.
fn parse_spec(text: &str) -> Result<rollout_core::RolloutSpec, ApiError> {
    specs::parse_rollout_spec(text, SpecFormat::sniff(text), specs::local_now()).map_err(|error| {
        let position = match (error.line, error.column) {
            (Some(line), Some(column)) => format!(" (line {line}, column {column})"),
            (Some(line), None) => format!(" (line {line})"),
            _ => String::new(),
        };
        ApiError::invalid(
            error
                .field
                .map_or_else(|| "spec".to_owned(), |field| format!("spec.{field}")),
            format!("{}{position}", error.message),
        )
    })
}

async fn plan(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let operator = console.authenticate(&headers)?;
    let request: SpecText = parse_body(&body)?;
    let namespace = console.namespace(&request.namespace)?;
    let spec = parse_spec(&request.spec)?;
    let preview = console
        .planner(namespace, &operator)
        .plan(spec)
        .await
        .map_err(|error| ApiError::from_sdk(&error))?;
    ok(&preview)
}

async fn create_rollout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let operator = console.authorize(&headers, "create rollouts")?;
    let request: SpecText = parse_body(&body)?;
    let namespace = console.namespace(&request.namespace)?;
    let spec = parse_spec(&request.spec)?;
    let created = console
        .planner(namespace, &operator)
        .create_rollout(spec)
        .await;
    console.metrics.action("create", created.is_ok());
    let created = created.map_err(|error| ApiError::from_sdk(&error))?;
    tracing::info!(operator = %operator.name, rollout = %created.rollout_id, "rollout created");
    ok(&created)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// The share a `stop` keeps serving (the current one when absent).
    percentage: Option<f64>,
    /// The step the operator saw the rollout at: an `approve` of a step the rollout has
    /// since left is refused (`conflict`).
    expected_step: Option<usize>,
}

async fn act(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((namespace, rollout_id, verb)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    const VERBS: [&str; 9] = [
        "start", "pause", "resume", "continue", "approve", "promote", "stop", "rollback", "delete",
    ];
    if !VERBS.contains(&verb.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "unknown action {verb:?}: expected one of {}",
                VERBS.join(", ")
            ),
        ));
    }
    let operator = console.authorize(&headers, &format!("{verb} rollouts"))?;
    let namespace = console.namespace(&namespace)?;
    let action: ActionBody = if body.is_empty() {
        ActionBody::default()
    } else {
        parse_body(&body)?
    };
    let planner = console.planner(namespace, &operator);
    let reply = match verb.as_str() {
        "start" => planner
            .start_rollout(&rollout_id)
            .await
            .map(|result| json!(result)),
        "pause" => planner
            .pause_rollout(&rollout_id)
            .await
            .map(|result| json!(result)),
        "resume" => planner
            .resume_rollout(&rollout_id)
            .await
            .map(|result| json!(result)),
        "continue" => planner
            .continue_rollout(&rollout_id)
            .await
            .map(|result| json!(result)),
        "approve" => planner
            .approve_rollout(&rollout_id, action.expected_step)
            .await
            .map(|result| json!(result)),
        "promote" => planner
            .promote_rollout(&rollout_id)
            .await
            .map(|result| json!(result)),
        "stop" => planner
            .stop_rollout(&rollout_id, action.percentage)
            .await
            .map(|result| json!(result)),
        "rollback" => planner
            .rollback_rollout(&rollout_id)
            .await
            .map(|result| json!(result)),
        _ => planner
            .delete_rollout(&rollout_id)
            .await
            .map(|result| json!(result)),
    };
    console.metrics.action(&verb, reply.is_ok());
    let reply = reply.map_err(|error| ApiError::from_sdk(&error))?;
    tracing::info!(operator = %operator.name, rollout = %rollout_id, verb = %verb, "rollout action");
    ok(&reply)
}

/// Alertmanager's webhook receiver: every firing alert of the notification is sent to the
/// planner on `rollout.alert.<ns>` as the token's operator; the reply lists what each did
/// (or why the planner refused it).
async fn alertmanager_webhook(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
    Params(params): Params<alertmanager::ReceiverParams>,
    body: Bytes,
) -> ApiResult {
    let operator = console.authorize(&headers, "send alerts")?;
    let namespace = console.namespace(&namespace)?;
    let webhook: alertmanager::Webhook = parse_body(&body)?;
    let alerts = alertmanager::alerts(&webhook, &params)
        .map_err(|(field, message)| ApiError::invalid(field, message))?;
    let planner = console.planner(namespace, &operator);
    let mut results = Vec::with_capacity(alerts.len());
    for alert in &alerts {
        let outcome = planner.alert(alert).await;
        console.metrics.action("alert", outcome.is_ok());
        results.push(match outcome {
            Ok(result) => json!(result),
            Err(error) => json!({"alert_id": alert.alert_id, "error": error.wire()}),
        });
        tracing::info!(operator = %operator.name, alert = %alert.alert_id, "alert received");
    }
    ok(&json!({"alerts": results}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainRequest {
    namespace: String,
    flag: String,
    entity_id: String,
    #[serde(default)]
    attributes: Attributes,
}

async fn explain(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    console.authenticate(&headers)?;
    let request: ExplainRequest = parse_body(&body)?;
    let namespace = console.namespace(&request.namespace)?;
    if request.entity_id.trim().is_empty() {
        return Err(ApiError::invalid(
            "entity_id",
            "give the entity id to explain",
        ));
    }
    let evaluator = EvalClient::builder(console.nats.clone(), namespace)
        .subjects(console.subjects.clone())
        .timeout(console.settings.request_timeout)
        .cache_capacity(0)
        .connect()
        .await
        .map_err(|error| ApiError::from_sdk(&error))?;
    let entity = Entity {
        id: request.entity_id,
        attributes: request.attributes,
        ..Entity::default()
    };
    let result = evaluator
        .explain(&request.flag, &entity)
        .await
        .map_err(|error| ApiError::from_sdk(&error))?;
    ok(&result)
}

async fn events(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let operator = console.authenticate(&headers)?;
    let receiver = console.feed.subscribe();
    console.metrics.live_stream(1);
    let guard = StreamGuard(Arc::clone(&console));
    let hello = Event::default()
        .event("hello")
        .retry(Duration::from_secs(1))
        .data(json!({"name": operator.name}).to_string());
    let updates = BroadcastStream::new(receiver).map(move |item| {
        let _keep = &guard;
        Ok(match item {
            Ok(event) => Event::default()
                .event("change")
                .data(serde_json::to_string(&event).unwrap_or_default()),
            // fell behind: the page reloads what it shows
            Err(BroadcastStreamRecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
        })
    });
    // the stream ends at shutdown: the browser reconnects to the next console by itself
    let stopping = console.shutdown.clone().cancelled_owned();
    Ok(Sse::new(
        stream::once(async move { Ok(hello) })
            .chain(updates)
            .take_until(stopping),
    )
    .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Counts a live stream as closed when its response is dropped.
struct StreamGuard(Arc<Console>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.metrics.live_stream(-1);
    }
}
