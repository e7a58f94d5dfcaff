"""Where `recallcore serve` takes its options from: defaults < config file < RECALL_* < flags.

Theory of operation. Only the command reads files and the environment;
Settings stays one frozen, validated value. Every Settings field is a key
of the TOML config file and a RECALL_<FIELD> environment variable, named
and typed from the dataclass itself (its annotations), so a field added to
Settings is configurable here with no code; `COMMAND_KEYS` adds the few
options that belong to the command, not to Settings (log_level). The
command-line flags are cli._OPTIONS. `Layers` collects each value with the
place it came from, so that every error names what the user wrote: the
file and key (`recallcore.toml: token_ttl: ...`), the variable
(`RECALL_TOKEN_TTL: ...`) or the flag.

The file is flat TOML, `listen = "0.0.0.0:50051"`; a table groups keys by
their prefix, so `[tls]` with `cert = "server.pem"` is `tls_cert`. A key
the file may not hold is named with the nearest one it may. Secrets never
go in the file (nor in flags): it names the files that hold them
(`tls_key`, `credentials`, `primary_token_file`).
"""

import dataclasses
import difflib
import pathlib
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any

from .api.http.status_lists import load_signing_key
from .core.errors import RecallError
from .security.credentials import Credentials
from .security.jwks import parse_jwks
from .security.policy import Policy
from .security.tls import CertificateFiles
from .settings import Settings

ENV_PREFIX = "RECALL_"
CONFIG_ENV = "RECALL_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
COMMAND_KEYS: dict[str, type] = {"log_level": str}  # options of the command, not of Settings
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ValueError):
    """One or more values that cannot be used; `problems` holds one line each,
    every one naming where the value came from."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def keys() -> dict[str, Any]:
    """Every key of the file and the environment, with its type: the Settings fields, then COMMAND_KEYS."""
    hints = typing.get_type_hints(Settings)
    return {**{f.name: hints[f.name] for f in dataclasses.fields(Settings)}, **COMMAND_KEYS}


def env_var(key: str) -> str:
    """The environment variable of `key`: RECALL_ and the key in capitals."""
    return ENV_PREFIX + key.upper()


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(value))
    return f"{kind or type(value).__name__} {value!r}" if kind else f"a {type(value).__name__}"


def convert(value: Any, kind: Any, *, text: bool) -> Any:
    """`value` as a `kind` (a Settings annotation). `text`: it is a string from the
    environment (so "60" may be an integer); else a TOML value of its own type.
    Raises ValueError saying what was expected."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        problems = []
        for member in typing.get_args(kind):
            try:
                return convert(value, member, text=text)
            except ValueError as exc:
                problems.append(str(exc))
        raise ValueError("; or ".join(problems))
    if kind is type(None):
        if text and value == "" or value is None:
            return None
        raise ValueError(f"expected nothing, got {_describe(value)}")
    if origin in (tuple, list):
        inner = typing.get_args(kind)[0] if typing.get_args(kind) else Any
        items = [part.strip() for part in value.split(",") if part.strip()] if text else value
        if not isinstance(items, list):
            raise ValueError(f"expected a list, got {_describe(value)}")
        return tuple(convert(item, inner, text=text) for item in items) if origin is tuple else \
            [convert(item, inner, text=text) for item in items]
    if origin is dict:
        inner = typing.get_args(kind)[1] if typing.get_args(kind) else Any
        if text:
            pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(f"expected NAME=VALUE,... got {value!r}")
            value = {name.strip(): item.strip() for name, item in pairs}
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {_describe(value)}")
        return {name: convert(item, inner, text=text) for name, item in value.items()}
    if kind is bool:
        if text and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        if not text and isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {_describe(value) if not text else repr(value)}")
    if kind in (int, float):
        if text:
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {_describe(value)}")
        return kind(value)
    if kind in (str, pathlib.Path):
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_describe(value)}")
        return kind(value)
    return value  # a type this module does not know: Settings validates it


def log_level(value: str) -> str:
    """`value` as a logging level name; raises ValueError naming the levels."""
    if value.upper() not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not a log level; give one of {', '.join(LOG_LEVELS)} (any case)")
    return value.upper()


class Layers:
    """Option values with where each came from, later layers winning: the file,
    then the environment, then the flags (`add` in that order)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.problems: list[str] = []

    def add(self, key: str, value: Any, source: str) -> None:
        self.values[key], self.sources[key] = value, source

    def _convert(self, key: str, value: Any, source: str, where: str, *, text: bool) -> None:
        try:
            value = convert(value, keys()[key], text=text)
            if key == "log_level":
                value = log_level(value)
        except ValueError as exc:
            self.problems.append(f"{where}: {exc}")
        else:
            self.add(key, value, source)

    def read_file(self, path: str | pathlib.Path) -> None:
        """Add the keys of the TOML file at `path`; problems are collected, each naming the file and key."""
        try:
            with open(path, "rb") as file:
                table = tomllib.load(file)
        except OSError as exc:
            self.problems.append(f"{path}: cannot read it: {exc.strerror or exc}")
            return
        except tomllib.TOMLDecodeError as exc:
            self.problems.append(f"{path}: not TOML: {exc}")
            return
        known = keys()
        flat: dict[str, Any] = {}
        for name, value in table.items():
            grouped = isinstance(value, dict) and name not in known
            for key, item in (((f"{name}_{k}", v) for k, v in value.items()) if grouped else [(name, value)]):
                where = f"[{name}] {key[len(name) + 1:]}" if grouped else key
                if key not in known:
                    near = difflib.get_close_matches(key, known, n=1)
                    hint = f" (did you mean {_as_written(near[0], name if grouped else '')!r}?)" if near else ""
                    self.problems.append(f"{path}: unknown key {where!r}{hint}")
                elif key in flat:
                    self.problems.append(f"{path}: {key}: given twice (as {key} and in a table)")
                else:
                    flat[key] = item
                    self._convert(key, item, str(path), f"{path}: {key}", text=False)

    def read_environment(self, environ: Mapping[str, str]) -> None:
        """Add every RECALL_<KEY> that is set and not empty."""
        for key in keys():
            var = env_var(key)
            if environ.get(var, "") != "":
                self._convert(key, environ[var], var, var, text=True)

    def source_of(self, message: str) -> str:
        """` (from WHERE)` for a Settings error naming fields ("listen: ..."), or "" for defaults."""
        fields = message.split(":", 1)[0].split(", ")
        places = sorted({self.sources[f] for f in fields if f in self.sources})
        return f" (from {', '.join(places)})" if places else ""

    def settings(self) -> Settings:
        """The Settings of every layer over the defaults. Raises ConfigError with
        every problem found, or the first that Settings finds, naming its source."""
        if self.problems:
            raise ConfigError(self.problems)
        fields = {f.name for f in dataclasses.fields(Settings)}
        try:
            return Settings(**{k: v for k, v in self.values.items() if k in fields})
        except (TypeError, ValueError) as exc:
            raise ConfigError([f"{exc}{self.source_of(str(exc))}"]) from None


def _as_written(key: str, table: str) -> str:
    """`key` as the user would write it where they wrote the unknown one."""
    return key[len(table) + 1:] if table and key.startswith(table + "_") else key


def check_files(settings: Settings) -> list[str]:
    """What is wrong with the files `settings` names, loaded as the server loads them at
    start (policy, credentials, TLS certificate and key, OAuth clients, issuers' key
    files, the status-list signing key, SSF transmitters' key files) or read (a follower's
    material, a poll secret, a CA bundle); one line each, naming the key."""
    loads = []
    if settings.policy:
        loads.append(("policy", lambda: Policy.load(settings.policy)))
    if settings.credentials:
        loads.append(("credentials", lambda: Credentials.load(settings.credentials)))
    if settings.tls_cert:
        loads.append(("tls_cert, tls_key, client_ca",
                      lambda: CertificateFiles(settings.tls_cert, settings.tls_key, settings.client_ca or None)))
    if settings.oauth_clients:
        loads.append(("oauth_clients", lambda: Credentials.load_clients(settings.oauth_clients)))
    for issuer, location in settings.issuer_keys.items():
        if not location.startswith("https://"):  # a URL is fetched when first needed
            loads.append((f"jwt_issuers ({issuer})", lambda path=location: parse_jwks(
                pathlib.Path(path).read_bytes(), path)))
    for i, t in enumerate(settings.transmitters):
        where = f"ssf_transmitters[{i}] ({t.stream})"
        if t.jwks and not t.jwks.startswith("https://"):
            loads.append((f"{where}.jwks", lambda path=t.jwks: parse_jwks(pathlib.Path(path).read_bytes(), path)))
        for key in ("poll_token_file", "cacert"):
            if getattr(t, key):
                loads.append((f"{where}.{key}", lambda path=getattr(t, key): pathlib.Path(path).read_bytes()))
    if settings.ssf_receivers:
        loads.append(("ssf_key", lambda: load_signing_key(settings.ssf_key, "ssf_key")))
    if settings.status_list_uri:
        loads.append(("status_list_key", lambda: load_signing_key(settings.status_list_key)))
    for key in ("primary_cacert", "primary_cert", "primary_key", "primary_token_file"):
        if getattr(settings, key):
            loads.append((key, lambda path=getattr(settings, key): pathlib.Path(path).read_bytes()))
    problems = []
    for key, load in loads:
        try:
            load()
        except OSError as exc:
            problems.append(f"{key}: cannot read {exc.filename or ''}: {exc.strerror or exc}")
        except (ValueError, RecallError) as exc:
            problems.append(f"{key}: {exc}")
    return problems
