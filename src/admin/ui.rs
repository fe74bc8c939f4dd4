//! The live status page (`/ui`): a page, a script and a style sheet embedded in the binary (no
//! CDN, no build step). The page itself holds no data and needs no credential; its script
//! polls `/status`, which is behind `server.auth` like any other status request.

/// One embedded file of the page.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/ui",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("ui/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("ui/app.css"),
    },
    Asset {
        path: "/ui/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("ui/favicon.svg"),
    },
];

/// Sent with every asset: the page runs only its own script and talks only to its own
/// origin, is never framed, and is fetched again rather than served stale after an upgrade.
pub const HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
];

/// The asset at `path` (a trailing slash already stripped), if it is one.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_references_only_embedded_assets() {
        let page = std::str::from_utf8(asset("/ui").unwrap().body).unwrap();
        for reference in ["/ui/app.js", "/ui/app.css", "/ui/favicon.svg"] {
            assert!(page.contains(reference));
            assert!(asset(reference).is_some());
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert_eq!(asset("/ui/other.js"), None);
    }
}
