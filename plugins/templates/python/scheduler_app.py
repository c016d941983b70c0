"""{{name}}: a sextant traffic scheduler.

Every period the host hands it what each endpoint did; it keeps the registered weights,
halves the weight of an endpoint whose error share passed `max_error_share` (default 0.05)
or that signalled overload (429, 503 with Retry-After), and gives every endpoint at least
weight 1.

Contract sextant:plugin@0.2.3: one instance per worker thread, `init` (here) once in each;
every service gets its own `Scheduler` resource (scheduler.py). What every service shares
(the configuration) lives in module globals.
"""
import json
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host

MAX_ERROR_SHARE = 0.05


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
