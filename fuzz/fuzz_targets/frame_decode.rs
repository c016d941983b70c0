//! Arbitrary bytes, delivered in arbitrary chunks, into the frame decoder: it must return
//! frames or errors, never panic, and never buffer past the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sextant_proto::{FrameDecoder, MAX_FRAME_LEN, Request, Response};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut requests = FrameDecoder::with_limit(1024);
    let mut responses = FrameDecoder::new();
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
        if let Ok(wanted) = responses.wanted() {
            assert!(wanted <= MAX_FRAME_LEN + 4);
        }
    }
    let _ = requests.finish();
});
