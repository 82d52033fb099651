//! Request enrichment functions: user agent → browser family and bot flag.
//!
//! Backed by the `woothee` parser (a maintained, dependency-free port of the
//! Woothee project's rules), so results are deterministic and the same online
//! and offline.

/// Browser family, e.g. `Chrome`, `Firefox`, `Safari`, `Googlebot`;
/// `UNKNOWN` when the string is not recognised.
pub fn ua_browser(ua: &str) -> String {
    match woothee::parser::Parser::new().parse(ua) {
        Some(r) => r.name.to_string(),
        None => "UNKNOWN".to_string(),
    }
}

/// True for crawlers and HTTP libraries (woothee's `crawler` category).
pub fn ua_is_bot(ua: &str) -> bool {
    match woothee::parser::Parser::new().parse(ua) {
        Some(r) => r.category == "crawler",
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_browsers_and_bots() {
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(ua_browser(chrome), "Chrome");
        assert!(!ua_is_bot(chrome));
        let bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        assert!(ua_is_bot(bot));
        assert_eq!(ua_browser("???"), "UNKNOWN");
    }
}
