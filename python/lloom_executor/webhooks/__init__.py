"""`[webhooks]`: signed JSON events POSTed to the operator's endpoints, off the request path.

The receiver's specification (events, payload fields, headers, the signature and how
to verify it, delivery and retries, logging and metrics) is docs/webhooks.md. The
payloads are built in `events.py`, shared with the plugins' `on_request_finished`.
Here: `signing` (the signature scheme), `delivery` (one endpoint's queue, POSTs,
retries), `facade` (`Webhooks`, what the node calls).
"""

from __future__ import annotations

from .delivery import (
    ATTEMPT_HEADER,
    EVENT_HEADER,
    EVENT_ID_HEADER,
    MAX_RESPONSE_READ,
    Delivery,
    Endpoint,
    EndpointStats,
    Event,
    describe_url,
)
from .facade import (
    BACKOFF_BASE_SECS,
    BACKOFF_MAX_SECS,
    EVENTS,
    FLUSH_TIMEOUT_SECS,
    MAX_RETRY_AFTER_SECS,
    QUEUE_SIZE,
    TIMEOUT_SECS,
    Webhooks,
)
from .signing import SIGNATURE_HEADER, SIGNER_HEADER, sign_body, signing_digest, verify_signature

__all__ = [
    "ATTEMPT_HEADER",
    "BACKOFF_BASE_SECS",
    "BACKOFF_MAX_SECS",
    "EVENTS",
    "EVENT_HEADER",
    "EVENT_ID_HEADER",
    "FLUSH_TIMEOUT_SECS",
    "MAX_RESPONSE_READ",
    "MAX_RETRY_AFTER_SECS",
    "QUEUE_SIZE",
    "SIGNATURE_HEADER",
    "SIGNER_HEADER",
    "TIMEOUT_SECS",
    "Delivery",
    "Endpoint",
    "EndpointStats",
    "Event",
    "Webhooks",
    "describe_url",
    "sign_body",
    "signing_digest",
    "verify_signature",
]
