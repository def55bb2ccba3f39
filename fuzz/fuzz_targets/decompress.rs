//! Every decompressor, with a small size cap: the first byte picks the
//! method (zlib/gzip, bzip2, lzma, brotli, zstd), the rest is the body.
//! Never a panic, and never more than the cap: a decompression bomb is an
//! error, not an allocation (libFuzzer's -rss_limit_mb catches one that
//! allocates anyway).
#![no_main]

use kombu_core::compression::CompressionRegistry;
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &["zlib", "bzip2", "lzma", "brotli", "zstd"];

/// 64 KiB: small, so that bombs show up quickly.
const CAP: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(selector) % METHODS.len()];
    let registry = CompressionRegistry::default().with_max_decompressed_size(CAP);
    if let Ok(out) = registry.decompress(method, body) {
        assert!(
            out.len() <= CAP,
            "{method}: {} bytes past the cap",
            out.len()
        );
        if out.len() > 1024 {
            return; // compressing again is slow (brotli 11, bzip2 9): small ones only
        }
        let (packed, header) = registry.compress(method, &out).expect("compress");
        assert_eq!(
            registry.decompress(&header, &packed).expect("round trip"),
            out
        );
    }
});
