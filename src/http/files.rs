//! Result files from local storage, as download managers and 3D viewers expect them (RFC 9110):
//! validators (`ETag`, `Last-Modified`) and their conditions, one byte range per request, `If-Range`,
//! and model types by extension. HEAD gets the same headers without the body.

use actix_web::body::SizedStream;
use actix_web::http::header::{self, EntityTag, HttpDate};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The response for `file` at `path`, honouring the request's conditions and `Range`.
pub(super) async fn respond(req: &HttpRequest, path: &Path) -> std::io::Result<HttpResponse> {
    let mut file = tokio::fs::File::open(path).await?;
    let meta = file.metadata().await?;
    let len = meta.len();
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let nanos = modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let etag = EntityTag::new_strong(format!("{len:x}-{nanos:x}"));
    let last_modified = HttpDate::from(modified);
    let mut resp = HttpResponse::build(StatusCode::OK);
    resp.insert_header((header::CONTENT_TYPE, content_type(path)))
        .insert_header((header::ETAG, etag.clone()))
        .insert_header((header::LAST_MODIFIED, last_modified))
        .insert_header((header::ACCEPT_RANGES, "bytes"));
    if let Some(status) = precondition(req, &etag, modified) {
        return Ok(resp.status(status).finish());
    }
    let (mut offset, mut length) = (0, len);
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    if let Some(range) = range.filter(|_| if_range_holds(req, &etag, modified)) {
        // A header that does not parse is ignored (RFC 9110 §14.2), and so are several
        // ranges: the whole file is a valid answer to them, and simpler for every client.
        if let Ok(parsed) = http_range_header::parse_range_header(range) {
            if parsed.ranges.len() == 1 {
                let Some(r) = parsed.validate(len).ok().and_then(|r| r.into_iter().next()) else {
                    return Ok(resp
                        .status(StatusCode::RANGE_NOT_SATISFIABLE)
                        .insert_header((header::CONTENT_RANGE, format!("bytes */{len}")))
                        .finish());
                };
                (offset, length) = (*r.start(), r.end() - r.start() + 1);
                resp.status(StatusCode::PARTIAL_CONTENT)
                    .insert_header((header::CONTENT_RANGE, format!("bytes {}-{}/{len}", r.start(), r.end())));
            }
        }
    }
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let body = tokio_util::io::ReaderStream::new(file.take(length));
    Ok(resp.body(SizedStream::new(length, body)))
}

/// 304 or 412 when a condition of the request says so (RFC 9110 §13.2.2 order).
fn precondition(req: &HttpRequest, etag: &EntityTag, modified: SystemTime) -> Option<StatusCode> {
    use actix_web::HttpMessage;
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match req.get_header::<header::IfMatch>() {
        Some(header::IfMatch::Items(tags)) if !tags.iter().any(|t| t.strong_eq(etag)) => {
            return Some(StatusCode::PRECONDITION_FAILED)
        }
        None => {
            if let Some(header::IfUnmodifiedSince(since)) = req.get_header() {
                if secs(modified) > secs(since.into()) {
                    return Some(StatusCode::PRECONDITION_FAILED);
                }
            }
        }
        _ => {}
    }
    match req.get_header::<header::IfNoneMatch>() {
        Some(header::IfNoneMatch::Any) => Some(StatusCode::NOT_MODIFIED),
        Some(header::IfNoneMatch::Items(tags)) => {
            tags.iter().any(|t| t.weak_eq(etag)).then_some(StatusCode::NOT_MODIFIED)
        }
        None => match req.get_header::<header::IfModifiedSince>() {
            Some(header::IfModifiedSince(since)) if secs(modified) <= secs(since.into()) => {
                Some(StatusCode::NOT_MODIFIED)
            }
            _ => None,
        },
    }
}

/// `If-Range`: the range applies only to the version the client names (else the whole file).
fn if_range_holds(req: &HttpRequest, etag: &EntityTag, modified: SystemTime) -> bool {
    let Some(value) = req.headers().get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if let Ok(tag) = value.parse::<EntityTag>() {
        return tag.strong_eq(etag);
    }
    match value.parse::<HttpDate>() {
        Ok(date) => {
            let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            secs(date.into()) == secs(modified)
        }
        Err(_) => false,
    }
}

/// The media type of a result by its extension; 3D formats by their registered names.
fn content_type(path: &Path) -> String {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "obj" => "model/obj".into(),
        "mtl" => "model/mtl".into(),
        "ply" => "application/ply".into(),
        "glb" => "model/gltf-binary".into(),
        "gltf" => "model/gltf+json".into(),
        "stl" => "model/stl".into(),
        "abc" | "sfm" | "bin" => "application/octet-stream".into(),
        "log" | "txt" => "text/plain; charset=utf-8".into(),
        _ => mime_guess::from_ext(&ext).first_or_octet_stream().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_have_their_media_types() {
        for (name, want) in [
            ("mesh.OBJ", "model/obj"),
            ("texturedMesh.mtl", "model/mtl"),
            ("points.ply", "application/ply"),
            ("scene.glb", "model/gltf-binary"),
            ("texture_1001.png", "image/png"),
            ("cameras.sfm", "application/octet-stream"),
            ("noext", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(name)), want, "{name}");
        }
    }
}
