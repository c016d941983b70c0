//! Arbitrary bytes, delivered in arbitrary chunks, into the frame decoder: it must return
//! frames or errors, never panic, and never buffer past the frame limit. Every payload also
//! goes through the server's request decoding (malformed or invalid, never a panic) and the
//! client's subscription-frame decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sextant_proto::{FrameDecoder, MAX_FRAME_LEN, Request, Response, SubscriptionFrame};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut requests = FrameDecoder::with_limit(1024);
    let mut responses = FrameDecoder::new();
    let mut payloads = FrameDecoder::with_limit(1024);
    let mut subscriptions = FrameDecoder::with_limit(1024);
    for piece in rest.chunks(chunk) {
        requests.push(piece);
        responses.push(piece);
        loop {
            match requests.decode::<Request>() {
                Ok(Some(r)) => {
                    // Whatever decodes must encode again.
                    sextant_proto::encode(&r).expect("a decoded request encodes");
                }
                Ok(None) | Err(_) => break,
            }
        }
        while let Ok(Some(_)) = responses.decode::<Response>() {}
        payloads.push(piece);
        while let Ok(Some(payload)) = payloads.payload() {
            if let Ok(r) = Request::decode(&payload) {
                sextant_proto::encode(&r).expect("a decoded request encodes");
            }
        }
        subscriptions.push(piece);
        while let Ok(Some(_)) = subscriptions.decode::<SubscriptionFrame>() {}
        if let Ok(wanted) = responses.wanted() {
            assert!(wanted <= MAX_FRAME_LEN + 4);
        }
    }
    let _ = requests.finish();
});
