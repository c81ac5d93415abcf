//! The `grpc-timeout` header, straight from callers: parsed or refused, never a panic; what
//! parses formats back to a value that parses to no more than the original (a zero budget is
//! formatted as 1n on purpose: 0 means "already expired" to some peers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait::grpc::{format_grpc_timeout, parse_grpc_timeout};

fuzz_target!(|data: &[u8]| {
    if let Some(budget) = parse_grpc_timeout(data) {
        let again = parse_grpc_timeout(format_grpc_timeout(budget).as_bytes())
            .expect("a formatted timeout parses");
        let floor = budget.max(std::time::Duration::from_nanos(1));
        assert!(again <= floor, "{again:?} > {budget:?}");
    }
});
