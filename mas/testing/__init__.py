"""Public helpers for testing code built on ``mas``.

``TestPKI`` is a throwaway certificate authority (built on trustme) that issues
server and SPIFFE agent certificates and the matching mTLS ``ssl`` contexts,
so a test can run real mutual TLS over loopback without touching the disk;
``make_config`` and ``open_test_server`` run a real server in-process.

``TestPKI`` needs trustme, from the test extra (``pip install 'mas[test]'``):
without it this package still imports, and ``TestPKI()`` raises an
``ImportError`` that says so. Nothing in ``mas`` itself imports this package.
"""

from .pki import TestPKI as TestPKI
from .server import make_config as make_config
from .server import open_test_server as open_test_server

__all__ = ["TestPKI", "make_config", "open_test_server"]
