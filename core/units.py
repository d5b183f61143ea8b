"""Parsing of the short durations ("5s", "10m", "3d") and sizes ("2GiB") used in configuration."""

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_BYTES = {
    None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration such as "500ms", "5s", "10m", "3d"; a bare number is seconds."""
    if isinstance(text, bool):
        raise ValueError("a duration is not a boolean")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration")
    return float(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def parse_size(text: str | int) -> int:
    """Bytes in a size such as "2GiB", "512MB" or a bare number of bytes."""
    if isinstance(text, bool):
        raise ValueError("a size is not a boolean")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size")
    return int(float(match.group(1)) * _SIZE_BYTES[match.group(2)])
