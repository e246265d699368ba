"""The server's local control channel: a Unix-domain socket next to mas.yaml.

``protocol`` is the wire format (pure), ``client`` the blocking client the
commands use (``mas status``, ``mas top``, ``mas reload``, ``mas dlq replay``);
the server side is ``mas.server.control``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from ..config import LoadedConfig

SOCKET_SUFFIX: Final = ".sock"  # `mas.yaml.sock`: the default control socket


def socket_path(loaded: LoadedConfig) -> Path:
    """The control socket of the server started from ``loaded``.

    ``control_socket`` from the config (relative to its directory), else
    ``<config file name>.sock`` next to the config.
    """
    configured = loaded.config.control_socket
    if configured is not None:
        return loaded.base_dir / Path(configured).expanduser()
    return loaded.path.with_name(loaded.path.name + SOCKET_SUFFIX)


__all__ = ["SOCKET_SUFFIX", "socket_path"]
