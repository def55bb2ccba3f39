//! Broker URLs: one URL, a `;` failover list, and the query options read
//! from it. Any input: an error or a URL, never a panic; a parsed URL
//! written out with `as_uri(true)` parses back to itself.
#![no_main]

use kombu_core::url::UrlDefaults;
use kombu_core::{BrokerUrl, ConnectionOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(urls) = BrokerUrl::parse_list(text) {
        let mut options = ConnectionOptions::new();
        let _ = options.apply_query(&urls[0]);
        for url in &urls {
            check(url);
        }
    }
    if let Ok(url) = BrokerUrl::parse(text) {
        check(&url);
    }
});

fn check(url: &BrokerUrl) {
    round_trip(url);
    let _ = url.as_uri(false);
    let _ = (url.virtual_host(), url.path(), url.query_value("ssl"));
    let defaults = UrlDefaults {
        hostname: Some("localhost"),
        port: Some(5672),
        userid: Some("guest"),
        password: Some("guest"),
        virtual_host: Some("/"),
    };
    round_trip(&url.completed(&defaults));
}

fn round_trip(url: &BrokerUrl) {
    let written = url.as_uri(true);
    let back = BrokerUrl::parse(&written)
        .unwrap_or_else(|e| panic!("{written:?} (from {url:?}) does not parse back: {e}"));
    assert_eq!(&back, url, "{written:?} parses back to another URL");
}
