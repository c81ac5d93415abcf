//! The gRPC message scanner that enforces max_message_size on request bodies: any bytes, cut
//! anywhere, give the same verdict as the whole body at once, and never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strait::grpc::FrameScanner;

fuzz_target!(|input: (u16, u16, &[u8])| {
    let (limit, cut, body) = input;
    let limit = u32::from(limit);
    let whole = FrameScanner::default().feed(body, true, limit);
    let cut = usize::from(cut).min(body.len());
    let mut pieces = FrameScanner::default();
    let split = pieces
        .feed(&body[..cut], false, limit)
        .and_then(|()| pieces.feed(&body[cut..], true, limit));
    assert_eq!(whole, split);
});
