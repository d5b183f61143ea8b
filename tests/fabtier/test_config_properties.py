"""The configuration loader under arbitrary input (hypothesis): any TOML document, any value
of any known key, any environment override, any file. The loader either returns settings or
raises the project's ConfigError naming the key and saying the fix, never another exception
(a traceback for the user); and a secret never shows in its message."""

from __future__ import annotations

import dataclasses
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from core.settings import Settings
from fabtier.config import _SECTIONS, load_settings, settings_from_mapping

FIELDS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in _SECTIONS.items()}
RULE_KEYS = ["name", "sensor", "high", "low", "for", "hysteresis", "recipe"]
# Values that reach the branches of the converters: durations, sizes, URLs, names, edges.
NEAR_MISSES = [
    "5s", "0s", "1.5m", "-1s", "10", "0", "2GiB", "1.5KiB", "9" * 400, "9" * 400 + "s", "1e400", "nan", "inf",
    "mqtt://127.0.0.1:1883", "mqtts://broker:8883", "mqtt://h:99999", "mqtt://h:x", "mqtts://", "mqtt://u@h",
    "http://[", "http://h", "https://h:1/x", "file:///tmp/x", "file://rel", "s3://b/p", "s3://", "", " ",
    "true", "false", "no", "yes", "fab", "fab/#", "fab/x", "/fab", "a\x00b", "aws:kms", "AES256", "standard",
    "bulk", "/", ".", "v1", "v2", "*/ch*/temp", "w0", "r", "x" * 300, "²", "٣",
]
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(),  # beyond TOML's 64 bits: what a mapping from elsewhere could hold
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(NEAR_MISSES),
    st.datetimes(), st.dates(), st.times(),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


@st.composite
def sections(draw, name: str) -> dict:
    keys = st.sampled_from(FIELDS[name]) | st.text(max_size=10)
    table = draw(st.dictionaries(keys, values, max_size=4))
    if name == "alerts" and draw(st.booleans()):
        rule = st.dictionaries(st.sampled_from(RULE_KEYS) | st.text(max_size=6), values, max_size=6)
        table["rules"] = draw(st.lists(rule | values, max_size=3) | values)
    return table


@st.composite
def documents(draw) -> dict:
    doc: dict = {}
    for name in draw(st.lists(st.sampled_from(list(_SECTIONS)), max_size=4, unique=True)):
        doc[name] = draw(sections(name) | values)
    if draw(st.booleans()):
        doc["data_dir"] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.text(max_size=8))] = draw(values)
    return doc


def _holds(load) -> Settings | None:
    """The settings, or None after a ConfigError that names its key and says the fix."""
    try:
        return load()
    except ConfigError as exc:
        assert isinstance(exc.key, str) and exc.key, exc
        assert exc.fix, f"no fix for {exc.key}: {exc}"
        return None


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(documents())
# What hypothesis found (each crashed the loader with a traceback before it was fixed):
@example({"": False})  # an empty key
@example({"data_dir": False})  # no fix said
@example({"cold": {"seal_every": [1]}})  # TypeError in the duration parser
@example({"hot": {"memory_budget": 1.5}})  # TypeError in the size parser
@example({"hot": {"memory_budget": "9" * 400}})  # OverflowError
@example({"cold": {"seal_every": 10**400}})
@example({"cold": {"seal_every": float("nan")}})
@example({"alerts": {"rules": [{"name": "r", "sensor": "*", "high": 10**400}]}})
@example({"alerts": {"rules": [{"name": "r", "sensor": "*", "high": float("inf")}]}})
@example({"data_dir": "a\x00"})  # ValueError (embedded null byte) when the store URL is made
@example({"alerts": {"recipes": "a\x00"}})
def test_any_document_gives_settings_or_a_config_error_with_key_and_fix(doc):
    _holds(lambda: settings_from_mapping(doc, env={}))


env_names = st.sampled_from(
    ["FABTIER_DATA_DIR"] + [f"FABTIER_{s.upper()}_{k.upper()}" for s, keys in FIELDS.items() for k in keys])


@FAST
@given(st.dictionaries(env_names | st.text(max_size=12).map(lambda t: "FABTIER_" + t),
                       st.sampled_from(NEAR_MISSES) | st.text(max_size=12), max_size=4))
def test_any_environment_gives_settings_or_a_config_error_with_key_and_fix(env):
    _holds(lambda: settings_from_mapping({}, env=env))


toml_lines = st.one_of(
    st.sampled_from([f"[{name}]" for name in _SECTIONS] + ["[[alerts.rules]]", "[broker", "data_dir = "]),
    st.builds(lambda k, v: f"{k} = {v}",
              st.sampled_from(sorted({k for keys in FIELDS.values() for k in keys} | set(RULE_KEYS))),
              st.sampled_from(['"5s"', "5", "-1", "1.5", "true", "nan", "inf", "[]", "{}", '""', '"a\\u0000"',
                               "1979-05-27T07:32:00Z", '"mqtts://h:8883"', '"mqtt://u:p@h"', "9" * 30])),
    st.text(max_size=30),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(toml_lines, max_size=8).map("\n".join) | st.binary(max_size=60).map(lambda b: b))
def test_any_file_gives_settings_or_a_config_error(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fabtier.toml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
        try:
            load_settings(path, env={})
        except ConfigError as exc:
            assert exc.key, exc  # a file that is not TOML: ConfigFileError names the file


def test_a_directory_or_unreadable_config_is_a_config_error(tmp_path):
    for path in (tmp_path, tmp_path / "missing.toml"):
        assert _holds(lambda p=path: load_settings(p, env={})) is None


# Marked, so that a word the settings print anyway (hypothesis also tries the code's own
# strings) is never taken for a leaked secret.
secrets = st.text(alphabet=string.ascii_letters + string.digits, min_size=4, max_size=20).map(lambda t: f"s3cr3t-{t}")


@FAST
@given(secrets, st.sampled_from(["mqtt", "mqtts", "http", "ftp"]),
       st.sampled_from(["127.0.0.1:1883", "h:x", "", "[", "h:99999", "h"]),
       st.sampled_from(["url", "password"]))
def test_a_secret_never_shows_in_a_config_error(secret, scheme, rest, key):
    value = f"{scheme}://user:{secret}@{rest}" if key == "url" else secret
    for doc in ({"broker": {key: value}}, {"influx": {"url": f"{scheme}://u:{secret}@{rest}"}},
                {"retrieval": {"webhook_url": f"{scheme}://u:{secret}@{rest}"}}):
        try:
            settings_from_mapping(doc, env={})
        except ConfigError as exc:
            assert secret not in str(exc) and secret not in exc.fix


@FAST
@given(secrets)
def test_a_secret_never_shows_in_the_settings_repr(secret):
    env = {"FABTIER_BROKER_PASSWORD": secret, "FABTIER_API_TOKEN": secret, "FABTIER_INFLUX_TOKEN": secret,
           "FABTIER_ALERTS_WEBHOOK_TOKEN": secret, "FABTIER_RETRIEVAL_WEBHOOK_TOKEN": secret}
    loaded = settings_from_mapping({"broker": {"username": "u"}}, env=env)
    assert loaded.broker.password.reveal() == secret
    assert secret not in repr(loaded) and secret not in str(loaded) and secret not in repr(loaded.broker)
