"""{{name}}: a sextant balancer.

It sends each request to the endpoint with the fewest requests in flight per unit of
weight (per-request mode: the host calls `pick` for every request), or, with the
configuration {"mode": "table"}, returns the registered weights as a table the host
executes natively (table mode: no Python runs per request, native pick speed).

componentize-py calls the methods on a new `Balancer` object each time: keep state in
module globals, not in `self`. The host runs several instances of a plugin (one per worker
thread) and calls `init` and `update` on each.
"""
import json
import traceback
from typing import Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import balancer
from wit_world.imports import host, load, types

MODE = "per-request"
WEIGHTS: list[int] = []


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


class Balancer(exports.Balancer):
    def init(self, config: str) -> None:
        global MODE
        try:
            mode = json.loads(config).get("mode", "per-request")
        except Exception as e:
            raise failure("init", e)
        if mode not in ("per-request", "table"):
            raise Err(f"mode must be per-request or table, not {mode!r}")
        MODE = mode
        host.log(host.Level.INFO, f"{{name}} starts in {MODE} mode")

    def update(self, snapshot: types.Snapshot) -> balancer.Mode:
        global WEIGHTS
        try:
            WEIGHTS = [max(e.weight, 1) for e in snapshot.endpoints]
            if MODE == "table":
                return balancer.Mode_Table(balancer.Table_Weighted(list(WEIGHTS)))
            return balancer.Mode_PerRequest()
        except Exception as e:
            raise failure("update", e)

    def pick(self, request: balancer.Request) -> Optional[int]:
        try:
            if not WEIGHTS:
                return None
            return min(range(len(WEIGHTS)), key=lambda i: (load.in_flight(i) + 1) / WEIGHTS[i])
        except Exception as e:
            # A pick has no error to return: log the traceback (it goes into the reason of
            # the fault) and fail; the host answers with its native default.
            failure("pick", e)
            raise
