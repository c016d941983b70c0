"""{{name}}: one service's balancer (the `balancer` resource of sextant:plugin@0.2.3).

The host creates one per service when the service first needs it, calls `update` before
its first `pick`, and drops it when the service goes away or idles: its state is the
service's own.
"""
from typing import Optional

from wit_world.exports import balancer
from wit_world.imports import load, types

import app


class Balancer(balancer.Balancer):
    def __init__(self, service: str) -> None:
        self.service = service
        self.weights: list[int] = []

    def update(self, snapshot: types.Snapshot) -> balancer.Mode:
        try:
            self.weights = [max(e.weight, 1) for e in snapshot.endpoints]
            if app.MODE == "table":
                return balancer.Mode_Table(balancer.Table_Weighted(list(self.weights)))
            return balancer.Mode_PerRequest()
        except Exception as e:
            raise app.failure("update", e)

    def pick(self, request: balancer.Request) -> Optional[int]:
        try:
            weights = self.weights
            if not weights:
                return None
            # A retry avoids the endpoints this request already tried (unless it tried all).
            tried = load.request_tried() if load.request_attempt() > 0 else []
            candidates = [i for i in range(len(weights)) if i not in tried] or range(len(weights))
            return min(candidates, key=lambda i: (load.in_flight(i) + 1) / weights[i])
        except Exception as e:
            # A pick has no error to return: log the traceback (it goes into the reason of
            # the fault) and fail; the host answers with its native default.
            app.failure("pick", e)
            raise
