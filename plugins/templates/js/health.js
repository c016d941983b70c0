// {{name}}: a sextant health policy.
//
// An endpoint becomes unhealthy after `unhealthy_after` (default 3) failed probes or
// requests in a row (a timeout, a refused connection or a 5xx), and healthy again after
// one success.
//
// Contract sextant:plugin@0.2.3: one instance per worker thread, `init` once in each; every
// service gets its own `Health` object (the resource): its failure counts.
import { log } from 'sextant:plugin/host@0.2.3';

let unhealthyAfter = 3;

function failure(what, e) {
  const text = `${what}: ${e}${e && e.stack ? `\n${e.stack}` : ''}`;
  log('error', text);
  return text;
}

function judge(failures, endpoint, status) {
  const failed = status.tag === 'http' ? status.val >= 500 : status.tag === 'timeout' || status.tag === 'failed';
  if (endpoint >= failures.length) return { tag: 'unchanged' };
  if (!failed) {
    const was = failures[endpoint];
    failures[endpoint] = 0;
    return was >= unhealthyAfter ? { tag: 'healthy' } : { tag: 'unchanged' };
  }
  failures[endpoint] += 1;
  return failures[endpoint] === unhealthyAfter ? { tag: 'unhealthy' } : { tag: 'unchanged' };
}

export const health = {
  init(config) {
    let n;
    try {
      n = JSON.parse(config).unhealthy_after ?? 3;
    } catch (e) {
      throw failure('init', e);
    }
    if (!Number.isInteger(n) || n < 1) {
      throw `unhealthy_after must be a positive integer, not ${n}`;
    }
    unhealthyAfter = n;
  },

  // One service's health policy.
  Health: class {
    constructor(service) {
      this.service = service;
      this.failures = [];
    }

    update(snapshot) {
      this.failures = snapshot.endpoints.map(() => 0);
    }

    onProbe(probe) {
      try {
        return judge(this.failures, probe.endpoint, probe.status);
      } catch (e) {
        failure('on-probe', e);
        throw e;
      }
    }

    onOutcome(outcome) {
      try {
        return judge(this.failures, outcome.endpoint, outcome.status);
      } catch (e) {
        failure('on-outcome', e);
        throw e;
      }
    }
  },
};
