"""Loading the settings (`core.settings`) from TOML and the environment, checked at once.

Precedence: built-in defaults < the TOML file (`--config`, else ./fabtier.toml) < environment
variables `FABTIER_<SECTION>_<KEY>` (`FABTIER_DATA_DIR` for the top-level key). Every error
names the key and says the fix; secrets are `Secret`s and never print. An environment
variable that starts with `FABTIER_` but names no setting is ignored with a warning that
names the closest one (the environment often holds unrelated variables, so it does not stop
the start the way a misspelt key in the file does).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from core.brokerconn import broker_address, broker_tls
from core.errors import ConfigError
from core.records import SPEEDS
from core.settings import (
    AlertRule,
    AlertSettings,
    ApiSettings,
    BrokerSettings,
    ColdSettings,
    GlueSettings,
    HotSettings,
    InfluxSettings,
    IngestSettings,
    LifecycleSettings,
    RetrievalSettings,
    Secret,
    Settings,
    TimestreamSettings,
    WarmSettings,
)
from core.units import parse_duration, parse_size

log = logging.getLogger("fabtier.config")
_SECTIONS: dict[str, type] = {
    "broker": BrokerSettings,
    "hot": HotSettings,
    "ingest": IngestSettings,
    "cold": ColdSettings,
    "warm": WarmSettings,
    "lifecycle": LifecycleSettings,
    "glue": GlueSettings,
    "retrieval": RetrievalSettings,
    "api": ApiSettings,
    "alerts": AlertSettings,
    "timestream": TimestreamSettings,
    "influx": InfluxSettings,
}
_TOP_LEVEL = {f.name: f for f in dataclasses.fields(Settings) if f.name == "data_dir"}
_FIXES = {
    "duration": 'write a number with a unit ms, s, m, h, d or w, e.g. "10m"',
    "size": 'write a number of bytes with an optional unit KiB, MiB, GiB (or KB, MB, GB), e.g. "2GiB"',
    "port": "write a whole number from 0 to 65535",
    "mqtt_url": 'write mqtt://host:port or mqtts://host:port, e.g. "mqtt://127.0.0.1:1883"',
    "store_url": 'write file:///absolute/path or s3://bucket/prefix, or leave it empty for the local lake',
    "http_url": 'write http://host:port or https://host, or leave it empty',
    "topic": "write one or more MQTT topic levels without wildcards (+, #), e.g. \"fab\"",
    "name": "use letters, digits, '-' and '_' only",
    "name_or_empty": "use letters, digits, '-' and '_' only, or leave it empty",
    "bool": "write true or false",
    "count": "write a whole number of at least 1",
    "sse": 'write "AES256" (S3-managed keys) or "aws:kms" (with kms_key_id)',
    "glue_name": "use lower-case letters, digits and '_' only (Glue and Athena names), or leave it empty",
    "whole": "write a whole number, 0 or more",
    "speed": 'write "expedited", "standard" or "bulk" (S3\'s retrieval tiers)',
    "str": 'write a string in quotes, e.g. "fab"',
    "secret": "write a string in quotes",
    "path": 'write a path in quotes, e.g. "./fabtier-data"',
    "file": 'write the path of a file in quotes, e.g. "/etc/fabtier/ca.pem", or leave it empty',
}
_USERINFO = re.compile(r"//[^/@]*@")


def _shown(raw: str) -> str:
    """A URL as an error message may show it: a user and password in it become ***."""
    return repr(_USERINFO.sub("//***@", raw))


def _convert(kind: str, key: str, raw: Any) -> Any:
    """Turn a raw TOML or environment value into the setting's type, or say what is wrong."""
    try:
        if kind == "duration":
            if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
                raise ValueError(f"{raw!r} is not a duration")
            seconds = parse_duration(raw)
            if not math.isfinite(seconds):
                raise ValueError(f"{raw!r} is not a finite duration")
            return seconds
        if kind == "size":
            if isinstance(raw, bool) or not isinstance(raw, (str, int)):
                raise ValueError(f"{raw!r} is not a size")
            return parse_size(raw)
        if kind == "path":
            if not isinstance(raw, str) or not raw or "\0" in raw:
                raise ValueError("must be a non-empty path")
            return Path(raw)
        if kind == "file":
            if not isinstance(raw, str) or "\0" in raw:
                raise ValueError("must be the path of a file, or empty")
            return raw
        if kind == "secret":
            if not isinstance(raw, str):
                raise ValueError("must be a string")
            return Secret(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                return raw.strip().lower() in ("true", "1", "yes")
            raise ValueError(f"{raw!r} is not true or false")
        if kind == "count":
            value = int(raw) if isinstance(raw, str) and raw.strip().isdigit() else raw
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{raw!r} is not a whole number of at least 1")
            return value
        if kind == "whole":
            value = int(raw) if isinstance(raw, str) and raw.strip().isdigit() else raw
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{raw!r} is not a whole number of 0 or more")
            return value
        if kind == "port":
            value = int(raw) if isinstance(raw, str) and raw.strip().isdigit() else raw
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
                raise ValueError(f"{raw!r} is not a port number")
            return value
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not a string")
        if kind == "mqtt_url":
            url = urlparse(raw)
            if "@" in url.netloc:
                raise ConfigError(key, "holds a user name or password",
                                  "write the user as [broker] username and give the password in the environment "
                                  "variable FABTIER_BROKER_PASSWORD or in [broker] password_file, never in the URL")
            try:
                port = url.port
            except ValueError:
                port = -1
            if url.scheme not in ("mqtt", "mqtts") or not url.hostname or port == -1:
                raise ValueError(f"{_shown(raw)} is not an MQTT URL")
        elif kind == "store_url":
            url = urlparse(raw)
            if raw and not ((url.scheme == "file" and url.path.startswith("/"))
                            or (url.scheme == "s3" and url.netloc)):
                raise ValueError(f"{raw!r} is not a store URL")
        elif kind == "http_url":
            url = urlparse(raw)
            if raw and (url.scheme not in ("http", "https") or not url.netloc):
                raise ValueError(f"{_shown(raw)} is not an HTTP URL")
        elif kind == "topic":
            if not raw or any(c in raw for c in "+#\0") or raw.startswith("/") or raw.endswith("/"):
                raise ValueError(f"{raw!r} is not a topic root")
        elif kind in ("name", "name_or_empty"):
            if (raw or kind == "name") and not all(c.isalnum() or c in "-_" for c in raw or "/"):
                raise ValueError(f"{raw!r} is not a plain name")
        elif kind == "sse":
            if raw not in ("AES256", "aws:kms"):
                raise ValueError(f"{raw!r} is not a server-side encryption S3 offers")
        elif kind == "speed":
            if raw not in SPEEDS:
                raise ValueError(f"{raw!r} is not a retrieval speed")
        elif kind == "glue_name":
            if raw and not all(c.islower() or c.isdigit() or c == "_" for c in raw):
                raise ValueError(f"{raw!r} is not a Glue name")
        return raw
    except OverflowError:
        raise ConfigError(key, "is too large", _FIXES.get(kind, "")) from None
    except ValueError as exc:
        raise ConfigError(key, str(exc), _FIXES.get(kind, "")) from None


class ConfigFileError(ConfigError):
    """The configuration file itself cannot be read (not a key's fault): says the file and
    the parser's own message."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.args = (f"{path} {problem}",)


def _env_names() -> list[str]:
    """Every environment variable fabtier reads."""
    names = [f"FABTIER_{key.upper()}" for key in _TOP_LEVEL]
    for section, cls in _SECTIONS.items():
        names += [f"FABTIER_{section.upper()}_{f.name.upper()}" for f in dataclasses.fields(cls)]
    return names


def _warn_unknown_env(env: Mapping[str, str]) -> None:
    known = _env_names()
    for name in sorted(env):
        if name.startswith("FABTIER_") and name not in known:
            closest = difflib.get_close_matches(name, known, n=1, cutoff=0.0)
            log.warning("environment variable %s is not a fabtier setting and is ignored%s", name,
                        f"; did you mean {closest[0]}?" if closest else "")


def _bare(key: str) -> str:
    """A key as TOML writes it: bare when it can be, else quoted (an empty or odd key shows)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    fix = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(set(known)))}"
    return ConfigError(key, "is not a fabtier setting", fix)


def _build_section(cls: type, name: str, table: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in fields or fields[key].metadata.get("env_only"):
            if key in fields:
                env_name = f"FABTIER_{name.upper()}_{key.upper()}"
                fix = f"set the environment variable {env_name} instead"
                if f"{key}_file" in fields:
                    fix += f", or write the path of a file that holds it as [{name}] {key}_file"
                raise ConfigError(f"[{name}] {key}", "must not be written in the file (it is a secret)", fix)
            raise _unknown(f"[{name}] {_bare(key)}", list(fields))
        values[key] = _convert(fields[key].metadata["kind"], f"[{name}] {key}", raw)
    for key, fld in fields.items():
        env_name = f"FABTIER_{name.upper()}_{key.upper()}"
        if env_name in env:
            values[key] = _convert(fld.metadata["kind"], env_name, env[env_name])
    return cls(**values)


def _build_rules(raw: Any) -> tuple[AlertRule, ...]:
    rules = raw.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError("[alerts] rules", "must be a list", "write rules as [[alerts.rules]] tables")
    known = {"name", "sensor", "high", "low", "for", "hysteresis", "recipe"}
    result = []
    for index, rule in enumerate(rules):
        where = f"[[alerts.rules]] #{index + 1}"
        if not isinstance(rule, dict):
            raise ConfigError(where, "must be a table", "write rules as [[alerts.rules]] tables")
        for key in rule:
            if key not in known:
                raise _unknown(f"{where} {_bare(key)}", sorted(known))
        name, sensor = rule.get("name"), rule.get("sensor")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where} name", "is missing", 'give each rule a name, e.g. name = "overtemp"')
        if not isinstance(sensor, str) or not sensor:
            raise ConfigError(f"{where} sensor", "is missing",
                              'give a glob over machine/sensor, e.g. sensor = "*/ch*/temp"')
        limits = {}
        for key in ("high", "low", "hysteresis"):
            value = rule.get(key)
            limits[key] = None if value is None else _finite(f"{where} {key}", value)
        recipe = rule.get("recipe", False)
        if not isinstance(recipe, bool):
            raise ConfigError(f"{where} recipe", f"{recipe!r} is not true or false",
                              "write recipe = true to take the limits from the recipe")
        if recipe and (limits["high"] is not None or limits["low"] is not None):
            raise ConfigError(f"{where} recipe", "comes with high or low",
                              "take the limits either from the recipe or from high/low, not both")
        if limits["high"] is None and limits["low"] is None and not recipe:
            raise ConfigError(where, "has neither high nor low", "set high, low or both, or recipe = true")
        if (limits["hysteresis"] or 0.0) < 0:
            raise ConfigError(f"{where} hysteresis", "is negative", "write 0 or more")
        if limits["high"] is not None and limits["low"] is not None and limits["low"] >= limits["high"]:
            raise ConfigError(f"{where} low", "is not below high", "make low smaller than high")
        result.append(AlertRule(
            name=name, sensor=sensor, high=limits["high"], low=limits["low"],
            for_seconds=_convert("duration", f"{where} for", rule.get("for", 0)),
            hysteresis=limits["hysteresis"] or 0.0, recipe=recipe,
        ))
    names = [r.name for r in result]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(f"[[alerts.rules]] #{index + 1} name", f"{name!r} is taken by an earlier rule",
                              "give every rule its own name (alerts are keyed by it)")
    return tuple(result)


def _finite(key: str, value: Any) -> float:
    number = None
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond a float's range
            number = None
    if number is None or not math.isfinite(number):
        shown = f"{value!r}" if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise ConfigError(key, f"{shown} is not a finite number", "write a number, e.g. 80.0")
    return number


def settings_from_mapping(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Validate a parsed TOML document (plus environment overrides) into Settings."""
    env = os.environ if env is None else env
    known = ["data_dir", "alerts", *_SECTIONS]
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key in _SECTIONS:
            if not isinstance(raw, dict):
                raise ConfigError(f"[{key}]", "must be a table", f"write it as a [{key}] section")
        elif key not in known:
            raise _unknown(_bare(key), known)
    for key in _TOP_LEVEL:
        if key in data:
            values[key] = _convert(_TOP_LEVEL[key].metadata["kind"], key, data[key])
        env_name = f"FABTIER_{key.upper()}"
        if env_name in env:
            values[key] = _convert(_TOP_LEVEL[key].metadata["kind"], env_name, env[env_name])
    for name, cls in _SECTIONS.items():
        table = data.get(name, {})
        if name == "alerts":  # its rules are a list of tables, built apart
            table = {k: v for k, v in table.items() if k != "rules"}
        values[name] = _build_section(cls, name, table, env)
    if "alerts" in data:
        values["alert_rules"] = _build_rules(data["alerts"])
    values["broker"] = _with_password_file(values["broker"], env)
    _warn_unknown_env(env)
    settings = Settings(**values)
    _check_relations(settings)
    return settings


def _check_relations(settings: Settings) -> None:
    roots = [settings.broker.topic_root, settings.broker.ctx_root, settings.broker.alert_root,
             settings.broker.jobs_root]
    for i, a in enumerate(roots):
        for b in roots[i + 1:]:
            if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
                raise ConfigError("[broker] topic_root", f"topic roots {a!r} and {b!r} overlap",
                                  "give topic_root, ctx_root, alert_root and jobs_root distinct first levels")
    life = settings.lifecycle
    if not life.glacier_after < life.deep_archive_after < life.expire_after:
        raise ConfigError("[lifecycle] deep_archive_after", "the ages are out of order",
                          "make glacier_after < deep_archive_after < expire_after")
    _check_archive_after_late_data(settings)
    if settings.lifecycle.run_every <= 0:
        raise ConfigError("[lifecycle] run_every", "must be longer than zero", 'e.g. "10m"')
    if settings.cold.seal_every <= 0:
        raise ConfigError("[cold] seal_every", "must be longer than zero", 'e.g. "1m"')
    if settings.hot.window <= 0:
        raise ConfigError("[hot] window", "must be longer than zero", 'e.g. "1h"')
    _check_broker(settings.broker)
    _check_cold(settings)
    _check_retrieval(settings)
    _check_alerts(settings)
    _check_warm_and_sinks(settings)


def _with_password_file(broker: BrokerSettings, env: Mapping[str, str]) -> BrokerSettings:
    """The broker's password read from `[broker] password_file`: its one line, without the
    line break. Nothing of the file's content ever goes into a message."""
    path = broker.password_file
    if not path:
        return broker
    key = "[broker] password_file"
    if env.get("FABTIER_BROKER_PASSWORD"):
        raise ConfigError(key, "is set and so is the environment variable FABTIER_BROKER_PASSWORD",
                          "give the password one way only")
    try:
        text = Path(path).read_text(encoding="utf-8")
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        raise ConfigError(key, f"{path!r} does not exist", "give the path of a file holding the password") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path!r} is not UTF-8 text", "write the password as one line of text") from None
    except OSError as exc:
        raise ConfigError(key, f"{path!r} cannot be read ({exc.strerror or exc})",
                          "check the path and its permissions") from None
    password = text[:-1] if text.endswith("\n") else text
    password = password[:-1] if password.endswith("\r") else password
    if not password or "\n" in password:
        raise ConfigError(key, f"{path!r} is empty or holds more than one line",
                          "write the password alone on the file's first and only line")
    if mode & 0o077:
        log.warning("%s %s can be read by other users (mode %o); chmod 600 it", key, path, mode & 0o777)
    return dataclasses.replace(broker, password=Secret(password))


_BROKER_FILES = {
    "ca_file": "the CA certificate (PEM) that signed the broker's certificate",
    "cert_file": "the client certificate (PEM)",
    "key_file": "the client certificate's private key (PEM)",
}


def _check_broker(broker: BrokerSettings) -> None:
    tls = broker_address(broker.url)[2]
    for key, what in _BROKER_FILES.items():
        path = getattr(broker, key)
        if not path:
            continue
        if not tls:
            raise ConfigError(f"[broker] {key}", "is set but [broker] url is mqtt:// (no TLS)",
                              "write the broker's URL as mqtts://host:port, or leave it empty")
        if not Path(path).is_file():
            problem = "is not a file" if Path(path).exists() else "does not exist"
            raise ConfigError(f"[broker] {key}", f"{path!r} {problem}", f"give the path of {what}")
    if broker.key_file and not broker.cert_file:
        raise ConfigError("[broker] key_file", "is set without cert_file",
                          "give the client certificate as [broker] cert_file too")
    if broker.password and not broker.username:
        log.info("a broker password is given but [broker] username is empty: the password is not sent")
    if tls:
        broker_tls(broker)  # the files are loadable, and a mismatched key is found now, not at connect


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _check_archive_after_late_data(settings: Settings) -> None:
    """Raw files must not be archived while readings of their hour can still arrive (max_late)
    or before the hour is compacted (compact_after after it ended): a minute recomputed then
    could not read all its readings (the rollup keeps such minutes as they were)."""
    glacier, max_late = settings.lifecycle.glacier_after, settings.ingest.max_late
    settled = settings.cold.compact_after + 3600  # an hour is compacted compact_after after it *ended*
    if glacier <= max_late or glacier <= settled:
        needed = max(max_late, settled)
        raise ConfigError(
            "[lifecycle] glacier_after",
            f"{_human(glacier)} is not longer than [ingest] max_late ({_human(max_late)}) and [cold] "
            f"compact_after + 1h ({_human(settled)}): raw files would be archived while late readings of "
            "their hours can still arrive or before the hours are compacted, and their minutes could no "
            "longer be rolled up from all their readings",
            f"make [lifecycle] glacier_after longer than {_human(needed)} (and deep_archive_after, "
            "expire_after after it), or shorten [ingest] max_late or [cold] compact_after")


def _check_cold(settings: Settings) -> None:
    cold = settings.cold
    if cold.endpoint_url and not settings.store_url.startswith("s3://"):
        raise ConfigError("[cold] endpoint_url", "is set but the store is not s3://",
                          "set [cold] store to s3://bucket/prefix, or leave endpoint_url empty")
    if cold.sse == "aws:kms" and not cold.kms_key_id:
        raise ConfigError("[cold] kms_key_id", "is empty but sse is aws:kms",
                          "give the KMS key id or ARN, or set sse to AES256")
    if cold.compact_target < 1 << 20:
        raise ConfigError("[cold] compact_target", "is below 1MiB", 'e.g. "128MiB"')
    if settings.glue.database and not settings.store_url.startswith("s3://"):
        raise ConfigError("[glue] database", "is set but the store is not s3:// (Athena reads S3 only)",
                          "set [cold] store to s3://bucket/prefix, or leave [glue] database empty")


def _check_retrieval(settings: Settings) -> None:
    retrieval = settings.retrieval
    if retrieval.poll_every <= 0:
        raise ConfigError("[retrieval] poll_every", "must be longer than zero", 'e.g. "30s"')
    if retrieval.keep_restored <= 0:
        raise ConfigError("[retrieval] keep_restored", "must be longer than zero",
                          'e.g. "7d" (S3 keeps a restored copy for whole days)')
    if retrieval.webhook_timeout <= 0:
        raise ConfigError("[retrieval] webhook_timeout", "must be longer than zero", 'e.g. "5s"')


def _check_alerts(settings: Settings) -> None:
    alerts = settings.alerts
    for index, rule in enumerate(settings.alert_rules):
        if rule.recipe and not alerts.recipes:
            raise ConfigError(f"[[alerts.rules]] #{index + 1} recipe", "needs recipe master data",
                              'set [alerts] recipes = "path/to/recipes.toml"')
    if alerts.recipes:
        from alerts.recipes import RecipeError, read_book
        if "\0" in alerts.recipes:
            raise ConfigError("[alerts] recipes", "is not a path", 'give the path of the recipe file, e.g. "recipes.toml"')
        try:
            read_book(Path(alerts.recipes))
        except RecipeError as exc:
            raise ConfigError("[alerts] recipes", f"{exc.where}: {exc.problem}", exc.fix) from None
    if alerts.recipes_reload <= 0:
        raise ConfigError("[alerts] recipes_reload", "must be longer than zero", 'e.g. "2s"')
    if alerts.sns_endpoint_url and not alerts.sns_topic_arn:
        raise ConfigError("[alerts] sns_topic_arn", "is empty while sns_endpoint_url is set",
                          "give the ARN of the SNS topic to publish alerts to")


def _check_warm_and_sinks(settings: Settings) -> None:
    for key in ("retention", "rollup_every", "age_out_every"):
        if getattr(settings.warm, key) <= 0:
            raise ConfigError(f"[warm] {key}", "must be longer than zero", 'e.g. "1m"')
    ts = settings.timestream
    # Timestream's own limits: memory store 1 hour to 8766 hours, magnetic store 1 to 73000 days.
    if not 3600 <= ts.memory_retention <= 8766 * 3600:
        raise ConfigError("[timestream] memory_retention", "must be from 1h to 8766h", 'e.g. "24h"')
    if not 86400 <= ts.magnetic_retention <= 73000 * 86400:
        raise ConfigError("[timestream] magnetic_retention", "must be from 1d to 73000d", 'e.g. "90d"')
    if ts.enabled and not (ts.database and ts.table):
        raise ConfigError("[timestream] database", "database and table must be set when enabled",
                          'e.g. database = "fabtier", table = "readings"')
    influx = settings.influx
    if influx.api not in ("v1", "v2"):
        raise ConfigError("[influx] api", f"{influx.api!r} is not v1 or v2",
                          'write "v2" (InfluxDB 2, Timestream for InfluxDB) or "v1" (InfluxDB 1.x)')
    if influx.enabled and not influx.url:
        raise ConfigError("[influx] url", "is empty but the sink is enabled",
                          'give the server, e.g. url = "http://127.0.0.1:8086"')
    if influx.enabled and influx.api == "v2" and not influx.org:
        raise ConfigError("[influx] org", "is empty but the v2 API needs it", 'e.g. org = "fab"')


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `path`, else ./fabtier.toml if it exists, else the defaults."""
    if path is None:
        path = Path("fabtier.toml") if Path("fabtier.toml").exists() else None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"the file {str(path)!r} does not exist",
                              "give the path of a TOML file") from None
        except UnicodeDecodeError as exc:
            raise ConfigFileError(str(path), f"is not valid TOML: it is not UTF-8 text ({exc.reason} at byte "
                                  f"{exc.start})") from None
        except OSError as exc:
            raise ConfigError("--config", f"the file {str(path)!r} cannot be read ({exc.strerror or exc})",
                              "give the path of a readable TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(str(path), f"is not valid TOML: {exc}") from None
    return settings_from_mapping(data, env)


def with_overrides(settings: Settings, **sections: Mapping[str, Any]) -> Settings:
    """A copy of `settings` with some section fields replaced (used by `fabtier demo`)."""
    changes: dict[str, Any] = {}
    for name, updates in sections.items():
        if name == "data_dir":
            changes[name] = updates
        else:
            changes[name] = dataclasses.replace(getattr(settings, name), **updates)
    return dataclasses.replace(settings, **changes)
