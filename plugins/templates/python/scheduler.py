"""{{name}}: one service's scheduler (the `scheduler` resource of sextant:plugin@0.2.3):
the registered weights of the service's last snapshot."""
from wit_world.exports import scheduler
from wit_world.imports import types

import app


class Scheduler(scheduler.Scheduler):
    def __init__(self, service: str) -> None:
        self.service = service
        self.weights: list[int] = []

    def update(self, snapshot: types.Snapshot) -> None:
        self.weights = [e.weight for e in snapshot.endpoints]

    def schedule(self, stats: list[scheduler.EndpointStats]) -> list[int]:
        try:
            out = []
            for weight, st in zip(self.weights, stats):
                errors = st.errors / st.requests if st.requests else 0.0
                troubled = errors > app.MAX_ERROR_SHARE or st.overloaded > 0
                out.append(max(weight // 2, 1) if troubled else max(weight, 1))
            return out
        except Exception as e:
            app.failure("schedule", e)
            raise
