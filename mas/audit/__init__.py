"""The tamper-evident audit trail: records, the hash chain, a JSONL file sink, exports.

``record``, ``chain``, ``diagnosis``, ``retention`` and ``export`` are pure;
``reader``, ``sink``, ``keys`` (the key file) and ``store_trail`` (the chain in
a store, read-only) do blocking I/O: call them from a worker thread (``mas audit``,
in ``mas.cli.audit``, reads them). The chain's encoding and the classes of
tampering are described in :mod:`mas.audit.chain` and :mod:`mas.audit.diagnosis`.
"""

from mas.audit.chain import GENESIS as GENESIS
from mas.audit.chain import canonical as canonical
from mas.audit.chain import key_from_env as key_from_env
from mas.audit.chain import link as link
from mas.audit.chain import link_many as link_many
from mas.audit.chain import record_hash as record_hash
from mas.audit.chain import verify as verify
from mas.audit.diagnosis import Problem as Problem
from mas.audit.diagnosis import Unreadable as Unreadable
from mas.audit.diagnosis import VerifyReport as VerifyReport
from mas.audit.record import DECISIONS as DECISIONS
from mas.audit.record import AuditDraft as AuditDraft
from mas.audit.record import AuditRecord as AuditRecord
from mas.audit.record import Decision as Decision
from mas.audit.record import Violation as Violation
from mas.audit.record import payload_digest as payload_digest
from mas.audit.sink import AuditSinkError as AuditSinkError
from mas.audit.sink import JsonlSink as JsonlSink
from mas.audit.sink import read_records as read_records

__all__ = [
    "DECISIONS",
    "GENESIS",
    "AuditDraft",
    "AuditRecord",
    "AuditSinkError",
    "Decision",
    "JsonlSink",
    "Problem",
    "Unreadable",
    "VerifyReport",
    "Violation",
    "canonical",
    "key_from_env",
    "link",
    "link_many",
    "payload_digest",
    "read_records",
    "record_hash",
    "verify",
]
