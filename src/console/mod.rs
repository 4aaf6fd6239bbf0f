//! The cluster page every master's agent serves on the join API's port
//! (`https://MASTER:9443/console`): the whole cluster at a glance, for an
//! operator with a browser and no kubectl. Built into the binary (no CDN,
//! no external font or script: it works airgapped), refreshed by polling a
//! JSON view that the agent caches for a moment, so that open tabs cost
//! next to nothing. Sign-in: [`session`].

pub mod session;

/// The page: static, the same for everyone; what it shows comes from the
/// JSON view.
pub const PAGE_HTML: &str = include_str!("assets/page.html");
pub const APP_JS: &str = include_str!("assets/app.js");
pub const APP_CSS: &str = include_str!("assets/app.css");

/// What a browser may load and send from the page: only this origin, no
/// inline script, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The small page a sign-in link opens: a form that trades the code (a
/// change, so a POST, never a GET that a prefetch could make).
pub fn signin_html(code: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>hakube: sign in</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/console/app.css\"></head>\
         <body class=\"narrow\"><h1>hakube</h1><form method=\"post\" action=\"/console/signin\">\
         <input type=\"hidden\" name=\"code\" value=\"{}\">\
         <p>This link signs you in to the cluster page once.</p>\
         <button type=\"submit\" id=\"signin\">Sign in</button></form></body></html>",
        escape(code)
    )
}

/// A page that says why not, and what to do.
pub fn message_html(title: &str, message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>hakube: {t}</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/console/app.css\"></head>\
         <body class=\"narrow\"><h1>hakube</h1><h2>{t}</h2><p id=\"message\">{m}</p></body></html>",
        t = escape(title),
        m = escape(message)
    )
}

/// HTML-escapes text for an element or a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_put_into_html_cannot_open_an_element_or_leave_an_attribute() {
        assert_eq!(escape(r#"<script>"x"&'y'"#), "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;");
        let page = message_html("<b>", "a\" onload=\"x");
        assert!(!page.contains("<b>") && !page.contains("\" onload"), "{page}");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script() {
        for asset in [PAGE_HTML, APP_JS, APP_CSS] {
            for far in ["http://", "https://", "//fonts", "cdn"] {
                assert!(!asset.contains(far), "{far} in an asset");
            }
        }
        assert!(!PAGE_HTML.contains("<script>") && !PAGE_HTML.contains("onclick"), "inline script");
        assert!(PAGE_HTML.contains("<script src=\"/console/app.js\"></script>"));
    }
}
