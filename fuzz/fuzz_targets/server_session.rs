//! A server session fed every request that decodes from arbitrary bytes: it must never
//! panic, and must never let a request through to execution before a successful `hello`.
//! What it lets through is validated as the executor validates it (`normalize`), which must
//! never panic either and must leave a registration's `ephemeral` flag following its binding.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sextant_proto::acl::Acl;
use sextant_proto::server::{ServerSession, ServerSettings, Step, normalize};
use sextant_proto::{Binding, FrameDecoder, Request, Response};

fuzz_target!(|data: &[u8]| {
    let acl = Acl::from_json(r#"{"tokens":[{"name":"w","token":"t","namespaces":{"prod":"write","*":"read"}}]}"#)
        .expect("valid acl");
    let settings = ServerSettings { acl: Arc::new(acl), server_id: "fuzz".into(), grace_ms: 1000 };
    let mut session = ServerSession::new(settings);
    let mut decoder = FrameDecoder::new();
    decoder.push(data);
    let mut welcomed = false;
    while let Ok(Some(request)) = decoder.decode::<Request>() {
        match session.on_request(request) {
            Step::Reply(Response::Welcome { .. }) => welcomed = true,
            Step::Execute(request) => {
                assert!(welcomed, "executed a request before hello");
                if let Ok(Request::Register { instance, binding }) = normalize(request) {
                    assert_eq!(instance.ephemeral, binding != Binding::Persistent);
                }
            }
            Step::Close(..) => return,
            Step::Reply(_) => {}
        }
    }
});
