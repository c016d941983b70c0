//! What a gateway tells the fleet about its own health verdicts: per routed service, the
//! endpoints it took out itself (found down by its checks, ejected by its health policy,
//! breaker open) and until when, published in its registration under
//! [`HEALTH_REPORT_PREFIX`]`SERVICE` so the registry's readers (the console) see health as
//! each gateway sees it, beside the registry's own flags.
//!
//! A value is `WHY ID UNTIL; WHY ID UNTIL; …`: `WHY` one of `down`, `ejected`,
//! `breaker_open`; `UNTIL` Unix ms rounded up to 5 s (`-` for `down`, which lasts until a
//! check finds the endpoint up). Entries are sorted; a value cut to fit the registration's
//! metadata ends with an incomplete entry, which readers ignore.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Router;
use crate::explain::{Excluded, Exclusion};

/// Registration metadata key prefix of a gateway's verdicts about one service.
pub const HEALTH_REPORT_PREFIX: &str = "sextant.health.";

/// Ends are rounded up to this (ms), so a report does not change, and is not written again,
/// while a verdict stands.
const ROUND_MS: u64 = 5_000;

/// The verdicts `router` holds now, one entry per service that has any.
#[must_use]
pub fn health_report(router: &Router) -> BTreeMap<String, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    router
        .services()
        .into_iter()
        .filter_map(|service| {
            let status = router.status(&service)?;
            let value = report_value(&status.excluded, now)?;
            Some((format!("{HEALTH_REPORT_PREFIX}{service}"), value))
        })
        .collect()
}

/// The report of one service's exclusions at `now` (Unix ms); none when the gateway itself
/// excluded nothing.
fn report_value(excluded: &[Excluded], now: u64) -> Option<String> {
    let mut entries: Vec<String> = excluded
        .iter()
        .filter_map(|e| {
            let why = match e.why {
                Exclusion::Down => "down",
                Exclusion::Ejected => "ejected",
                Exclusion::BreakerOpen => "breaker_open",
                _ => return None,
            };
            let until = e.for_ms.map_or_else(
                || "-".to_owned(),
                |ms| (now + ms).div_ceil(ROUND_MS).saturating_mul(ROUND_MS).to_string(),
            );
            Some(format!("{why} {} {until}", e.endpoint))
        })
        .collect();
    entries.sort();
    (!entries.is_empty()).then(|| entries.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(id: &str, why: Exclusion, for_ms: Option<u64>) -> Excluded {
        Excluded { endpoint: id.into(), address: "127.0.0.1:1".into(), why, for_ms }
    }

    #[test]
    fn only_the_gateways_own_verdicts_are_reported_with_ends_that_hold_still() {
        let list = [
            excluded("c", Exclusion::Ejected, Some(29_000)),
            excluded("a", Exclusion::Unhealthy, None),
            excluded("b", Exclusion::Down, None),
            excluded("d", Exclusion::BreakerOpen, Some(100)),
            excluded("e", Exclusion::Disabled, None),
        ];
        let at = report_value(&list, 1_000_000).unwrap();
        assert_eq!(at, "breaker_open d 1005000; down b -; ejected c 1030000");
        // A second later the same verdicts read the same.
        let later = [
            excluded("c", Exclusion::Ejected, Some(28_000)),
            excluded("b", Exclusion::Down, None),
            excluded("d", Exclusion::BreakerOpen, Some(10)),
        ];
        assert_eq!(report_value(&later, 1_000_900).unwrap(), at);
        assert_eq!(report_value(&list[1..2], 1), None, "the registry's flags are the registry's to show");
    }
}
