//! A sticky balancer on the SDK (contract 0.2.1 and later): a request with an affinity key goes to
//! endpoint `key % n`; a retry goes to the next endpoint after it (in snapshot order) that the
//! request has not tried yet ([`Env::tried`], `load.request-tried`), so a key whose endpoint
//! is down is served by the same neighbour on every retry. Requests without a key go round
//! robin. A first attempt costs no host call for what was tried.
use sextant_plugin_sdk::{Balancer, Env, Mode, Request, Snapshot};

struct Sticky {
    len: u32,
    next: u32,
}

impl Balancer for Sticky {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        self.len = u32::try_from(snapshot.endpoints.len()).map_err(|e| e.to_string())?;
        Ok(Mode::PerRequest)
    }

    fn pick(&mut self, request: &Request, env: &mut dyn Env) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let Some(key) = request.hash_key else {
            let i = self.next % self.len;
            self.next = i + 1;
            return Some(i);
        };
        let home = u32::try_from(key % u64::from(self.len)).unwrap_or(0);
        if env.attempt() == 0 {
            return Some(home);
        }
        let tried = env.tried();
        (0..self.len).map(|k| (home + k) % self.len).find(|i| !tried.contains(i)).or(Some(home))
    }
}

sextant_plugin_sdk::export_balancer!(|_: &str| Ok::<_, String>(Sticky { len: 0, next: 0 }));
