"""Public helpers for testing code built on ``mas``.

``TestPKI`` is a throwaway certificate authority (built on trustme) that issues
server and SPIFFE agent certificates and the matching mTLS ``ssl`` contexts,
so a test can run real mutual TLS over loopback without touching the disk;
``make_config`` and ``open_test_server`` run a real server in-process.

This package needs the test extras (``pip install mas[test]``); nothing in
``mas`` itself imports it.
"""

from .pki import TestPKI as TestPKI
from .server import make_config as make_config
from .server import open_test_server as open_test_server

__all__ = ["TestPKI", "make_config", "open_test_server"]
