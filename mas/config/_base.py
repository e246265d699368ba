"""Shared pieces of the config model: base Struct, constrained types, address parsing."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Annotated, Final, Literal

import msgspec

CONFIG_ENV_VAR: Final = "MAS_RUNNER_CONFIG_FILE"  # names the config file (or its directory)
CONFIG_FILE_NAME: Final = "mas.yaml"  # the file searched for, upward from the working directory

_AGENT_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"  # also the SPIFFE path segment
_TRUST_DOMAIN_PATTERN: Final = r"^[a-z0-9._-]+$"  # SPIFFE trust domain characters
_HOST_RE: Final = re.compile(r"^[A-Za-z0-9._-]+$")
_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
WILDCARD: Final = "*"  # in a deny rule: any sender or any target

PosInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]
AgentId = Annotated[str, msgspec.Meta(pattern=_AGENT_ID_PATTERN)]
Name = Annotated[str, msgspec.Meta(min_length=1)]
Action = Literal["block", "redact", "alert"]


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: the user info's (``user:pass@``) and
    any ``password`` query parameter's (``?password=``, any case). The one URL redactor:
    every log line and error message that shows a store URL shows it through this.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    shown = url
    if password is not None:
        user_info, _, host = parts.netloc.rpartition("@")
        user = user_info.partition(":")[0]
        shown = shown.replace(parts.netloc, f"{user}:***@{host}", 1)
    if "password" in parts.query.lower():
        query = urllib.parse.urlencode(
            [
                (k, "***" if k.lower() == "password" else v)
                for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*",
        )
        head, _, _ = shown.partition("?")
        shown = f"{head}?{query}"
    return shown


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Common options: immutable, typo-proof, keyword-only."""


def split_host_port(addr: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[ipv6]:port`` into (host without brackets, port).

    Raises ValueError naming the expected shape when ``addr`` does not fit.
    """
    shape = f"expected 'host:port' or '[ipv6]:port' with port 0..65535, got {addr!r}"
    host, sep, port_text = addr.rpartition(":")
    if not sep or not host or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(shape)
    port = int(port_text)
    if port > 65535:
        raise ValueError(shape)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{shape}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{shape}: put an IPv6 address in brackets")
    elif not _HOST_RE.match(host):
        raise ValueError(shape)
    return host, port
