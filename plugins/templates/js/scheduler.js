// {{name}}: a sextant traffic scheduler.
//
// Every period the host hands it what each endpoint did; it keeps the registered weights,
// halves the weight of an endpoint whose error share passed `max_error_share` (default
// 0.05) or that signalled overload (429, 503 with Retry-After), and gives every endpoint
// at least weight 1.
//
// Contract sextant:plugin@0.2.3: one instance per worker thread, `init` once in each; every
// service gets its own `Scheduler` object (the resource): its registered weights.
import { log } from 'sextant:plugin/host@0.2.3';

let maxErrorShare = 0.05;

function failure(what, e) {
  const text = `${what}: ${e}${e && e.stack ? `\n${e.stack}` : ''}`;
  log('error', text);
  return text;
}

export const scheduler = {
  init(config) {
    let share;
    try {
      share = JSON.parse(config).max_error_share ?? 0.05;
    } catch (e) {
      throw failure('init', e);
    }
    if (typeof share !== 'number' || share < 0 || share > 1) {
      throw `max_error_share must be a number from 0 to 1, not ${share}`;
    }
    maxErrorShare = share;
  },

  // One service's scheduler.
  Scheduler: class {
    constructor(service) {
      this.service = service;
      this.weights = [];
    }

    update(snapshot) {
      this.weights = snapshot.endpoints.map((e) => e.weight);
    }

    schedule(stats) {
      try {
        // A list<u32> goes out as a Uint32Array (see the balancer template).
        return Uint32Array.from(this.weights.slice(0, stats.length), (weight, i) => {
          const st = stats[i];
          // u64 counters arrive as BigInt.
          const requests = Number(st.requests);
          const errors = requests === 0 ? 0 : Number(st.errors) / requests;
          const troubled = errors > maxErrorShare || Number(st.overloaded) > 0;
          return troubled ? Math.max(Math.floor(weight / 2), 1) : Math.max(weight, 1);
        });
      } catch (e) {
        failure('schedule', e);
        throw e;
      }
    }
  },
};
