"""The audit chain's HMAC key: from the environment, or a key file made at first start.

Where the key comes from (:func:`chain_key`)
    ``gateway.audit.hmac_key_env`` names an environment variable: its value is
    the key (see :func:`mas.audit.chain.key_from_env`). Otherwise the key is the
    file ``gateway.audit.key_path``, by default ``.mas-keys/audit.key`` next to
    the store (the SQLite file's directory; mas.yaml's for Redis and memory).
    The server creates it at first start: 32 random bytes as 64 hex digits, in
    a file of mode 0600 inside a directory it creates with mode 0700. ``mas
    audit`` finds it the same way, from mas.yaml, but never creates one.

The key file is never in the audit file's own directory (a configured
``key_path`` there is refused): whoever may read or rotate the audit files
must not be able to read the key that makes them tamper-evident.

Blocking file I/O: call from a worker thread, or before the event loop runs.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from mas.audit.chain import MIN_KEY_BYTES, key_from_env
from mas.errors import ConfigError

KEY_DIR: Final = ".mas-keys"  # the default key file's directory, next to the store
KEY_FILE: Final = "audit.key"
KEY_MODE: Final = 0o600  # the key file: the server's user only
DIR_MODE: Final = 0o700
_KEY_BYTES: Final = 32  # random bytes of a generated key (written as 64 hex digits)


def default_key_path(store_dir: Path) -> Path:
    """The key file kept next to a store whose files live in ``store_dir``."""
    return store_dir / KEY_DIR / KEY_FILE


def check_key_path(key_path: Path, audit_file: str | None) -> None:
    """Refuse a key file in the audit file's directory (ConfigError)."""
    if audit_file is None:
        return
    if os.path.abspath(key_path.parent) == os.path.abspath(Path(audit_file).parent):
        raise ConfigError(
            f"the audit key {key_path} is in the same directory as the audit file"
            f" {audit_file}: whoever reads the audit files could read the key and rewrite"
            " them; set gateway.audit.key_path to a file in another directory"
        )


def read_key(path: Path) -> bytes | None:
    """The key in ``path``; None when there is no such file.

    Raises ConfigError when it cannot be read or is too short to be a key.
    """
    try:
        text = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the audit key {path}: {exc.strerror or exc}; run as the user the"
            " server runs as, or give the key with gateway.audit.hmac_key_env"
        ) from None
    if len(text) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the audit key file {path} holds {len(text)} bytes; a key has at least"
            f" {MIN_KEY_BYTES}: restore it from a backup, or move it away to start a new chain"
        )
    return text


def create_key(path: Path) -> bytes:
    """The key in ``path``, made (0600, in a 0700 directory) if there is none yet."""
    key = read_key(path)
    if key is not None:
        return key
    new = secrets.token_hex(_KEY_BYTES).encode("ascii")
    # Written whole under a private name, then linked into place: a server starting at
    # the same moment finds either no key or the complete one, never half of it.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
        try:
            os.fchmod(fd, KEY_MODE)  # whatever the umask
            os.write(fd, new + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
        finally:
            tmp.unlink()
        _fsync_dir(path.parent)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the audit key {path}: {exc.strerror or exc}; make its directory"
            " writable, or give a key with gateway.audit.hmac_key_env"
        ) from None
    return read_key(path) or new


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def chain_key(
    *,
    hmac_key_env: str | None,
    key_path: Path,
    audit_file: str | None,
    env: Mapping[str, str],
    create: bool,
) -> bytes | None:
    """The chain's key, as described in the module docstring.

    ``create`` (the server) makes the key file when it is missing; without it
    (``mas audit``) a missing file means None, an unkeyed verification.
    """
    if hmac_key_env is not None:
        return key_from_env(hmac_key_env, env)
    check_key_path(key_path, audit_file)
    return create_key(key_path) if create else read_key(key_path)
