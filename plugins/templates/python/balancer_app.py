"""{{name}}: a sextant balancer.

It sends each request to the endpoint with the fewest requests in flight per unit of
weight (per-request mode: the host calls `pick` for every request), or, with the
configuration {"mode": "table"}, returns the registered weights as a table the host
executes natively (table mode: no Python runs per request, native pick speed).

Contract sextant:plugin@0.2.3: the host runs one instance of the plugin per worker thread
and calls `init` (here) once in each; every service the plugin is bound to gets its own
`Balancer` resource (balancer.py) in that instance. componentize-py calls `init` on a new
object: what every service shares (the configuration) lives in module globals.
"""
import json
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host

MODE = "per-request"


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
