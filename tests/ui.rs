//! The status page (`/ui`) in a real browser: headless Chromium loads it from a running relay,
//! is asked for the relay's key, then shows every key's budget and moves it as requests go
//! through, with the traffic chart and the recent errors by request id. The page's files are
//! served with their security headers on both listeners, and nothing secret reaches the page.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::*;
use tokio::task::block_in_place;

const RELAY_KEY: &str = "relay-ui-secret";

/// What a key's bar for `dimension` says is left (`null` until the page drew it).
fn remaining(key: &str, dimension: &str) -> String {
    format!(
        "(() => {{ const m = document.querySelector('[data-key=\"{key}\"] [data-dimension=\"{dimension}\"]'); \
         return m ? Number(m.dataset.remaining) : null; }})()"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_asks_for_the_key_then_shows_budgets_moving_and_errors() {
    let mock = start_mock().await;
    let relay = RelayProcess::start(
        &format!("  auth:\n    api_key: {RELAY_KEY}\n"),
        &pool_config(
            &mock,
            &[
                ("ui-key-one", "sk-ui-secret-1", "rpm_limit: 50"),
                ("ui-key-two", "sk-ui-secret-2", "rpm_limit: 50"),
            ],
            "",
        ),
    );
    let mut browser = block_in_place(Browser::launch);
    let wait = Duration::from_secs(20);

    // Without a key the page asks for one and shows nothing of the relay.
    block_in_place(|| {
        browser.navigate(&relay.url("/ui"));
        browser.wait_for("!document.getElementById('login').hidden", wait);
        assert_eq!(browser.eval("document.getElementById('main').hidden"), true);
        browser.eval(&format!(
            "document.getElementById('key').value = '{RELAY_KEY}'; \
             document.getElementById('login').requestSubmit(); true"
        ));
        for key in ["ui-key-one", "ui-key-two"] {
            let shown = format!(
                "[...document.querySelectorAll('[data-provider=\"pool\"] .key-id')]\
                 .some(e => e.textContent === '{key}')"
            );
            browser.wait_for(&shown, wait);
            browser.wait_for(&format!("{} === 50", remaining(key, "requests")), wait);
        }
    });

    // Requests through the relay: the page's budgets go down without a reload of the page.
    let auth = [("x-api-key", RELAY_KEY)];
    for _ in 0..4 {
        let response = post_messages(&relay, &message_body("m", false), &auth).await;
        assert_eq!(response.status(), 200);
    }
    let missing = client()
        .get(relay.url("/v1/nowhere"))
        .header("x-api-key", RELAY_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let error_id = missing.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    block_in_place(|| {
        let left = format!(
            "{} + {}",
            remaining("ui-key-one", "requests"),
            remaining("ui-key-two", "requests")
        );
        let moved = browser.wait_for(&format!("({left}) <= 97 ? ({left}) : 0"), wait);
        assert!(moved.as_f64().unwrap() >= 90.0, "{moved}");
        // The chart has this slot's requests, the recent errors the 404 by its request id.
        browser.wait_for(
            "document.querySelectorAll('#chart rect.req').length > 0",
            wait,
        );
        let row = browser.wait_for(
            &format!(
                "(() => {{ const r = document.querySelector('[data-request-id=\"{error_id}\"]'); \
                 return r ? r.innerText : null; }})()"
            ),
            wait,
        );
        let row = row.as_str().unwrap();
        assert!(row.contains("404") && row.contains("/v1/nowhere"), "{row}");
        assert_eq!(
            browser.eval("document.getElementById('live').textContent"),
            "live"
        );

        let page = browser.eval("document.documentElement.outerHTML");
        let page = page.as_str().unwrap();
        for secret in [RELAY_KEY, "sk-ui-secret-1", "sk-ui-secret-2"] {
            assert!(!page.contains(secret), "{secret} is in the page");
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_files_are_served_open_with_security_headers_on_both_listeners() {
    let mock = start_mock().await;
    let admin_port = free_port();
    let relay = RelayProcess::start(
        &format!("  admin_listen: \"127.0.0.1:{admin_port}\"\n  auth:\n    api_key: {RELAY_KEY}\n"),
        &pool_config(&mock, &[("k1", "sk-ui-secret-1", "")], ""),
    );
    for base in [relay.url(""), format!("http://127.0.0.1:{admin_port}")] {
        for (path, content_type) in [
            ("/ui", "text/html"),
            ("/ui/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ] {
            let response = client().get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{base}{path}");
            let headers = response.headers();
            assert!(headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type));
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
            assert_eq!(headers["x-content-type-options"], "nosniff");
            let body = response.text().await.unwrap();
            assert!(!body.contains(RELAY_KEY) && !body.contains("sk-ui-secret"));
        }
        // The data stays behind the key.
        let status = client().get(format!("{base}/status")).send().await.unwrap();
        assert_eq!(status.status(), 401);
        let head = client()
            .head(format!("{base}/ui/app.js"))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        let posted = client().post(format!("{base}/ui")).send().await.unwrap();
        assert_eq!(posted.status(), 405, "{base}");
    }
}
