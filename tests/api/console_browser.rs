//! What a photographer does in the console, in a real browser: the buddha13 photos (AliceVision's
//! Buddha Dataset, CC BY 4.0, by Simone Gasparini, Fabien Castan and Yann Lanthony; read in place
//! from ../shared) uploaded with the colmap-sparse preset, live progress, the model drawn, the
//! archive; a cancel; an error shown next to its file; a key asked for; a phone-sized window.

use crate::browser::{luminance_spread, temp_file, Browser};
use crate::helpers::*;
use meshroom_svc::jobs::{JobView, Status};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use thirtyfour::By;

/// The id of the job the page shows (from its address).
async fn job_on_page(b: &Browser) -> String {
    let hash = b
        .wait("return location.hash.match(/#\\/jobs\\/([0-9a-f-]{36})$/)?.[1]", 60)
        .await;
    hash.as_str().unwrap().to_string()
}

#[tokio::test]
#[cfg_attr(
    not(feature = "full"),
    ignore = "full tier (chromium, COLMAP, buddha13): scripts/test"
)]
async fn photos_dropped_in_the_console_become_a_model_on_screen() {
    let app = spawn_app_with(crate::colmap::engines, vec![]).await;
    let b = Browser::start("buddha13", 1280, 800).await;
    // A browser asking for `/` lands on the console.
    b.driver().goto(app.url("/")).await.unwrap();
    b.wait(
        "return location.pathname.endsWith('/console/') && document.querySelector('#file-input')",
        20,
    )
    .await;

    // Every control is labelled and reachable with the keyboard.
    assert!(b.unlabelled().await.is_empty(), "{:?}", b.unlabelled().await);
    let order = b.tab_order(40).await;
    for id in ["drop-zone", "file-input", "folder-input", "pipeline", "submit-button"] {
        assert!(order.iter().any(|s| s == id), "Tab never reaches #{id}: {order:?}");
    }

    b.select("#pipeline", "colmap-sparse").await;
    let photos = crate::photos::real_photos();
    b.choose("#file-input", &photos).await;
    b.wait(
        &format!(
            "return document.querySelectorAll('#file-list li').length === {}",
            photos.len()
        ),
        10,
    )
    .await;
    // Each file shows its name, size and a thumbnail.
    let first = photos[0].file_name().unwrap().to_string_lossy().into_owned();
    let row = b.text(&format!("#file-list li[data-name=\"{first}\"]")).await;
    assert!(row.contains(&first) && row.contains("KiB"), "{row}");
    b.wait(
        "return [...document.querySelectorAll('#file-list img.thumb')].every(i => i.complete && i.naturalWidth > 0)",
        10,
    )
    .await;
    b.snap("1-chosen").await;
    b.click("#submit-button").await;
    let id = job_on_page(&b).await;

    // The page follows the job live: the bars and the node move, the log grows, while it runs.
    let mut percents = Vec::new();
    let mut nodes = BTreeSet::new();
    let mut log_while_running = 0;
    let mut snapped = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let status = b.text("#job-status").await;
        let percent: f64 = b
            .js("return document.querySelector('#bar-overall').value")
            .await
            .as_f64()
            .unwrap();
        if percents.last() != Some(&percent) {
            percents.push(percent);
        }
        let node = b.text("#bar-node-text").await;
        if !node.is_empty() {
            nodes.insert(node);
        }
        if status == "processing" {
            log_while_running = log_while_running.max(b.text("#job-log").await.lines().count());
            if !snapped && percent > 0.0 {
                b.snap("2-running").await;
                snapped = true;
            }
        }
        if status == "succeeded" || status == "failed" || status == "canceled" {
            assert_eq!(status, "succeeded", "{:#?}", app.view(&id).await);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {id} still {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(percents.len() >= 3, "progress seen: {percents:?}");
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress goes forward: {percents:?}"
    );
    assert!(nodes.len() >= 2, "nodes seen: {nodes:?}");
    assert!(log_while_running > 0, "the log showed nothing while the engine ran");
    assert_eq!(b.text("#job-eta").await, "done");

    // The viewer draws the model: the canvas is not blank.
    b.wait(
        "return document.querySelector('#viewer-canvas')?.dataset.loaded === 'true'",
        60,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let canvas = b.driver().find(By::Css("#viewer-canvas")).await.unwrap();
    canvas.scroll_into_view().await.unwrap();
    let shot = canvas.screenshot_as_png().await.unwrap();
    std::fs::write(crate::browser::artifacts().join("buddha13-3-model.png"), &shot).unwrap();
    let (mean, spread) = luminance_spread(&shot);
    println!("viewer canvas: luminance mean {mean:.1}, standard deviation {spread:.1}");
    assert!(spread > 8.0, "the canvas looks blank (luminance sd {spread:.1})");
    // Wireframe and reset are buttons that work (the canvas stays drawn).
    let note = b.text("#viewer-note").await;
    assert!(note.contains("mesh.ply") && note.contains("cameras"), "{note}");
    b.click("#view-wireframe").await;
    b.click("#view-reset").await;
    b.snap("4-done").await;

    // The archive link gives every listed file.
    let href = b.js("return document.querySelector('#archive-link').href").await;
    let listed: BTreeSet<String> = b
        .js("return [...document.querySelectorAll('#results li .name')].map(e => e.textContent)")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let job: JobView = app.view(&id).await;
    let expected: BTreeSet<String> = job.results.iter().map(|r| r.name.clone()).collect();
    assert_eq!(listed, expected);
    let zip = reqwest::get(href.as_str().unwrap()).await.unwrap();
    assert_eq!(zip.status(), 200);
    let entries = crate::console::unzip(&zip.bytes().await.unwrap());
    assert_eq!(
        entries.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "the archive unzips to the listed files"
    );
    b.quit().await;
    println!(
        "buddha13 in the console: {} progress steps, nodes {nodes:?}, {} files",
        percents.len(),
        expected.len()
    );
}

#[tokio::test]
#[cfg_attr(not(feature = "full"), ignore = "full tier (chromium): scripts/test")]
async fn a_running_job_is_canceled_from_its_page() {
    let app = spawn_app().await;
    let edge = Edge::start().await;
    let id = app
        .submit(json!({"image_urls": [edge.add(&Fake::Hang.image(), photo(0))]}))
        .await;
    app.wait_until(&id, 30, |j| j.status == Status::Processing).await;
    let b = Browser::start("cancel", 1280, 800).await;
    b.driver()
        .goto(app.url(&format!("/console/#/jobs/{id}")))
        .await
        .unwrap();
    b.wait(
        "return document.querySelector('#job-status')?.textContent === 'processing'",
        20,
    )
    .await;
    b.wait("return document.querySelector('#btn-cancel').disabled === false", 10)
        .await;
    b.click("#btn-cancel").await;
    b.wait(
        "return document.querySelector('#job-status').textContent === 'canceled'",
        60,
    )
    .await;
    b.wait("return document.querySelector('#btn-retry').disabled === false", 10)
        .await;
    b.snap("canceled").await;
    assert_eq!(app.view(&id).await.status, Status::Canceled);
    b.quit().await;
}

#[tokio::test]
#[cfg_attr(not(feature = "full"), ignore = "full tier (chromium): scripts/test")]
async fn the_apis_error_shows_next_to_the_file_it_concerns() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let good = temp_file(dir.path(), "good.jpg", &photo(0));
    let text = temp_file(dir.path(), "notes.jpg", b"these are my notes, not a photo\n");
    // What the API says of that file.
    let direct = app
        .upload(vec![("notes.jpg", std::fs::read(&text).unwrap())], &[])
        .await;
    let message = direct
        .json::<meshroom_svc::http::ErrorBody>()
        .await
        .unwrap()
        .error
        .message;

    let b = Browser::start("error", 1280, 800).await;
    b.driver().goto(app.url("/console/")).await.unwrap();
    b.wait("return document.querySelector('#pipeline option')", 20).await;
    // A file dropped on the drop zone joins the list (a drop made in the page: WebDriver cannot
    // drag files from the desktop), and can be removed again.
    b.js("const dt = new DataTransfer(); \
          dt.items.add(new File([new Uint8Array([255, 216, 255])], 'dropped.jpg', {type: 'image/jpeg'})); \
          document.querySelector('#drop-zone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); \
          return 1")
        .await;
    b.wait(
        "return document.querySelector('#file-list li[data-name=\"dropped.jpg\"]')",
        10,
    )
    .await;
    b.click("#file-list li[data-name=\"dropped.jpg\"] button").await;
    b.wait("return document.querySelectorAll('#file-list li').length === 0", 10)
        .await;
    b.choose("#file-input", &[good, text]).await;
    b.wait("return document.querySelectorAll('#file-list li').length === 2", 10)
        .await;
    b.click("#submit-button").await;
    b.wait(
        "return document.querySelector('#file-list li[data-name=\"notes.jpg\"]').classList.contains('bad')",
        30,
    )
    .await;
    let note = b.text("#file-list li[data-name=\"notes.jpg\"] .note").await;
    assert!(note.contains(&message), "{note:?} does not show {message:?}");
    let other = b.text("#file-list li[data-name=\"good.jpg\"] .note").await;
    assert!(!other.contains(&message), "{other}");
    assert!(b.text("#submit-error").await.is_empty());
    b.snap("text-file").await;
    b.quit().await;
}

#[tokio::test]
#[cfg_attr(not(feature = "full"), ignore = "full tier (chromium): scripts/test")]
async fn behind_a_proxy_prefix_a_key_is_asked_for_kept_in_the_tab_and_the_page_fits_a_phone() {
    let key = "key-browser-7d1e3a";
    let app = spawn_app_with(|c| c.secrets.api_keys = vec![key.to_string().into()], vec![]).await;
    let edge = Edge::start().await;
    let mut api = Api::new(app.base.clone());
    api.api_key = Some(key.into());
    let id = api.submit(json!({"image_urls": [edge.add("a.jpg", photo(0))]})).await;
    api.finished(&id, 30).await;

    // Behind a reverse proxy under a path prefix: every asset and API call stays under it.
    let front = crate::browser::prefix_proxy(app.base.clone(), "/photos3d").await;
    let b = Browser::start("phone", 390, 844).await;
    b.driver().goto(format!("{front}/")).await.unwrap();
    b.wait("return location.pathname === '/photos3d/console/'", 20).await;
    b.driver().goto(format!("{front}/console/#/jobs")).await.unwrap();
    b.wait("return document.querySelector('#key-dialog').open", 20).await;
    b.snap("1-key").await;
    b.driver()
        .find(By::Css("#key-input"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
    b.click("#key-save").await;
    b.wait(
        &format!("return document.querySelector('#jobs-body tr[data-id=\"{id}\"]')"),
        20,
    )
    .await;
    // The key lives in this tab's sessionStorage only, never in localStorage or a cookie.
    let stored = b.js("return JSON.stringify(sessionStorage)").await;
    assert!(stored.as_str().unwrap().contains(key));
    assert_eq!(b.js("return localStorage.length").await, json!(0));
    assert_eq!(b.js("return document.cookie").await, json!(""));
    assert!(b.fits_width().await, "the jobs list scrolls sideways on a phone");
    b.snap("2-jobs").await;

    b.driver().goto(format!("{front}/console/#/jobs/{id}")).await.unwrap();
    b.wait(
        "return document.querySelector('#job-status')?.textContent === 'succeeded'",
        20,
    )
    .await;
    b.wait(
        "return document.querySelector('#viewer-canvas')?.dataset.loaded === 'true'",
        60,
    )
    .await;
    assert!(b.fits_width().await, "the job page scrolls sideways on a phone");
    assert!(b.unlabelled().await.is_empty(), "{:?}", b.unlabelled().await);
    b.snap("3-job").await;
    b.driver().goto(format!("{front}/console/#/submit")).await.unwrap();
    b.wait("return document.querySelector('#submit-button')", 10).await;
    assert!(b.fits_width().await, "the submit page scrolls sideways on a phone");
    b.snap("4-submit").await;
    // Forgetting the key removes it.
    b.click("#key-button").await;
    b.click("#key-forget").await;
    assert_eq!(b.js("return sessionStorage.length").await, json!(0));
    b.quit().await;
}
