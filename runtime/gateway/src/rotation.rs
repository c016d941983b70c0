//! The rotation rule: which endpoints of a service traffic may reach, and with which weight,
//! from the registry's snapshot and what this gateway knows locally. A pure function of its
//! inputs (time included), so it is tested on its own and the router only applies it.
//!
//! In order:
//! 1. the candidates are the registry's selected instances (its protection threshold
//!    applied);
//! 2. those active health checks found down leave, unless the share left would fall below the
//!    service's protection threshold: then every candidate stays and the rotation is marked
//!    as protecting;
//! 3. ejected endpoints (an ejection not yet over) and endpoints whose breaker is open leave,
//!    oldest first, at most `max_ejected_percent` of the endpoints left by step 2;
//! 4. each endpoint takes the scheduler's weight if it set one, else its registered weight
//!    (at most 10000); an endpoint of weight 0 leaves.
//!
//! Every instance of the registry that is not a member is listed with the step that left it
//! out ([`Exclusion`]): what "why this endpoint" and the status show.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use sextant_core::{Instance, ServiceSnapshot};

use crate::explain::Exclusion;

/// The largest weight an endpoint carries into a balancer.
pub(crate) const MAX_WEIGHT: u32 = 10_000;

/// What this gateway knows about a service's endpoints beyond the registry, by instance id.
#[derive(Debug, Default)]
pub(crate) struct LocalHealth {
    /// Found down by active health checks.
    pub(crate) down: HashSet<String>,
    /// Ejected by the health policy: until when, since when.
    pub(crate) ejected: HashMap<String, (Instant, Instant)>,
    /// Weights the scheduler set.
    pub(crate) weights: HashMap<String, u32>,
}

/// The endpoints traffic may reach.
#[derive(Debug)]
pub(crate) struct Rotation<'a> {
    /// Each member with the weight it carries, in the registry's order.
    pub(crate) members: Vec<(&'a Arc<Instance>, u32)>,
    /// Whether a protection threshold keeps unhealthy endpoints in (the registry's, or this
    /// gateway's health checks').
    pub(crate) protection: bool,
    /// Every other instance of the registry, in its order: why it is out, and until when
    /// (ejections and open breakers).
    pub(crate) left: Vec<(&'a Arc<Instance>, Exclusion, Option<Instant>)>,
}

/// The rotation of `registry` given `local` health and open breakers (`breaker_open`: since
/// when an endpoint's breaker is open, by id), at `now`.
pub(crate) fn rotation<'a>(
    registry: &'a ServiceSnapshot,
    local: &LocalHealth,
    breaker_open: &dyn Fn(&str) -> Option<Instant>,
    max_ejected_percent: u32,
    now: Instant,
) -> Rotation<'a> {
    let candidates: Vec<&Arc<Instance>> = registry.selected().collect();
    let up: Vec<&Arc<Instance>> = candidates.iter().copied().filter(|i| !local.down.contains(i.id.as_str())).collect();
    #[allow(clippy::cast_precision_loss)] // instance counts are far below 2^24
    let share = if candidates.is_empty() { 1.0 } else { up.len() as f32 / candidates.len() as f32 };
    let protection = registry.protection_active() || (!candidates.is_empty() && share < registry.protect_threshold);
    let base = if share < registry.protect_threshold { candidates.clone() } else { up };
    // Ejected or breaker-open endpoints, oldest first, capped: (since, id, why, until).
    let mut out: Vec<(Instant, &str, Exclusion, Instant)> = base
        .iter()
        .filter_map(|i| {
            let id = i.id.as_str();
            match local.ejected.get(id).filter(|(until, _)| *until > now) {
                Some((until, since)) => Some((*since, id, Exclusion::Ejected, *until)),
                None => breaker_open(id).map(|until| (until, id, Exclusion::BreakerOpen, until)),
            }
        })
        .collect();
    out.sort_unstable_by_key(|(since, id, _, _)| (*since, *id));
    let cap = base.len() * max_ejected_percent.min(100) as usize / 100;
    let excluded: HashMap<&str, (Exclusion, Instant)> =
        out.iter().take(cap).map(|(_, id, why, until)| (*id, (*why, *until))).collect();
    let members: Vec<(&Arc<Instance>, u32)> = base
        .iter()
        .copied()
        .filter(|i| !excluded.contains_key(i.id.as_str()))
        .filter_map(|i| {
            let weight = local.weights.get(i.id.as_str()).copied().unwrap_or(i.weight).min(MAX_WEIGHT);
            (weight > 0).then_some((i, weight))
        })
        .collect();
    let left = left_out(registry, &candidates, &base, &members, &excluded);
    Rotation { members, protection, left }
}

/// The registry's instances that are not `members`, each with the first step that left it
/// out.
fn left_out<'a>(
    registry: &'a ServiceSnapshot,
    candidates: &[&Arc<Instance>],
    base: &[&Arc<Instance>],
    members: &[(&Arc<Instance>, u32)],
    excluded: &HashMap<&str, (Exclusion, Instant)>,
) -> Vec<(&'a Arc<Instance>, Exclusion, Option<Instant>)> {
    if members.len() == registry.instances.len() {
        return Vec::new();
    }
    let candidates: HashSet<&str> = candidates.iter().map(|i| i.id.as_str()).collect();
    let base: HashSet<&str> = base.iter().map(|i| i.id.as_str()).collect();
    let members: HashSet<&str> = members.iter().map(|(i, _)| i.id.as_str()).collect();
    registry
        .instances
        .iter()
        .filter(|i| !members.contains(i.id.as_str()))
        .map(|i| {
            let id = i.id.as_str();
            let (why, until) = if !i.enabled {
                (Exclusion::Disabled, None)
            } else if i.weight == 0 {
                (Exclusion::ZeroWeight, None)
            } else if !candidates.contains(id) {
                (Exclusion::Unhealthy, None)
            } else if !base.contains(id) {
                (Exclusion::Down, None)
            } else if let Some((why, until)) = excluded.get(id) {
                (*why, Some(*until))
            } else {
                (Exclusion::ZeroWeight, None)
            };
            (i, why, until)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sextant_core::{Revision, ServiceKey};

    use super::*;

    /// A service of `n` instances (ids `e0`..), all healthy unless listed, threshold `t`.
    fn service(n: usize, unhealthy: &[usize], threshold: f32) -> ServiceSnapshot {
        let key = ServiceKey::parse("shop/web/orders").unwrap();
        let instances = (0..n)
            .map(|k| {
                let mut i = Instance::new(key.clone(), "127.0.0.1".parse().unwrap(), 8000 + u16::try_from(k).unwrap());
                i.id = format!("e{k}").parse().unwrap();
                i.healthy = !unhealthy.contains(&k);
                Arc::new(i)
            })
            .collect();
        ServiceSnapshot::build(key, Revision(1), instances, threshold)
    }

    fn ids(r: &Rotation<'_>) -> Vec<String> {
        r.members.iter().map(|(i, _)| i.id.to_string()).collect()
    }

    fn none(_: &str) -> Option<Instant> {
        None
    }

    #[test]
    fn every_selected_instance_is_in_rotation_with_its_weight() {
        let s = service(3, &[1], 0.0);
        let r = rotation(&s, &LocalHealth::default(), &none, 50, Instant::now());
        assert_eq!(ids(&r), ["e0", "e2"], "the registry's unhealthy instance is not selected");
        assert!(r.members.iter().all(|(_, w)| *w == 100));
        assert!(!r.protection);
    }

    #[test]
    fn endpoints_found_down_leave_until_the_threshold_would_be_crossed() {
        let s = service(4, &[], 0.5);
        let mut local = LocalHealth::default();
        local.down.insert("e0".into());
        let r = rotation(&s, &local, &none, 50, Instant::now());
        assert_eq!(ids(&r), ["e1", "e2", "e3"]);
        assert!(!r.protection, "3 of 4 up is above the threshold");
        local.down.extend(["e1".into(), "e2".into()]);
        let r = rotation(&s, &local, &none, 50, Instant::now());
        assert_eq!(ids(&r), ["e0", "e1", "e2", "e3"], "1 of 4 up: every candidate stays");
        assert!(r.protection);
        // Exactly at the threshold: the down ones leave.
        local.down.remove("e2");
        let r = rotation(&s, &local, &none, 50, Instant::now());
        assert_eq!(ids(&r), ["e2", "e3"]);
        assert!(!r.protection);
    }

    #[test]
    fn the_registrys_protection_is_carried() {
        let s = service(4, &[0, 1, 2], 0.5);
        assert!(s.protection_active());
        let r = rotation(&s, &LocalHealth::default(), &none, 50, Instant::now());
        assert_eq!(ids(&r).len(), 4, "the registry selected every routable instance");
        assert!(r.protection);
    }

    #[test]
    fn ejections_are_capped_oldest_first_and_end_on_time() {
        let s = service(4, &[], 0.0);
        let now = Instant::now();
        let until = now + Duration::from_secs(30);
        let mut local = LocalHealth::default();
        local.ejected.insert("e2".into(), (until, now - Duration::from_secs(3)));
        local.ejected.insert("e0".into(), (until, now - Duration::from_secs(1)));
        local.ejected.insert("e3".into(), (until, now - Duration::from_secs(2)));
        let r = rotation(&s, &local, &none, 50, now);
        assert_eq!(ids(&r), ["e0", "e1"], "half of 4: the two oldest ejections (e2, e3) leave");
        let r = rotation(&s, &local, &none, 100, now);
        assert_eq!(ids(&r), ["e1"]);
        let r = rotation(&s, &local, &none, 0, now);
        assert_eq!(ids(&r).len(), 4, "a cap of 0 ejects nobody");
        let r = rotation(&s, &local, &none, 100, until + Duration::from_millis(1));
        assert_eq!(ids(&r).len(), 4, "ejections that ended are ignored");
    }

    #[test]
    fn open_breakers_count_as_ejections_under_the_same_cap() {
        let s = service(4, &[], 0.0);
        let now = Instant::now();
        let mut local = LocalHealth::default();
        local.ejected.insert("e1".into(), (now + Duration::from_secs(5), now - Duration::from_secs(1)));
        let open = move |id: &str| matches!(id, "e2" | "e3").then_some(now - Duration::from_secs(9));
        let r = rotation(&s, &local, &open, 50, now);
        assert_eq!(ids(&r), ["e0", "e1"], "the two oldest (the breakers) leave; the cap keeps e1");
        let r = rotation(&s, &local, &open, 75, now);
        assert_eq!(ids(&r), ["e0"]);
    }

    #[test]
    fn the_schedulers_weights_apply_capped_and_zero_leaves() {
        let s = service(3, &[], 0.0);
        let mut local = LocalHealth::default();
        local.weights.insert("e0".into(), 0);
        local.weights.insert("e1".into(), 50_000);
        let r = rotation(&s, &local, &none, 50, Instant::now());
        let got: Vec<(String, u32)> = r.members.iter().map(|(i, w)| (i.id.to_string(), *w)).collect();
        assert_eq!(got, [("e1".to_owned(), MAX_WEIGHT), ("e2".to_owned(), 100)]);
    }

    #[test]
    fn every_instance_left_out_says_which_step_left_it() {
        let key = ServiceKey::parse("shop/web/orders").unwrap();
        let mut s = service(7, &[1], 0.0);
        let mut all: Vec<Arc<Instance>> = s.instances.iter().cloned().collect();
        let mut disabled = (*all[5]).clone();
        disabled.enabled = false;
        let mut zero = (*all[6]).clone();
        zero.weight = 0;
        (all[5], all[6]) = (Arc::new(disabled), Arc::new(zero));
        s = ServiceSnapshot::build(key, Revision(2), all, 0.0);
        let now = Instant::now();
        let until = now + Duration::from_secs(30);
        let mut local = LocalHealth::default();
        local.down.insert("e0".into());
        local.ejected.insert("e2".into(), (until, now));
        let open = move |id: &str| (id == "e3").then_some(until);
        let r = rotation(&s, &local, &open, 100, now);
        assert_eq!(ids(&r), ["e4"]);
        let left: Vec<(String, Exclusion, Option<Instant>)> =
            r.left.iter().map(|(i, why, until)| (i.id.to_string(), *why, *until)).collect();
        assert_eq!(
            left,
            [
                ("e0".to_owned(), Exclusion::Down, None),
                ("e1".to_owned(), Exclusion::Unhealthy, None),
                ("e2".to_owned(), Exclusion::Ejected, Some(until)),
                ("e3".to_owned(), Exclusion::BreakerOpen, Some(until)),
                ("e5".to_owned(), Exclusion::Disabled, None),
                ("e6".to_owned(), Exclusion::ZeroWeight, None),
            ]
        );
        let r = rotation(&s, &local, &open, 0, now);
        assert!(r.left.iter().all(|(_, why, _)| !matches!(why, Exclusion::Ejected | Exclusion::BreakerOpen)));
    }

    #[test]
    fn an_empty_service_has_an_empty_rotation() {
        let s = service(0, &[], 0.5);
        let r = rotation(&s, &LocalHealth::default(), &none, 50, Instant::now());
        assert!(r.members.is_empty());
        assert!(!r.protection);
    }
}
