//! The empty balancer: the baseline of the pick benchmarks (a component call and nothing
//! else).
use sextant_plugin_sdk::{Balancer, Env, Mode, Request, Snapshot};

struct Noop;

impl Balancer for Noop {
    fn update(&mut self, _snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        Ok(Mode::PerRequest)
    }
    fn pick(&mut self, _request: &Request, _env: &mut dyn Env) -> Option<u32> {
        Some(0)
    }
}

sextant_plugin_sdk::export_balancer!(|_: &str| Ok::<_, String>(Noop));
