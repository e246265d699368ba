"""Gateway policy: pure, I/O-free decisions about each message, taking ``now``.

:mod:`~mas.policy.pipeline` (the filters in order and the decision values they return),
:mod:`~mas.policy.authz` (ACL + RBAC), :mod:`~mas.policy.ratelimit` (GCRA),
:mod:`~mas.policy.breaker` (per-target circuit breaker), :mod:`~mas.policy.dlp` (data loss
prevention). ``mas.server.gateway`` holds their state and runs the pipeline.
"""
