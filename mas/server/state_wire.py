"""State values on the wire: JSON text for mas clients, any text for compatible ones (pure).

The store keeps every state value as JSON text. A client that sets ``json_values``
(the mas SDK) sends JSON text and gets it back byte for byte. A client that does
not (the seed system's SDK and any stock client generated from the same .proto)
sends ``str(value)``: ``"bob"``, ``"True"``, ``"None"``, ``"{'a': 1}"``, text that
is usually not JSON and whose type is lost anyway. Such a value is stored as a
JSON string of its text, so it costs the same bound and reaches a mas agent as
the string it is; read back by a compatible client, a stored JSON string is
given as its text (exactly what that client sent) and any other JSON value as its
JSON text. A stock client's values therefore round-trip unchanged, and a mas
client's keep their exact JSON round trip; nothing a stock client can send is
refused for its content.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

_encoder: Final = msgspec.json.Encoder()
_string: Final = msgspec.json.Decoder(str)


def stored_from_text(text: str) -> str:
    """What the store keeps for a value a compatible client sent: a JSON string."""
    return _encoder.encode(text).decode()


def text_from_stored(stored: str) -> str:
    """What a compatible client is given for a stored value (see the module docstring)."""
    if stored.startswith('"'):
        try:
            return _string.decode(stored)
        except msgspec.DecodeError:
            return stored  # not written through this module; give it as stored
    return stored


def texts_from_stored(stored: Mapping[str, str]) -> dict[str, str]:
    """``text_from_stored`` for every value of a state."""
    return {key: text_from_stored(value) for key, value in stored.items()}
