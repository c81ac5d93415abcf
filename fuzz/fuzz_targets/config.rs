//! The config parser and validator: any text gives a config or a list of problems, never a
//! panic; and any config accepted rehearses its time arithmetic (as `strait check` does)
//! without a panic or a refusal. Relative file paths resolve under a directory that does not
//! exist.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = strait::config::parse(
            text,
            std::path::Path::new("fuzz.toml"),
            std::path::Path::new("/nonexistent-strait-fuzz"),
        ) {
            strait::rehearsal::rehearse(&config).expect("an accepted config is safe to run");
        }
    }
});
