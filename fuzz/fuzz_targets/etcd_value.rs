//! An etcd instance value (JSON written by registrars, or by anyone with write access to the
//! prefix): parsed or refused with a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = strait::discovery::instance::parse_instance(data) {
        // Every refusal has a reason label for the metric.
        assert!(!e.reason().is_empty());
    }
});
