"""One webhook call: POST a JSON body with an idempotency key (and a bearer token), any answer
but 2xx or no answer is a failure. Shared by the alert sink and the retrieval notices."""

from __future__ import annotations

import urllib.error
import urllib.request

from core.errors import RetryableError


class WebhookError(RetryableError):
    """The webhook refused the call or could not be reached; the message says which."""


def post_json(url: str, body: bytes, *, idempotency_key: str, token: str = "", timeout: float = 5.0,
              what: str = "the webhook") -> None:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Idempotency-Key", idempotency_key)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"{what} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WebhookError(f"{what} cannot be reached: {getattr(exc, 'reason', exc)}") from None
