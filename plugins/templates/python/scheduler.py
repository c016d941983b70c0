"""{{name}}: a sextant traffic scheduler.

Every period the host hands it what each endpoint did; it keeps the registered weights,
halves the weight of an endpoint whose error share passed `max_error_share` (default 0.05)
or that signalled overload (429, 503 with Retry-After), and gives every endpoint at least
weight 1.

componentize-py calls the methods on a new `Scheduler` object each time: keep state in
module globals, not in `self`. The host runs several instances of a plugin and calls `init`
and `update` on each.
"""
import json
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import scheduler
from wit_world.imports import host, types

MAX_ERROR_SHARE = 0.05
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


class Scheduler(exports.Scheduler):
    def init(self, config: str) -> None:
        global MAX_ERROR_SHARE
        try:
            share = json.loads(config).get("max_error_share", 0.05)
        except Exception as e:
            raise failure("init", e)
        if not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise Err(f"max_error_share must be a number from 0 to 1, not {share!r}")
        MAX_ERROR_SHARE = float(share)

    def update(self, snapshot: types.Snapshot) -> None:
        global WEIGHTS
        WEIGHTS = [e.weight for e in snapshot.endpoints]

    def schedule(self, stats: list[scheduler.EndpointStats]) -> list[int]:
        try:
            out = []
            for weight, st in zip(WEIGHTS, stats):
                errors = st.errors / st.requests if st.requests else 0.0
                troubled = errors > MAX_ERROR_SHARE or st.overloaded > 0
                out.append(max(weight // 2, 1) if troubled else max(weight, 1))
            return out
        except Exception as e:
            failure("schedule", e)
            raise
