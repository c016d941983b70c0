//! A sticky balancer built against `sextant:plugin@0.2.0` (`wit/legacy/0.2.0/`), as components
//! built before 0.2.1 are: the host keeps serving it. A request with an affinity key goes to
//! endpoint `key % n`, every time, retries included (0.2.0 cannot tell it what the request
//! already tried); one without a key goes round robin.
#![allow(missing_docs, missing_debug_implementations, unsafe_code)]

use std::cell::Cell;

wit_bindgen::generate!({ world: "balancer-plugin", path: "../../../wit/legacy/0.2.0" });

use exports::sextant::plugin::balancer::{Failure, Guest, GuestBalancer, Mode, Request};
use sextant::plugin::types::Snapshot;

struct Sticky {
    len: Cell<u32>,
    next: Cell<u32>,
}

impl GuestBalancer for Sticky {
    fn new(_service: String) -> Self {
        Self { len: Cell::new(0), next: Cell::new(0) }
    }

    fn update(&self, snapshot: Snapshot) -> Result<Mode, Failure> {
        self.len.set(u32::try_from(snapshot.endpoints.len()).unwrap_or(u32::MAX));
        Ok(Mode::PerRequest)
    }

    fn pick(&self, request: Request) -> Option<u32> {
        let len = self.len.get();
        if len == 0 {
            return None;
        }
        Some(match request.hash_key {
            Some(key) => u32::try_from(key % u64::from(len)).unwrap_or(0),
            None => {
                let i = self.next.get() % len;
                self.next.set(i + 1);
                i
            }
        })
    }
}

struct Plugin;

impl Guest for Plugin {
    type Balancer = Sticky;

    fn init(_config: String) -> Result<(), Failure> {
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
export!(Plugin);
