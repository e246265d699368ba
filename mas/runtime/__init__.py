"""The composition layer: what runs in a ``mas`` process, and in which order.

Everything below the command line that puts the pieces together lives here; it
alone chooses a store backend, reads the environment and handles signals::

    preflight.py      what a start would refuse, found before anything starts
    backend.py        the store the config names (memory, sqlite, redis), its bounds and key
    tree.py           Runtime: the nursery tree of `mas run` / `mas serve`
                      (signals -> control -> http -> server -> agents)
    agent_process.py  AgentProcess: the instances of one agent (`mas agent`)
    hosting.py        AgentHost: load agent classes, build and drain instances; watch_signals
    supervisor.py     AgentSupervisor: one task per instance, restarts, crash loops

``Runtime`` and ``AgentProcess`` are the two process shapes; both run
``preflight``, then an ``AgentHost`` (which runs an ``AgentSupervisor``) under
``watch_signals``. ``mas.cli`` drives them; ``mas.testing`` builds its store here.
"""

from .agent_process import AgentProcess as AgentProcess
from .backend import audit_key as audit_key
from .backend import audit_key_path as audit_key_path
from .backend import build_store as build_store
from .backend import open_store as open_store
from .backend import redis_url as redis_url
from .backend import sqlite_path as sqlite_path
from .backend import store_limits as store_limits
from .preflight import Report as Report
from .preflight import preflight as preflight
from .supervisor import AgentCrashLoopError as AgentCrashLoopError
from .tree import Runtime as Runtime
