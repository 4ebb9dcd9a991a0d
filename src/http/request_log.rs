//! One log line per request (method, path, status, bytes, latency, request id) and the
//! `x-request-id` header that ties an answer to its line. A client's own `x-request-id` is kept
//! when it is a short token, so ids can follow a request across services.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{Logger, Next};
use actix_web::HttpMessage;

/// The header carrying the request id, both ways.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, in the request's extensions for handlers that log it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The access log: the path without its query (a query may carry a signed link's token), and the
/// probes left out, as a load balancer calls them every few seconds.
pub fn logger() -> Logger {
    Logger::new(r#"%{x-request-id}o "%{method}xi %U" %s %bB %Dms"#)
        .custom_request_replace("method", |req| req.method().to_string())
        .exclude("/health")
        .exclude("/ready")
}

/// Gives each request an id (the client's, if usable; else a new UUIDv7) and returns it in
/// `x-request-id`.
pub async fn assign(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| usable(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.call(req).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, value);
    }
    Ok(resp)
}

/// A client id is kept only when short and plain, so that it cannot forge log lines.
fn usable(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(usable("0193f5c2-1e0b-7c2a-9f7e-3b5a1d2c4e6f"));
        assert!(usable("req_42"));
        assert!(!usable(""));
        assert!(!usable("a b"));
        assert!(!usable("x\"\nfake log line"));
        assert!(!usable(&"a".repeat(65)));
    }
}
