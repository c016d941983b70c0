"""{{name}}: one service's health policy (the `health` resource of sextant:plugin@0.2.3):
failures in a row per endpoint of the service's last snapshot."""
from wit_world.exports import health
from wit_world.imports import types

import app


class Health(health.Health):
    def __init__(self, service: str) -> None:
        self.service = service
        self.failures: list[int] = []

    def update(self, snapshot: types.Snapshot) -> None:
        self.failures = [0] * len(snapshot.endpoints)

    def judge(self, endpoint: int, status: health.Status) -> health.Verdict:
        if isinstance(status, health.Status_Http):
            failed = status.value >= 500
        else:
            failed = isinstance(status, (health.Status_Timeout, health.Status_Failed))
        if endpoint >= len(self.failures):
            return health.Verdict_Unchanged()
        if not failed:
            was = self.failures[endpoint]
            self.failures[endpoint] = 0
            return health.Verdict_Healthy() if was >= app.UNHEALTHY_AFTER else health.Verdict_Unchanged()
        self.failures[endpoint] += 1
        if self.failures[endpoint] == app.UNHEALTHY_AFTER:
            return health.Verdict_Unhealthy()
        return health.Verdict_Unchanged()

    def on_probe(self, probe: health.ProbeResult) -> health.Verdict:
        try:
            return self.judge(probe.endpoint, probe.status)
        except Exception as e:
            app.failure("on-probe", e)
            raise

    def on_outcome(self, outcome: health.Outcome) -> health.Verdict:
        try:
            return self.judge(outcome.endpoint, outcome.status)
        except Exception as e:
            app.failure("on-outcome", e)
            raise
