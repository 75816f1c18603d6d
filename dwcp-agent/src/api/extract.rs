//! Extractors whose rejections are [`ApiError`]s (JSON bodies naming what was wrong) instead of
//! axum's plain-text ones.

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{request::Parts, StatusCode},
    Json,
};
use serde::de::DeserializeOwned;

use super::{error::ApiError, ApiContext};

/// A JSON body. Refused with 400 (syntax), 422 (shape), 415 (no JSON content type), 413
/// (larger than the configured limit) or 408 (not all there within the read timeout: a
/// client trickling its body would hold a connection for ever) before any handler runs.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ApiContext> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &ApiContext) -> Result<Self, ApiError> {
        let read = tokio::time::timeout(state.read_timeout, Json::<T>::from_request(req, state));
        let Ok(parsed) = read.await else {
            return Err(ApiError::BodyTimeout {
                ms: state.read_timeout.as_millis() as u64,
            });
        };
        match parsed {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge {
                limit: state.max_body_bytes,
            }),
            Err(r) => Err(ApiError::Rejected {
                status: r.status(),
                message: r.body_text(),
            }),
        }
    }
}

/// Path parameters.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<ApiContext> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiContext) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|r| ApiError::Rejected {
                status: r.status(),
                message: r.body_text(),
            })
    }
}

/// Query string parameters.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<ApiContext> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiContext) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r| ApiError::Rejected {
                status: r.status(),
                message: r.body_text(),
            })
    }
}
