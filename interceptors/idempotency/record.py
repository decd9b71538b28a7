"""How a finished call's outcome is written to a store and read back for a replay.

The response is kept as the bytes the handler's own serializer produced, and the status
as code, message and trailing metadata, which is where a rich error status travels
(``grpc-status-details-bin``), so a replayed error carries the same details.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import grpc

from interceptors.outcome import Metadata, Outcome

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def encode(outcome: Outcome, serialize: Callable[[Any], bytes] | None) -> bytes:
    response = outcome.response
    if response is not None and serialize is not None:
        response = serialize(response)
    return json.dumps(
        {
            "code": outcome.code.value[0],
            "details": outcome.details,
            "trailing": [
                [key, base64.b64encode(value).decode(), True] if isinstance(value, bytes) else [key, value, False]
                for key, value in outcome.trailing_metadata
            ],
            "response": None if response is None else base64.b64encode(response).decode(),
        },
        separators=(",", ":"),
    ).encode()


def decode(record: bytes) -> Outcome:
    """The stored outcome; its response is the serialized bytes (see the interceptor's serializer)."""
    data = json.loads(record)
    trailing: Metadata = tuple(
        (key, base64.b64decode(value) if is_bytes else value) for key, value, is_bytes in data["trailing"]
    )
    response = data["response"]
    return Outcome(
        _CODES[data["code"]],
        data["details"],
        trailing,
        None if response is None else base64.b64decode(response),
    )
