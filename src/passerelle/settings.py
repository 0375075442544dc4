"""One settings object, read from ``PASSERELLE_*`` environment variables and an optional TOML file.

Precedence, highest first: explicit arguments, environment, the file, defaults. The file is
``$PASSERELLE_CONFIG`` when set, otherwise ``<home>/config.toml`` when it exists.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from passerelle.errors import InvalidInputError

ENV_PREFIX = "PASSERELLE_"


def _config_file() -> Path | None:
    explicit = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if explicit:
        return Path(explicit)
    home = Path(os.environ.get(f"{ENV_PREFIX}HOME", ".passerelle"))
    candidate = home / "config.toml"
    return candidate if candidate.is_file() else None


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the optional settings file; unknown keys are refused by the model itself."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.path = _config_file()
        self.data: dict[str, Any] = {}
        if self.path is not None:
            try:
                self.data = tomllib.loads(self.path.read_text())
            except FileNotFoundError as exc:
                raise InvalidInputError(f"settings file {self.path} does not exist") from exc
            except tomllib.TOMLDecodeError as exc:
                raise InvalidInputError(f"settings file {self.path} is not valid TOML: {exc}") from exc

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


class Settings(BaseSettings):
    """Everything passerelle can be configured with. ``passerelle config`` prints it."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    home: Path = Field(Path(".passerelle"), description="Folder for the embedded store and artifacts.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the metadata store; default sqlite:///<home>/passerelle.db.",
    )
    artifact_uri: str | None = Field(
        None,
        description="Where artifacts live: a local folder or s3://bucket/prefix; default <home>/artifacts.",
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (OVH, Scaleway, MinIO...).")
    s3_access_key_id: str | None = Field(None, description="Access key for the S3 endpoint.")
    s3_secret_access_key: SecretStr | None = Field(None, description="Secret key for the S3 endpoint.")
    s3_region: str | None = Field(None, description="Region name, when the endpoint needs one.")
    user: str | None = Field(None, description="Who is recorded in the audit log; default the OS user.")
    orphan_grace_seconds: int = Field(
        3600, ge=0, description="Artifacts without metadata older than this are swept as orphans."
    )
    monitor_interval_seconds: float = Field(
        30.0,
        ge=0,
        description=(
            "How often `passerelle serve` runs due monitors and delivers notifications; 0 leaves that "
            "to `passerelle monitor run` (cron or an orchestrator)."
        ),
    )
    archive_uri: str | None = Field(
        None,
        description=(
            "Where old predictions are archived as Parquet: a folder or s3://bucket/prefix; "
            "default <artifact store>/predictions-archive."
        ),
    )
    archive_after_days: int | None = Field(
        None,
        ge=1,
        description=(
            "When set, `passerelle serve` archives predictions older than this many days; unset: never."
        ),
    )
    url: str | None = Field(
        None,
        description="URL of a passerelle server; when set, the CLI and connect() work through its API.",
    )
    token: SecretStr | None = Field(
        None, description="Sent as 'Authorization: Bearer <token>' to the passerelle server."
    )
    auth: bool = Field(
        False,
        description="Require an API token on every route but the public ones (`passerelle serve --auth`).",
    )
    token_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a server process remembers a checked token: a revocation takes effect "
        "within this time.",
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes, answered 413 beyond; multipart uploads (artifacts, "
        "dataset files) have max_upload_bytes instead.",
    )
    max_upload_bytes: int = Field(
        4 * 1024**3, ge=1024, description="Largest multipart upload in bytes, answered 413 beyond."
    )
    max_rows_per_request: int = Field(
        10_000, ge=1, description="Most rows one prediction request may carry, answered 413 beyond."
    )
    request_timeout_s: float = Field(
        60.0,
        ge=0,
        description="Longest wait for an answer to start once the request has arrived (504), or for the "
        "next piece of a request body (408); 0: no limit.",
    )
    rate_limit_per_s: float = Field(
        0.0,
        ge=0,
        description="Requests a second each token may send to each worker process (429 beyond); 0: none.",
    )
    rate_limit_burst: int = Field(
        0, ge=0, description="Requests a token may send at once above its rate; 0: one second's worth."
    )
    config: Path | None = Field(None, description="The settings file that was read, if any.")
    redaction_key: SecretStr | None = Field(
        None,
        description=(
            "Secret of the keyed hash (HMAC-SHA256) that replaces a redacted business key in the "
            "prediction log and names erased keys in the audit log; default: generated once into "
            "<home>/redaction.key. Replicas sharing a database must share it."
        ),
    )
    prediction_retention_days: int | None = Field(
        None,
        ge=0,
        description=(
            "Logged predictions older than this many days are deleted, for endpoints that set no "
            "age limit of their own; unset or 0 keeps them whatever their age."
        ),
    )
    prediction_retention_rows: int | None = Field(
        None,
        ge=0,
        description=(
            "Only the newest this many logged predictions of each endpoint are kept, for endpoints "
            "that set no row limit of their own; unset or 0 keeps them all."
        ),
    )
    prediction_retention_interval_seconds: float = Field(
        3600.0,
        ge=0,
        description="How often the server's retention sweep may run; 0 leaves it to "
        "`passerelle predictions retention`.",
    )

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must start with sqlite:// or postgresql+psycopg://")
        return value

    @field_validator("redaction_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and 0 < len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters: a short secret makes hashed keys guessable")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'passerelle.db').resolve()}"

    @property
    def effective_artifact_uri(self) -> str:
        if self.artifact_uri:
            return self.artifact_uri
        return str((self.home / "artifacts").resolve())

    def describe(self) -> dict[str, str]:
        """Effective values for display, secrets masked."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = "********" if value.get_secret_value() else ""
            elif value is None:
                shown = ""
            else:
                shown = str(value)
            out[name] = shown
        out["database_url"] = _mask_url(self.effective_database_url)
        out["artifact_uri"] = self.effective_artifact_uri
        out["url"] = _mask_http_url(self.url) if self.url else ""
        out["config"] = str(_config_file() or "")
        return out


def _mask_url(url: str) -> str:
    """Hide a password embedded in a database URL."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url
    if parsed.password:
        return parsed.render_as_string(hide_password=True)
    return url


def _mask_http_url(url: str) -> str:
    """Hide a password embedded in a server URL (``https://user:secret@host``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation problems into one readable error."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidInputError(f"invalid settings: {problems}") from exc
