"""docs/security.md says what the code does: its roles table, settings, commands and public routes."""

from __future__ import annotations

import re
from pathlib import Path

from passerelle.auth import ROLES, Permission
from passerelle.cli.tokens import tokens_app
from tests.security.test_routes import PUBLIC

DOC = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
SETTINGS = (
    "auth",
    "token_cache_seconds",
    "max_body_bytes",
    "max_upload_bytes",
    "max_rows_per_request",
    "request_timeout_s",
    "rate_limit_per_s",
    "rate_limit_burst",
)


def test_the_roles_table_is_the_code_s() -> None:
    header = next(line for line in DOC.splitlines() if line.startswith("| permission |"))
    roles = [cell.strip() for cell in header.strip("|").split("|")][2:]
    assert roles == list(ROLES)
    documented: dict[str, set[str]] = {role: set() for role in roles}
    for line in DOC.splitlines():
        found = re.match(r"^\| `(\w+)` \|", line)
        if not found or found.group(1) not in {p.value for p in Permission}:
            continue
        marks = [cell.strip() for cell in line.strip().strip("|").split("|")][2:]
        for role, mark in zip(roles, marks, strict=True):
            if mark == "✓":
                documented[role].add(found.group(1))
    assert documented == {role: {p.value for p in held} for role, held in ROLES.items()}


def test_every_setting_command_and_public_route_is_documented() -> None:
    for name in SETTINGS:
        assert f"`{name}`" in DOC or f"`PASSERELLE_{name.upper()}=" in DOC, name
    for command in tokens_app.registered_commands:
        assert f"passerelle tokens {command.name}" in DOC, command.name
    for option in ("--auth", "--insecure", "--ssl-certfile", "--ssl-keyfile", "--expires", "--endpoint"):
        assert option in DOC, option
    for path in PUBLIC - {"/docs/oauth2-redirect"}:
        assert f"`{path}`" in DOC, path
