"""{{name}}: a sextant health policy.

An endpoint becomes unhealthy after `unhealthy_after` (default 3) failed probes or requests
in a row (a timeout, a refused connection or a 5xx), and healthy again after one success.

Contract sextant:plugin@0.2.3: one instance per worker thread, `init` (here) once in each;
every service gets its own `Health` resource (health.py). What every service shares (the
configuration) lives in module globals.
"""
import json
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host

UNHEALTHY_AFTER = 3


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
