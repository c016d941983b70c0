// {{name}}: a sextant balancer.
//
// It sends each request to the endpoint with the fewest requests in flight per unit of
// weight (per-request mode: the host calls `pick` for every request), or, with the
// configuration {"mode": "table"}, returns the registered weights as a table the host
// executes natively (table mode: no JavaScript runs per request, native pick speed).
//
// Contract sextant:plugin@0.2.3: the host runs one instance of the plugin per worker thread
// and calls `init` once in each; every service the plugin is bound to gets its own
// `Balancer` (the resource) in that instance, created when the service first needs it,
// given a snapshot before its first pick, dropped when the service goes away or idles. What
// every service shares (the configuration) lives in the module; a service's state in its
// object.
import { log } from 'sextant:plugin/host@0.2.3';
import { inFlight, requestAttempt, requestTried } from 'sextant:plugin/load@0.2.3';

let mode = 'per-request';

// An exception as the plugin's failure (a string is what the contract's `failure` is),
// its stack logged by the host.
function failure(what, e) {
  const text = `${what}: ${e}${e && e.stack ? `\n${e.stack}` : ''}`;
  log('error', text);
  return text;
}

export const balancer = {
  init(config) {
    let wanted;
    try {
      wanted = JSON.parse(config).mode ?? 'per-request';
    } catch (e) {
      throw failure('init', e);
    }
    if (wanted !== 'per-request' && wanted !== 'table') {
      throw `mode must be per-request or table, not ${wanted}`;
    }
    mode = wanted;
    log('info', `{{name}} starts in ${mode} mode`);
  },

  // One service's balancer.
  Balancer: class {
    constructor(service) {
      this.service = service;
      this.weights = [];
    }

    update(snapshot) {
      try {
        this.weights = snapshot.endpoints.map((e) => Math.max(e.weight, 1));
        if (mode === 'table') {
          // A list<u32> goes out as a Uint32Array: componentize-js lowers a plain array of
          // numbers inside a variant wrongly.
          return { tag: 'table', val: { tag: 'weighted', val: new Uint32Array(this.weights) } };
        }
        return { tag: 'per-request' };
      } catch (e) {
        throw failure('update', e);
      }
    }

    pick(_request) {
      try {
        const weights = this.weights;
        if (weights.length === 0) return undefined;
        // A retry avoids the endpoints this request already tried (unless it tried all).
        const tried = requestAttempt() > 0 ? Array.from(requestTried()) : [];
        const avoid = tried.length < weights.length ? tried : [];
        let best = 0;
        let bestScore = Infinity;
        for (let i = 0; i < weights.length; i++) {
          if (avoid.includes(i)) continue;
          const score = (inFlight(i) + 1) / weights[i];
          if (score < bestScore) {
            best = i;
            bestScore = score;
          }
        }
        return best;
      } catch (e) {
        // A pick has no error to return: log the stack (it goes into the reason of the
        // fault) and fail; the host answers with its native default.
        failure('pick', e);
        throw e;
      }
    }
  },
};
