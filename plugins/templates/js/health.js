// {{name}}: a sextant health policy.
//
// An endpoint becomes unhealthy after `unhealthy_after` (default 3) failed probes or
// requests in a row (a timeout, a refused connection or a 5xx), and healthy again after
// one success.
//
// State lives in the module: the host runs several instances of a plugin and calls `init`
// and `update` on each.
import { log } from 'sextant:plugin/host@0.1.0';

let unhealthyAfter = 3;
let failures = [];

function failure(what, e) {
  const text = `${what}: ${e}${e && e.stack ? `\n${e.stack}` : ''}`;
  log('error', text);
  return text;
}

function judge(endpoint, status) {
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

  update(snapshot) {
    failures = snapshot.endpoints.map(() => 0);
  },

  onProbe(probe) {
    try {
      return judge(probe.endpoint, probe.status);
    } catch (e) {
      failure('on-probe', e);
      throw e;
    }
  },

  onOutcome(outcome) {
    try {
      return judge(outcome.endpoint, outcome.status);
    } catch (e) {
      failure('on-outcome', e);
      throw e;
    }
  },
};
