//! The web console: the files of `console/dist`, built from `console/src` by `scripts/console`
//! and embedded in the binary (no Node.js at run time, nothing fetched from elsewhere by the
//! browser), served at `/console/` under a strict Content-Security-Policy. The page finds the
//! API relative to its own address, so it works behind a reverse proxy under any path prefix.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/console", "GET").route(web::get().to(to_console)))
        .service(super::resource("/console/{file:.*}", "GET").route(web::get().to(asset)));
}

/// The page may run its own script and style only, connect to its own origin only, and show
/// images of its own or made in the page (thumbnails, textures: `blob:`).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
    connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An embedded file: name, type, bytes.
type File = (&'static str, &'static str, &'static [u8]);

const FILES: &[File] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../console/dist/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/dist/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/dist/app.css"),
    ),
    (
        "LICENSES.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../console/dist/LICENSES.txt"),
    ),
];

/// What the embedded build was made from (checked against `console/src` by a test).
#[cfg(test)]
const SOURCES_SHA256: &str = include_str!("../../console/dist/SOURCES.sha256");

/// Each file's strong ETag, from its bytes.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|(_, _, bytes)| format!("\"{:.16x}\"", Sha256::digest(bytes)))
        .collect()
});

/// `GET /console`: to `console/`, relative, so a path prefix in front of the service stays.
async fn to_console() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "console/"))
        .finish()
}

/// Whether a request to `/` comes from a browser (it asks for HTML), which gets the console.
pub(super) fn wants_html(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The redirect from `/` to the console, for browsers.
pub(super) fn from_root() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "console/"))
        .finish()
}

async fn asset(file: web::Path<String>, req: HttpRequest) -> HttpResponse {
    let name = match file.as_str() {
        "" => "index.html",
        other => other,
    };
    let Some(i) = FILES.iter().position(|(n, _, _)| *n == name) else {
        let missing = super::ApiError::new(crate::error::Code::NotFound, "no such console file");
        return actix_web::ResponseError::error_response(&missing);
    };
    let (_, kind, bytes) = FILES[i];
    let etag = &ETAGS[i];
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    resp.insert_header((header::CONTENT_TYPE, kind))
        .insert_header((header::ETAG, etag.as_str()))
        // Revalidated on each load: a new binary serves its own files at once.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"));
    if fresh {
        resp.finish()
    } else {
        resp.body(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The same digest as console/build.mjs: each source's path and bytes, in path order.
    fn sources_hash() -> String {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut files = vec![
            "build.mjs".to_string(),
            "package.json".into(),
            "package-lock.json".into(),
        ];
        for e in std::fs::read_dir(dir.join("src")).unwrap() {
            files.push(format!("src/{}", e.unwrap().file_name().to_string_lossy()));
        }
        files.sort();
        let mut hash = Sha256::new();
        for f in files {
            hash.update(f.as_bytes());
            hash.update([0]);
            hash.update(std::fs::read(dir.join(&f)).unwrap());
            hash.update([0]);
        }
        format!("{:x}", hash.finalize())
    }

    #[test]
    fn the_embedded_console_is_built_from_the_committed_sources() {
        assert_eq!(
            SOURCES_SHA256.trim(),
            sources_hash(),
            "console/dist is stale: run scripts/console and commit console/dist"
        );
    }

    #[test]
    fn the_page_loads_no_inline_script_and_only_its_own_files() {
        let html = std::str::from_utf8(FILES[0].2).unwrap();
        assert!(!html.contains("<script>"), "inline script");
        let handler = html.split_whitespace().find(|w| w.starts_with("on") && w.contains('='));
        assert!(handler.is_none(), "inline handler {handler:?}");
        for src in ["app.js", "app.css"] {
            assert!(html.contains(&format!("\"{src}\"")), "{src}");
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
