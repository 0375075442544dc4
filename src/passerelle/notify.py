"""Notifiers and the notification outbox: where alerts are sent, and how they get there.

A notifier is a named destination of one kind: a JSON ``webhook`` (Alertmanager-like body), a
``slack`` incoming webhook (Slack or Mattermost), or ``smtp`` e-mail. Alerts never send
anything themselves: they :func:`enqueue` outbox rows in the same transaction as their own
state change, so a notification exists exactly when the change it reports was committed.
:func:`deliver_due` then sends what is due, outside any transaction, and retries failures
with exponential backoff until :data:`MAX_ATTEMPTS` tries have failed.

Two workers may deliver at once: each claims its rows first (pushing their next attempt
past the time it needs to send them, in one short write transaction) and records a result
only if its claim still stands, so a message is sent once unless a worker dies mid-send,
in which case it is sent again once the claim expires (at least once, never lost).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from passerelle import audit
from passerelle.context import Context
from passerelle.errors import InvalidInputError, NotFoundError, PasserelleError, StoreError
from passerelle.references import check_name
from passerelle.store.schema import Notification, Notifier, utcnow

__all__ = [
    "BACKOFF_CAP_S",
    "BACKOFF_START_S",
    "EVENTS",
    "KINDS",
    "MAX_ATTEMPTS",
    "DeliveryReport",
    "NotifierInfo",
    "NotifyError",
    "backoff_s",
    "deliver_due",
    "enqueue",
    "list_notifiers",
    "outbox",
    "remove_notifier",
    "send",
    "set_notifier",
    "test_notifier",
    "validate_config",
]

log = logging.getLogger("passerelle.notify")

KINDS: tuple[str, ...] = ("webhook", "slack", "smtp")
EVENTS: tuple[str, ...] = ("firing", "resolved", "test")
STATUSES: tuple[str, ...] = ("pending", "sent", "failed")

#: tries of one message before it is marked ``failed`` (given up)
MAX_ATTEMPTS = 8
#: the wait after the first failure; it doubles after each further failure
BACKOFF_START_S = 10.0
BACKOFF_CAP_S = 3600.0
#: waits are shortened by a random fraction up to this, so retries of many rows spread out
JITTER = 0.1
#: added to a claim beyond the time its sends may take, before another worker may take the rows
CLAIM_MARGIN_S = 60.0
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_SMTP_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 300.0
MASK = "***"


class NotifyError(PasserelleError):
    """A notification could not be delivered: which notifier, where, and why."""


@dataclass(frozen=True)
class NotifierInfo:
    name: str
    kind: str
    #: the validated configuration, with credentials in URLs and header values masked
    config: dict[str, Any]
    enabled: bool
    created_at: dt.datetime
    created_by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "config": self.config,
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class DeliveryReport:
    #: messages delivered by this call
    sent: int
    #: messages that failed and will be tried again later
    retried: int
    #: messages given up by this call (too many attempts, or their notifier is gone or disabled)
    failed: int

    def to_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "retried": self.retried, "failed": self.failed}


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class _Field:
    parse: Callable[[str, str, Any], Any]
    required: bool = False
    default: Any = None


def _bad(kind: str, key: str, what: str, value: Any) -> InvalidInputError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return InvalidInputError(f"{kind} config {key!r} must be {what}, got {shown}")


def _text(kind: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(kind, key, "a non-empty text", value)
    return value.strip()


def _url(kind: str, key: str, value: Any) -> str:
    text = _text(kind, key, value)
    try:
        parts = urlsplit(text)
        # urlsplit only checks the port when it is read
        _ = parts.port
    except ValueError as exc:
        raise _bad(kind, key, "an http:// or https:// URL", value) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad(kind, key, "an http:// or https:// URL", value)
    return text


def _seconds(kind: str, key: str, value: Any) -> float:
    number: float
    if isinstance(value, bool):
        raise _bad(kind, key, f"a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}", value)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _bad(kind, key, "a number of seconds", value) from None
    else:
        raise _bad(kind, key, "a number of seconds", value)
    if not (0 < number <= MAX_TIMEOUT_S):
        raise _bad(kind, key, f"a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}", value)
    return number


def _port(kind: str, key: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _bad(kind, key, "a port number from 1 to 65535", value)
    return value


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _flag(kind: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(kind, key, "true or false", value)


def _headers(kind: str, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _bad(kind, key, "a mapping of header names to text values", value)
    out: dict[str, str] = {}
    for name, header in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
            raise _bad(kind, key, "a mapping of header names to text values", name)
        if not isinstance(header, str) or "\n" in header or "\r" in header:
            raise _bad(kind, f"{key}.{name}", "a single line of text", header)
        out[name] = header
    return out


_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")


def _address(kind: str, key: str, value: Any) -> str:
    text = _text(kind, key, value)
    if not _ADDRESS.match(text):
        raise _bad(kind, key, "an e-mail address such as ops@example.com", value)
    return text


def _addresses(kind: str, key: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise _bad(kind, key, "a non-empty list of e-mail addresses", value)
    return [_address(kind, key, item) for item in items]


def _env_name(kind: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise _bad(kind, key, "the name of an environment variable (such as SMTP_PASSWORD)", value)
    return value


@dataclass(frozen=True)
class _Kind:
    fields: Mapping[str, _Field]
    mask: Callable[[dict[str, Any]], dict[str, Any]]
    #: sends one message; returns a note worth keeping on a delivered message ("" if none)
    deliver: Callable[[str, dict[str, Any], _Message], str]


def validate_config(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration of a ``kind`` notifier, checked and completed with its defaults.

    Raises :class:`InvalidInputError` naming the first unknown, missing or invalid key.
    """
    spec = _KINDS.get(kind)
    if spec is None:
        raise InvalidInputError(f"unknown notifier kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not isinstance(config, Mapping):
        raise InvalidInputError(f"a {kind} config must be a mapping of keys to values")
    for key in config:
        if key not in spec.fields:
            hint = (
                ": put the password in an environment variable and give its name in 'password_env'"
                if kind == "smtp" and key == "password"
                else f": expected {', '.join(spec.fields)}"
            )
            raise InvalidInputError(f"unknown key {key!r} in the {kind} config{hint}")
    out: dict[str, Any] = {}
    for key, field in spec.fields.items():
        if key in config and config[key] is not None:
            out[key] = field.parse(kind, key, config[key])
        elif field.required:
            raise InvalidInputError(f"the {kind} config needs {key!r}")
        elif field.default is not None:
            # parsed like a given value, so a default mapping is never shared between configs
            out[key] = field.parse(kind, key, field.default)
    if kind == "smtp":
        if out["ssl"] and out["starttls"]:
            raise InvalidInputError("smtp config 'ssl' and 'starttls' exclude each other: choose one")
        if out["ssl"] and config.get("port") is None:
            # implicit TLS is never spoken on port 25
            out["port"] = 465
        if ("username" in out) != ("password_env" in out):
            missing = "password_env" if "username" in out else "username"
            raise InvalidInputError(f"the smtp config needs {missing!r} when it logs in")
    return out


def _mask_url(url: str, *, keep_segments: int | None = None) -> str:
    """``url`` without its password and query values; with ``keep_segments``, only that much path."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return MASK
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    if parts.username is not None:
        user = parts.username + (f":{MASK}" if parts.password is not None else "")
        netloc = f"{user}@{netloc}"
    path = parts.path
    if keep_segments is not None:
        segments = [s for s in path.split("/") if s]
        if len(segments) > keep_segments:
            path = "/" + "/".join([*segments[:keep_segments], MASK])
    query = urlencode([(k, MASK) for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def _mask_webhook(config: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    out["url"] = _mask_url(config["url"])
    # Header values are where tokens usually travel (Authorization, X-Api-Key): none is shown.
    out["headers"] = dict.fromkeys(config.get("headers", {}), MASK)
    return out


def _mask_slack(config: dict[str, Any]) -> dict[str, Any]:
    # The path of an incoming webhook is its secret (/services/T…/B…/token, /hooks/<key>).
    return {**config, "url": _mask_url(config["url"], keep_segments=1)}


def _mask_smtp(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config)


def _masked(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    spec = _KINDS.get(kind)
    if spec is None:
        return {}
    try:
        return spec.mask(config)
    except (KeyError, TypeError, AttributeError):
        # A row written by hand or by an older release: show nothing rather than a secret.
        return dict.fromkeys(config, MASK)


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class _Message:
    event: str
    alerts: list[dict[str, Any]]
    group_key: str

    @property
    def status(self) -> str:
        """The group's status, as Alertmanager gives it: firing while any alert fires."""
        if any(str(a.get("status", "")) == "firing" for a in self.alerts):
            return "firing"
        return "resolved" if self.event != "firing" else "firing"

    @property
    def tag(self) -> str:
        return "TEST" if self.event == "test" else self.status.upper()


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _number(value: Any) -> str:
    if value is None:
        return "no value"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, ".6g")
    return str(value)


def _text_of(alert: Mapping[str, Any], key: str, default: str = "") -> str:
    value = alert.get(key)
    return default if value is None or value == "" else str(value)


def _where(alert: Mapping[str, Any]) -> str:
    endpoint = _text_of(alert, "endpoint", "?")
    model, version = _text_of(alert, "model"), alert.get("version") or 0
    if model and version:
        return f"{endpoint} ({model}:{version})"
    return endpoint


def _condition(alert: Mapping[str, Any]) -> str:
    """``drift.share = 0.42 > 0.3``: the figure, its value, and the rule's comparison."""
    figure, expression = _text_of(alert, "figure"), _text_of(alert, "expression")
    if not figure and not expression:
        return _text_of(alert, "summary", "no details")
    shown = _number(alert.get("value"))
    if not figure:
        return expression
    if str(alert.get("status")) == "resolved":
        return f"{figure} = {shown} (rule: {expression})" if expression else f"{figure} = {shown}"
    if expression.startswith(figure):
        return f"{figure} = {shown}{expression[len(figure) :]}"
    return f"{figure} = {shown} ({expression})" if expression else f"{figure} = {shown}"


def _line(alert: Mapping[str, Any], event: str) -> str:
    tag = "TEST" if event == "test" else _text_of(alert, "status", event).upper()
    rule, severity = _text_of(alert, "rule", "?"), _text_of(alert, "severity", "warning")
    return f"[{tag}] {_where(alert)} · {rule} ({severity}): {_condition(alert)}"


def _labels(alert: Mapping[str, Any]) -> dict[str, str]:
    """Alertmanager's identifying labels: the rule's own labels plus where the alert comes from."""
    labels = {
        "alertname": _text_of(alert, "rule"),
        "endpoint": _text_of(alert, "endpoint"),
        "severity": _text_of(alert, "severity"),
        "model": _text_of(alert, "model"),
        "version": str(alert.get("version") or 0),
    }
    extra = alert.get("labels")
    if isinstance(extra, Mapping):
        labels.update({str(k): "" if v is None else str(v) for k, v in extra.items()})
    return {k: v for k, v in labels.items() if v != ""}


def _annotations(alert: Mapping[str, Any]) -> dict[str, str]:
    notes = {
        "summary": _text_of(alert, "summary"),
        "expression": _text_of(alert, "expression"),
        "figure": _text_of(alert, "figure"),
        "value": "" if alert.get("value") is None else _number(alert.get("value")),
        "threshold": _text_of(alert, "threshold"),
    }
    return {k: v for k, v in notes.items() if v != ""}


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def _fingerprint(alert: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    given = alert.get("fingerprint")
    if isinstance(given, str) and given:
        return given
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _group_key(alerts: Sequence[Mapping[str, Any]]) -> str:
    seen: list[str] = []
    for alert in alerts:
        item = f"{_text_of(alert, 'endpoint', '?')}/{_text_of(alert, 'rule', '?')}"
        if item not in seen:
            seen.append(item)
    return ",".join(seen)


_ZERO_TIME = "0001-01-01T00:00:00Z"


def _webhook_body(name: str, message: _Message, external_url: str = "") -> dict[str, Any]:
    """The Alertmanager-like JSON body sent by a ``webhook`` notifier."""
    alerts: list[dict[str, Any]] = []
    label_sets: list[dict[str, str]] = []
    annotation_sets: list[dict[str, str]] = []
    for raw in message.alerts:
        labels, annotations = _labels(raw), _annotations(raw)
        label_sets.append(labels)
        annotation_sets.append(annotations)
        alerts.append(
            {
                # passerelle's own fields first, so receivers written for passerelle read them as sent
                **_jsonable(raw),
                "status": _text_of(raw, "status", message.status),
                "labels": labels,
                "annotations": annotations,
                "startsAt": _text_of(raw, "fired_at") or _text_of(raw, "started_at", _ZERO_TIME),
                "endsAt": _text_of(raw, "resolved_at", _ZERO_TIME),
                "generatorURL": external_url,
                "fingerprint": _fingerprint(raw, labels),
            }
        )
    common_labels = _common(label_sets)
    return {
        "version": "1",
        "receiver": name,
        "status": message.status,
        "event": message.event,
        "groupKey": message.group_key,
        "truncatedAlerts": 0,
        "groupLabels": {k: v for k, v in common_labels.items() if k in ("alertname", "endpoint")},
        "commonLabels": common_labels,
        "commonAnnotations": _common(annotation_sets),
        "externalURL": external_url,
        "alerts": alerts,
    }


def _slack_escape(text: str) -> str:
    # Slack reads <…> as links and mentions: the three control characters travel as entities.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_text(message: _Message) -> str:
    """One line per alert: ``[FIRING] churn-api · data-drift (warning): drift.share = 0.42 > 0.3``."""
    return "\n".join(_line(alert, message.event) for alert in message.alerts)


def _email_subject(message: _Message) -> str:
    """``[FIRING] churn-api: data-drift`` (rules grouped by endpoint)."""
    by_endpoint: dict[str, list[str]] = {}
    for alert in message.alerts:
        rules = by_endpoint.setdefault(_text_of(alert, "endpoint", "?"), [])
        rule = _text_of(alert, "rule", "?")
        if rule not in rules:
            rules.append(rule)
    subject = f"[{message.tag}] " + "; ".join(f"{e}: {', '.join(r)}" for e, r in by_endpoint.items())
    # A header may not span lines, whatever an endpoint or rule name holds.
    subject = " ".join(subject.split())
    return subject if len(subject) <= 200 else subject[:197] + "..."


def _email_body(name: str, message: _Message) -> str:
    """Plain text: every alert with its figure, value, threshold, times and endpoint."""
    firing = sum(1 for a in message.alerts if str(a.get("status")) == "firing")
    resolved = len(message.alerts) - firing
    lines = [
        f"passerelle {'test message' if message.event == 'test' else 'alerts'}: "
        f"{firing} firing, {resolved} resolved",
        "",
    ]
    for alert in message.alerts:
        version = alert.get("version") or 0
        model = _text_of(alert, "model")
        served = f"{model}:{version}" if model and version else f"{model or '?'}, all versions"
        lines.append(_line(alert, message.event))
        rows = [
            ("endpoint", _text_of(alert, "endpoint", "?")),
            ("model", served),
            ("rule", _text_of(alert, "rule", "?")),
            ("severity", _text_of(alert, "severity", "warning")),
            ("expression", _text_of(alert, "expression", "-")),
            ("figure", _text_of(alert, "figure", "-")),
            ("value", _number(alert.get("value"))),
            ("threshold", _text_of(alert, "threshold", "-")),
            ("started", _text_of(alert, "started_at", "-")),
            ("fired", _text_of(alert, "fired_at", "-")),
            ("resolved", _text_of(alert, "resolved_at", "-")),
        ]
        if _text_of(alert, "summary"):
            rows.append(("summary", _text_of(alert, "summary")))
        labels = alert.get("labels")
        if isinstance(labels, Mapping) and labels:
            rows.append(("labels", ", ".join(f"{k}={v}" for k, v in labels.items())))
        if alert.get("alert_id") is not None:
            rows.append(("alert id", str(alert.get("alert_id"))))
        lines.extend(f"    {label:<12}{value}" for label, value in rows)
        lines.append("")
    lines.append(f"-- sent by passerelle through notifier {name!r} (group {message.group_key})")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- delivery


def _cause(exc: BaseException) -> str:
    """The reason behind a connection failure, in a few words."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "unknown host"
        if isinstance(seen, ssl.SSLError):
            return f"TLS failed: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    text = str(exc) or exc.__class__.__name__
    return "connection refused" if "refused" in text.lower() else text


def _post(label: str, url: str, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float) -> None:
    try:
        with httpx.Client(timeout=timeout_s) as client:
            response = client.post(url, json=body, headers=dict(headers))
    except httpx.ConnectTimeout:
        raise NotifyError(f"{label} unreachable: no connection within {timeout_s:g}s") from None
    except httpx.TimeoutException:
        raise NotifyError(f"{label} did not answer within {timeout_s:g}s") from None
    except httpx.ConnectError as exc:
        raise NotifyError(f"{label} unreachable: {_cause(exc)}") from None
    except httpx.HTTPError as exc:
        raise NotifyError(f"{label} failed: {exc or exc.__class__.__name__}") from None
    if not 200 <= response.status_code < 300:
        detail = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        raise NotifyError(f"{label} answered {response.status_code}" + (f" ({detail})" if detail else ""))


def _deliver_webhook(name: str, config: dict[str, Any], message: _Message) -> str:
    body = _webhook_body(name, message, config.get("external_url", ""))
    label = f'webhook "{name}": {_mask_url(config["url"])}'
    _post(label, config["url"], body, config.get("headers", {}), config["timeout_s"])
    return ""


def _deliver_slack(name: str, config: dict[str, Any], message: _Message) -> str:
    body: dict[str, Any] = {"text": _slack_escape(_slack_text(message))}
    for key in ("channel", "username"):
        if key in config:
            body[key] = config[key]
    label = f'slack "{name}": {_mask_url(config["url"], keep_segments=1)}'
    _post(label, config["url"], body, {}, config["timeout_s"])
    return ""


def _smtp_reply(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(message.split())}"


def _deliver_smtp(name: str, config: dict[str, Any], message: _Message) -> str:
    host, port, timeout = config["host"], config["port"], config["timeout_s"]
    label = f'smtp "{name}": {host}:{port}'
    password = ""
    if "password_env" in config:
        variable = config["password_env"]
        if variable not in os.environ:
            raise NotifyError(f"{label} cannot log in: the environment variable {variable} is not set")
        password = os.environ[variable]
    mail = EmailMessage()
    mail["From"] = config["from"]
    mail["To"] = ", ".join(config["to"])
    mail["Subject"] = _email_subject(message)
    mail["Date"] = email.utils.formatdate(usegmt=True)
    mail["Message-ID"] = email.utils.make_msgid(domain=config["from"].rsplit("@", 1)[-1])
    mail.set_content(_email_body(name, message))
    try:
        server: smtplib.SMTP
        if config["ssl"]:
            server = smtplib.SMTP_SSL(host, port, timeout=timeout, context=ssl.create_default_context())
        else:
            server = smtplib.SMTP(host, port, timeout=timeout)
        with server:
            if config["starttls"]:
                server.starttls(context=ssl.create_default_context())
            if "username" in config:
                server.login(config["username"], password)
            refused = server.send_message(mail)
    except smtplib.SMTPRecipientsRefused as exc:
        who = "; ".join(f"{rcpt}: {_smtp_reply(*reply)}" for rcpt, reply in exc.recipients.items())
        raise NotifyError(f"{label} refused every recipient: {who}") from None
    except smtplib.SMTPSenderRefused as exc:
        reply = _smtp_reply(exc.smtp_code, exc.smtp_error)
        raise NotifyError(f"{label} refused the sender {exc.sender}: {reply}") from None
    except smtplib.SMTPAuthenticationError as exc:
        reply = _smtp_reply(exc.smtp_code, exc.smtp_error)
        raise NotifyError(f"{label} refused the login of {config['username']}: {reply}") from None
    except smtplib.SMTPDataError as exc:
        reply = _smtp_reply(exc.smtp_code, exc.smtp_error)
        raise NotifyError(f"{label} refused the message: {reply}") from None
    except smtplib.SMTPResponseException as exc:
        raise NotifyError(f"{label} answered {_smtp_reply(exc.smtp_code, exc.smtp_error)}") from None
    except smtplib.SMTPServerDisconnected as exc:
        raise NotifyError(f"{label} closed the connection: {exc or 'without a reason'}") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise NotifyError(f"{label} does not support what the config asks: {exc}") from None
    except smtplib.SMTPException as exc:
        raise NotifyError(f"{label} failed: {exc or exc.__class__.__name__}") from None
    except TimeoutError:
        raise NotifyError(f"{label} did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise NotifyError(f"{label} unreachable: {_cause(exc)}") from None
    if refused:
        # Some recipients got the message: sending again would duplicate it for them.
        who = "; ".join(f"{rcpt}: {_smtp_reply(*reply)}" for rcpt, reply in refused.items())
        return f"delivered, but {host}:{port} refused some recipients: {who}"
    return ""


_SECONDS = _Field(_seconds, default=DEFAULT_TIMEOUT_S)

_KINDS: dict[str, _Kind] = {
    "webhook": _Kind(
        fields={
            "url": _Field(_url, required=True),
            "headers": _Field(_headers, default={}),
            "timeout_s": _SECONDS,
            "external_url": _Field(_url),
        },
        mask=_mask_webhook,
        deliver=_deliver_webhook,
    ),
    "slack": _Kind(
        fields={
            "url": _Field(_url, required=True),
            "channel": _Field(_text),
            "username": _Field(_text),
            "timeout_s": _SECONDS,
        },
        mask=_mask_slack,
        deliver=_deliver_slack,
    ),
    "smtp": _Kind(
        fields={
            "host": _Field(_text, required=True),
            "port": _Field(_port, default=25),
            "from": _Field(_address, required=True),
            "to": _Field(_addresses, required=True),
            "username": _Field(_text),
            "password_env": _Field(_env_name),
            "starttls": _Field(_flag, default=False),
            "ssl": _Field(_flag, default=False),
            "timeout_s": _Field(_seconds, default=DEFAULT_SMTP_TIMEOUT_S),
        },
        mask=_mask_smtp,
        deliver=_deliver_smtp,
    ),
}


def _check_event(event: str) -> None:
    if event not in EVENTS:
        raise InvalidInputError(f"event must be one of {', '.join(EVENTS)}, got {event!r}")


def _check_alerts(alerts: Any) -> list[dict[str, Any]]:
    if not isinstance(alerts, list | tuple) or not all(isinstance(a, Mapping) for a in alerts):
        raise InvalidInputError("alerts must be a list of alert payloads (mappings)")
    return [_jsonable(a) for a in alerts]


def _deliver(name: str, kind: str, config: Mapping[str, Any], message: _Message) -> str:
    checked = validate_config(kind, config)
    return _KINDS[kind].deliver(name, checked, message)


def send(
    name: str,
    kind: str,
    config: Mapping[str, Any],
    event: str,
    alerts: list[dict[str, Any]],
    *,
    group_key: str = "",
) -> None:
    """Send one message now through a notifier described by ``kind`` and ``config``.

    Raises :class:`NotifyError` saying which notifier, where and why when delivery fails,
    and :class:`InvalidInputError` for a bad config, event or alert list.
    """
    _check_event(event)
    payloads = _check_alerts(alerts)
    _deliver(name, kind, config, _Message(event, payloads, group_key or _group_key(payloads)))


def backoff_s(attempts: int, *, rng: random.Random | None = None) -> float:
    """The wait after the ``attempts``-th failure: 10 s doubling to at most 1 h, minus up to 10 %."""
    base = min(BACKOFF_START_S * 2.0 ** max(attempts - 1, 0), BACKOFF_CAP_S)
    return base * (1.0 - JITTER * (rng or random).random())


# ----------------------------------------------------------------------------- notifiers


def _info(row: Notifier) -> NotifierInfo:
    return NotifierInfo(
        name=row.name,
        kind=row.kind,
        config=_masked(row.kind, dict(row.config)),
        enabled=row.enabled,
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _state(row: Notifier) -> dict[str, Any]:
    return {"kind": row.kind, "config": _masked(row.kind, dict(row.config)), "enabled": row.enabled}


def _get(session: Session, name: str, *, lock: bool = False) -> Notifier:
    query = select(Notifier).where(Notifier.name == name)
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise NotFoundError(f"notifier {name!r} does not exist")
    return row


def set_notifier(
    ctx: Context,
    name: str,
    kind: str,
    config: Mapping[str, Any],
    *,
    enabled: bool = True,
    reason: str = "",
) -> NotifierInfo:
    """Create the notifier ``name``, or replace its kind, config and enabled flag (audited)."""
    check_name(name, "notifier name")
    checked = validate_config(kind, config)
    # Two processes creating the same name at once: the loser's insert fails on the unique
    # name, and its second pass finds the winner's row and replaces it.
    for attempt in range(2):
        try:
            with ctx.store.write() as session:
                row = session.scalar(select(Notifier).where(Notifier.name == name).with_for_update())
                before = None if row is None else _state(row)
                if row is None:
                    row = Notifier(
                        name=name, kind=kind, config=checked, enabled=enabled, created_by=ctx.actor
                    )
                    session.add(row)
                else:
                    row.kind, row.config, row.enabled = kind, checked, enabled
                session.flush()
                audit.record(
                    session,
                    actor=ctx.actor,
                    action="notifier.set",
                    target=f"notifier:{name}",
                    before=before,
                    after=_state(row),
                    reason=reason,
                )
                return _info(row)
        except DBIntegrityError as exc:
            if attempt == 1:
                raise StoreError(f"notifier {name!r} could not be stored: {exc.orig}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def remove_notifier(ctx: Context, name: str, *, reason: str = "") -> None:
    """Delete the notifier ``name``; its messages still waiting are marked failed (audited)."""
    with ctx.store.write() as session:
        row = _get(session, name, lock=True)
        before = _state(row)
        waiting = session.scalars(
            select(Notification)
            .where(Notification.notifier == name, Notification.status == "pending")
            .with_for_update()
        ).all()
        for message in waiting:
            message.status = "failed"
            message.last_error = f"notifier {name!r} was removed before this message was sent"
        session.delete(row)
        audit.record(
            session,
            actor=ctx.actor,
            action="notifier.remove",
            target=f"notifier:{name}",
            before=before,
            after={"pending_dropped": len(waiting)},
            reason=reason,
        )


def list_notifiers(ctx: Context) -> list[NotifierInfo]:
    with ctx.store.read() as session:
        return [_info(row) for row in session.scalars(select(Notifier).order_by(Notifier.name)).all()]


def test_notifier(ctx: Context, name: str) -> None:
    """Send a test message through ``name`` now, even when disabled; raises NotifyError on failure."""
    with ctx.store.read() as session:
        row = _get(session, name)
        kind, config = row.kind, dict(row.config)
    now = utcnow().isoformat()
    alert = {
        "status": "firing",
        "endpoint": "passerelle",
        "rule": "test-notification",
        "severity": "info",
        "expression": "",
        "figure": "",
        "value": None,
        "threshold": None,
        "model": "",
        "version": 0,
        "summary": f"a test message sent by {ctx.actor} to notifier {name!r}: notifications reach you",
        "started_at": now,
        "fired_at": now,
        "resolved_at": None,
        "alert_id": None,
        "labels": {"test": "true"},
    }
    send(name, kind, config, "test", [alert], group_key=f"test:{name}")


# ----------------------------------------------------------------------------- the outbox


def enqueue(
    session: Session,
    *,
    event: str,
    alerts: list[dict[str, Any]],
    notifiers: Sequence[str] = (),
    alert_id: int | None = None,
    group_key: str = "",
) -> int:
    """Queue one message per target notifier inside the caller's transaction; return how many.

    An empty ``notifiers`` means every enabled notifier. Unknown and disabled names are
    skipped: a rule may name a notifier that was removed or switched off since. Nothing is
    queued for an empty ``alerts``.
    """
    _check_event(event)
    payloads = _check_alerts(alerts)
    if not payloads:
        return 0
    wanted = [notifiers] if isinstance(notifiers, str) else list(dict.fromkeys(notifiers))
    query = select(Notifier.name).where(Notifier.enabled.is_(True)).order_by(Notifier.name)
    if wanted:
        query = query.where(Notifier.name.in_(wanted))
    targets = list(session.scalars(query).all())
    payload = {"group_key": group_key or _group_key(payloads), "event": event, "alerts": payloads}
    now = utcnow()
    for target in targets:
        session.add(
            Notification(
                alert_id=alert_id,
                notifier=target,
                event=event,
                payload=payload,
                status="pending",
                attempts=0,
                last_error="",
                created_at=now,
                next_attempt_at=now,
            )
        )
    session.flush()
    return len(targets)


@dataclass(frozen=True)
class _Job:
    id: int
    notifier: str
    kind: str | None
    config: dict[str, Any]
    enabled: bool
    event: str
    payload: dict[str, Any]
    #: the next_attempt_at written by the claim: the result is recorded only while it is still there
    claim: dt.datetime


def _claim(ctx: Context, now: dt.datetime, limit: int) -> list[_Job]:
    with ctx.store.write() as session:
        rows = session.scalars(
            select(Notification)
            .where(Notification.status == "pending", Notification.next_attempt_at <= now)
            .order_by(Notification.next_attempt_at, Notification.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return []
        names = {row.notifier for row in rows}
        found = {n.name: n for n in session.scalars(select(Notifier).where(Notifier.name.in_(names))).all()}
        jobs: list[_Job] = []
        # Rows are sent one after the other: each claim lasts until its own send may have
        # timed out (twice its timeout: connecting and answering), plus a margin.
        deadline_s = CLAIM_MARGIN_S
        for row in rows:
            notifier = found.get(row.notifier)
            if notifier is not None:
                timeout = notifier.config.get("timeout_s", DEFAULT_SMTP_TIMEOUT_S)
                deadline_s += 2 * float(timeout if isinstance(timeout, int | float) else MAX_TIMEOUT_S)
            claim = now + dt.timedelta(seconds=deadline_s)
            row.next_attempt_at = claim
            jobs.append(
                _Job(
                    id=row.id,
                    notifier=row.notifier,
                    kind=None if notifier is None else notifier.kind,
                    config={} if notifier is None else dict(notifier.config),
                    enabled=notifier is not None and notifier.enabled,
                    event=row.event,
                    payload=dict(row.payload),
                    claim=claim,
                )
            )
        return jobs


def _attempt(job: _Job) -> tuple[str | None, str, bool]:
    """Send one claimed message: (error or None, note, whether the error is final)."""
    if job.kind is None:
        return f"notifier {job.notifier!r} does not exist any more", "", True
    if not job.enabled:
        return f"notifier {job.notifier!r} is disabled", "", True
    payload = job.payload
    alerts = payload.get("alerts")
    message = _Message(
        job.event,
        [a for a in alerts if isinstance(a, dict)] if isinstance(alerts, list) else [],
        str(payload.get("group_key") or ""),
    )
    try:
        return None, _deliver(job.notifier, job.kind, job.config, message), False
    except PasserelleError as exc:
        return str(exc), "", False
    except Exception as exc:
        # One malformed message must not stop the others behind it; it is retried and shown.
        log.exception("notification %s through %r failed unexpectedly", job.id, job.notifier)
        return f'{job.kind} "{job.notifier}": unexpected error: {exc!r}', "", False


def _record(
    ctx: Context, job: _Job, at: dt.datetime, error: str | None, note: str, final: bool
) -> str | None:
    with ctx.store.write() as session:
        row = session.get(Notification, job.id, with_for_update=True)
        if row is None or row.status != "pending" or row.next_attempt_at != job.claim:
            # Another worker took the row over after this claim expired: its result stands.
            return None
        row.attempts += 1
        if error is None:
            row.status, row.sent_at = "sent", at
            if note:
                row.last_error = note
            return "sent"
        row.last_error = error
        if final or row.attempts >= MAX_ATTEMPTS:
            row.status, row.next_attempt_at = "failed", at
            log.warning("notification %s given up after %s attempt(s): %s", row.id, row.attempts, error)
            return "failed"
        row.next_attempt_at = at + dt.timedelta(seconds=backoff_s(row.attempts))
        log.warning("notification %s failed (attempt %s), will retry: %s", row.id, row.attempts, error)
        return "retried"


def deliver_due(ctx: Context, *, now: dt.datetime | None = None, limit: int = 100) -> DeliveryReport:
    """Send up to ``limit`` pending messages whose next attempt is due at ``now`` (default: now).

    A failure is recorded on its row (``attempts``, ``last_error``) and retried after
    :func:`backoff_s`; after :data:`MAX_ATTEMPTS` the row is ``failed``. Delivery failures
    never raise: they are counted in the report.
    """
    if now is not None and now.tzinfo is None:
        raise InvalidInputError("now must be an aware datetime (with a time zone)")
    if limit < 1:
        raise InvalidInputError(f"limit must be at least 1, got {limit}")
    counts = {"sent": 0, "retried": 0, "failed": 0}
    for job in _claim(ctx, now or utcnow(), limit):
        error, note, final = _attempt(job)
        outcome = _record(ctx, job, now or utcnow(), error, note, final)
        if outcome is not None:
            counts[outcome] += 1
    return DeliveryReport(**counts)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def outbox(ctx: Context, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The latest outbox rows first, optionally of one status (pending, sent or failed)."""
    if status is not None and status not in STATUSES:
        raise InvalidInputError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    if limit < 1:
        raise InvalidInputError(f"limit must be at least 1, got {limit}")
    query = select(Notification).order_by(Notification.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Notification.status == status)
    with ctx.store.read() as session:
        rows = session.scalars(query).all()
        return [
            {
                "id": row.id,
                "alert_id": row.alert_id,
                "notifier": row.notifier,
                "event": row.event,
                "group_key": row.payload.get("group_key", ""),
                "alerts": len(row.payload.get("alerts") or []),
                "status": row.status,
                "attempts": row.attempts,
                "last_error": row.last_error,
                "created_at": _iso(row.created_at),
                "next_attempt_at": _iso(row.next_attempt_at),
                "sent_at": _iso(row.sent_at),
            }
            for row in rows
        ]
