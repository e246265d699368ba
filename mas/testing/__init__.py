"""Public helpers for testing code built on ``mas``.

``TestPKI`` is a throwaway certificate authority (built on trustme) that issues
server and SPIFFE agent certificates and the matching mTLS ``ssl`` contexts,
so a test can run real mutual TLS over loopback without touching the disk.

This package needs the test extras (``pip install mas[test]``); nothing in
``mas`` itself imports it.
"""

from .pki import TestPKI as TestPKI

__all__ = ["TestPKI"]
