//! The `:path` of a call, straight from callers: a service and method or nothing, never a panic;
//! what parses is made of the path's own parts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        if let Some(parsed) = strait::routing::parse_grpc_path(path) {
            assert!(!parsed.service.is_empty() && !parsed.method.is_empty());
            assert!(path.contains(parsed.service) && path.contains(parsed.method));
        }
    }
});
