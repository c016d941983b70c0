//! A balancer that dials out at `init` (`std::net::TcpStream`, hence `wasi:sockets`
//! imports): the host must refuse it at load, naming the import, before anything runs.
use sextant_plugin_sdk::{Balancer, Env, Mode, Request, Snapshot};

struct Dialer;

impl Balancer for Dialer {
    fn update(&mut self, _snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        Ok(Mode::PerRequest)
    }
    fn pick(&mut self, _request: &Request, _env: &mut dyn Env) -> Option<u32> {
        None
    }
}

fn make(_config: &str) -> Result<Dialer, String> {
    std::net::TcpStream::connect("127.0.0.1:9").map_err(|e| e.to_string())?;
    Ok(Dialer)
}

sextant_plugin_sdk::export_balancer!(make);
