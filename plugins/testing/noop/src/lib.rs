//! The empty balancer: the baseline of the pick benchmarks (a component call and nothing
//! else: endpoint 0, or none when there are no endpoints).
use sextant_plugin_sdk::{Balancer, Env, Mode, Request, Snapshot};

struct Noop {
    empty: bool,
}

impl Balancer for Noop {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        self.empty = snapshot.endpoints.is_empty();
        Ok(Mode::PerRequest)
    }
    fn pick(&mut self, _request: &Request, _env: &mut dyn Env) -> Option<u32> {
        if self.empty { None } else { Some(0) }
    }
}

sextant_plugin_sdk::export_balancer!(|_: &str| Ok::<_, String>(Noop { empty: true }));
