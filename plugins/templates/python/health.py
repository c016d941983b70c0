"""{{name}}: a sextant health policy.

An endpoint becomes unhealthy after `unhealthy_after` (default 3) failed probes or requests
in a row (a timeout, a refused connection or a 5xx), and healthy again after one success.

componentize-py calls the methods on a new `Health` object each time: keep state in module
globals, not in `self`. The host runs several instances of a plugin and calls `init` and
`update` on each.
"""
import json
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import health
from wit_world.imports import host, types

UNHEALTHY_AFTER = 3
FAILURES: list[int] = []


def failure(what: str, e: BaseException) -> Err:
    """An exception as the plugin's failure, its traceback logged by the host.

    The traceback is written without source lines: reading them opens files, and a
    component built with --stub-wasi traps on any file access (print() too: log instead).
    """
    frames = [
        f'  File "{f.f_code.co_filename}", line {line}, in {f.f_code.co_name}'
        for f, line in traceback.walk_tb(e.__traceback__)
    ]
    text = "\n".join([f"{what}: Traceback (most recent call last):", *frames, f"{type(e).__name__}: {e}"])
    host.log(host.Level.ERROR, text)
    return Err(text)


def judge(endpoint: int, status: health.Status) -> health.Verdict:
    if isinstance(status, health.Status_Http):
        failed = status.value >= 500
    else:
        failed = isinstance(status, (health.Status_Timeout, health.Status_Failed))
    if endpoint >= len(FAILURES):
        return health.Verdict_Unchanged()
    if not failed:
        was = FAILURES[endpoint]
        FAILURES[endpoint] = 0
        return health.Verdict_Healthy() if was >= UNHEALTHY_AFTER else health.Verdict_Unchanged()
    FAILURES[endpoint] += 1
    if FAILURES[endpoint] == UNHEALTHY_AFTER:
        return health.Verdict_Unhealthy()
    return health.Verdict_Unchanged()


class Health(exports.Health):
    def init(self, config: str) -> None:
        global UNHEALTHY_AFTER
        try:
            n = json.loads(config).get("unhealthy_after", 3)
        except Exception as e:
            raise failure("init", e)
        if not isinstance(n, int) or n < 1:
            raise Err(f"unhealthy_after must be a positive integer, not {n!r}")
        UNHEALTHY_AFTER = n

    def update(self, snapshot: types.Snapshot) -> None:
        global FAILURES
        FAILURES = [0] * len(snapshot.endpoints)

    def on_probe(self, probe: health.ProbeResult) -> health.Verdict:
        try:
            return judge(probe.endpoint, probe.status)
        except Exception as e:
            failure("on-probe", e)
            raise

    def on_outcome(self, outcome: health.Outcome) -> health.Verdict:
        try:
            return judge(outcome.endpoint, outcome.status)
        except Exception as e:
            failure("on-outcome", e)
            raise
