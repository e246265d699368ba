"""Gateway policy: pure, I/O-free decisions about each message (authz, and more to come)."""
