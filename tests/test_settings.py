from __future__ import annotations

from pathlib import Path

import pytest

from passerelle.errors import InvalidInputError
from passerelle.settings import load_settings


def test_defaults_live_under_home(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.home == tmp_path / "home"
    assert settings.effective_database_url == f"sqlite:///{(tmp_path / 'home' / 'passerelle.db').resolve()}"
    assert settings.effective_artifact_uri == str((tmp_path / "home" / "artifacts").resolve())


def test_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "conf.toml"
    config.write_text('artifact_uri = "/from/file"\nuser = "file-user"\n')
    monkeypatch.setenv("PASSERELLE_CONFIG", str(config))
    monkeypatch.setenv("PASSERELLE_USER", "env-user")
    settings = load_settings()
    assert settings.artifact_uri == "/from/file"
    assert settings.user == "env-user"


def test_home_config_file_is_read(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("orphan_grace_seconds = 5\n")
    assert load_settings().orphan_grace_seconds == 5


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_S3_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("PASSERELLE_DATABASE_URL", "postgresql+psycopg://bob:pw123@db/x")
    shown = load_settings().describe()
    assert shown["s3_secret_access_key"] == "********"
    assert "pw123" not in shown["database_url"]
    assert "hunter2" not in str(shown)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("PASSERELLE_DATABASE_URL", "mysql://x", "PASSERELLE_DATABASE_URL"),
        ("PASSERELLE_ORPHAN_GRACE_SECONDS", "soon", "PASSERELLE_ORPHAN_GRACE_SECONDS"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(InvalidInputError, match=fragment):
        load_settings()


def test_unknown_key_in_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "conf.toml"
    config.write_text('colour = "blue"\n')
    monkeypatch.setenv("PASSERELLE_CONFIG", str(config))
    with pytest.raises(InvalidInputError, match="COLOUR"):
        load_settings()


def test_broken_file_is_one_readable_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "conf.toml"
    config.write_text("this is = = not toml")
    monkeypatch.setenv("PASSERELLE_CONFIG", str(config))
    with pytest.raises(InvalidInputError, match="not valid TOML"):
        load_settings()
