"""How every fabtier MQTT client reaches the broker: address, TLS context, login, and what
went wrong, in words.

The ingest subscriber, the alert sink, the retrieval-job notifier and the simulator each run
their own paho client. This is the one place that turns `[broker]` into what paho needs, so
that none of them can forget the CA or the client certificate, and so that a refused login
or a failed TLS handshake reads the same in every log. The password is only ever handed to
paho (`username_pw_set`); nothing here formats it.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from core.errors import ConfigError
from core.settings import BrokerSettings

_PEM_FIX = "give a PEM file"


def broker_address(url: str) -> tuple[str, int, bool]:
    """(host, port, TLS) of an `mqtt://` or `mqtts://` URL; the port defaults to 1883 / 8883."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would ask for an encrypted key's passphrase on the terminal.
    return b""


def tls_context(*, ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """A client context that verifies the broker (its certificate and host name) against
    `ca_file`, or the system's CAs when it is empty, and presents `cert_file`/`key_file` when
    given. Raises ConfigError naming the key whose file cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("[broker] ca_file", f"{ca_file!r} cannot be used as CA bundle ({_reason(exc)})",
                              f"{_PEM_FIX} with the CA certificate that signed the broker's certificate") from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file or None, password=_no_passphrase)
        except (OSError, ssl.SSLError) as exc:
            key = "[broker] key_file" if key_file and _about_key(exc) else "[broker] cert_file"
            raise ConfigError(key, f"the client certificate {cert_file!r} and key {key_file!r} cannot be "
                              f"loaded ({_reason(exc)})",
                              "give the client certificate (PEM) as cert_file and its unencrypted private key "
                              "(PEM) as key_file") from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _about_key(exc: BaseException) -> bool:
    reason = str(getattr(exc, "reason", "") or exc).upper()
    return any(word in reason for word in ("KEY", "DECRYPT", "PEM_LIB"))


def broker_tls(broker: BrokerSettings) -> ssl.SSLContext | None:
    """The TLS context of `[broker]`, None for a plain `mqtt://` broker."""
    if not broker_address(broker.url)[2]:
        return None
    return tls_context(ca_file=broker.ca_file, cert_file=broker.cert_file, key_file=broker.key_file)


def apply_login(client: Any, *, url: str, username: str = "", password: str = "",
                tls: ssl.SSLContext | None = None) -> tuple[str, int]:
    """Give a paho client the broker's TLS context (an `mqtts://` URL without one gets the
    system's CAs) and the login; returns (host, port) to connect to."""
    host, port, is_tls = broker_address(url)
    if is_tls:
        client.tls_set_context(tls or ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    if username:
        client.username_pw_set(username, password or None)
    return host, port


# MQTT 5 CONNACK reason codes (MQTT 3.1.1 return codes arrive mapped onto them by paho) that
# an operator can act on, and what to do.
_CONNACK_FIXES = {
    0x85: "the broker does not take this [broker] client_id",
    0x86: "check [broker] username and the password (FABTIER_BROKER_PASSWORD or [broker] password_file)",
    # mosquitto answers a wrong password with this one too
    0x87: "check [broker] username and the password (FABTIER_BROKER_PASSWORD or [broker] password_file), "
          "and that the broker lets this user and client certificate connect",
    0x8A: "the broker has banned this client",
    0x8C: "the broker wants another authentication method",
}


def refusal_words(reason_code: Any) -> str:
    """A CONNACK refusal as an operator reads it: paho's name for the reason, its number, and
    what to check."""
    value = getattr(reason_code, "value", None)
    text = f"{reason_code} (CONNACK reason code {value})" if isinstance(value, int) else str(reason_code)
    fix = _CONNACK_FIXES.get(value) if isinstance(value, int) else None
    return f"{text}; {fix}" if fix else text


def connection_problem(problem: BaseException | str) -> str:
    """A failed connection (an exception, or paho's log line about one) in words, with the
    `[broker]` key to look at where the TLS handshake says which."""
    text = problem if isinstance(problem, str) else _reason(problem)
    upper = text.upper()
    if isinstance(problem, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in upper:
        detail = getattr(problem, "verify_message", "") or text
        return (f"TLS: the broker's certificate is not trusted ({detail}); set [broker] ca_file to the CA "
                "certificate that signed it, and connect by a name the certificate holds")
    if "CERTIFICATE_REQUIRED" in upper or "PEER DID NOT RETURN A CERTIFICATE" in upper:
        return "TLS: the broker requires a client certificate; set [broker] cert_file and key_file"
    if any(alert in upper for alert in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN",
                                        "UNSUPPORTED_CERTIFICATE", "CERTIFICATE_EXPIRED")):
        return (f"TLS: the broker does not accept the client certificate ({text}); give a [broker] cert_file "
                "signed by a CA the broker trusts")
    if "WRONG_VERSION_NUMBER" in upper or "RECORD_LAYER_FAILURE" in upper:
        return f"TLS: the broker does not speak TLS on this port ({text}); use mqtt:// or the broker's TLS port"
    if isinstance(problem, ConnectionRefusedError):
        return "nothing listens there (connection refused)"
    return text
