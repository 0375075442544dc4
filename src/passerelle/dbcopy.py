"""Move an embedded store to the scale-out setup: ``passerelle db copy --to postgresql+psycopg://…``.

The copy reads the source in one snapshot and writes the target in one transaction:

1. the target's schema is created or migrated; a target that already holds data is refused
   unless the caller asks to replace it;
2. predictions still in the local log segments (``<home>/predictions``) are shipped into the
   source database first, as the server would on its next start, so none is left behind;
3. every version's artifact files are copied to the target artifact store, each one checked
   against its recorded sha256 on the way (skipped when the artifact store stays the same);
4. every table is copied in dependency order, in batches, keeping its ids; the row counts are
   compared with the source, PostgreSQL sequences are moved past the copied ids, and the copy
   is audited in the target, chained onto the copied audit log;
5. only then does the transaction commit, so a copy that dies midway leaves the target as it
   was (empty, or with its old content when replacing): it can never look complete;
6. the target is checked as ``passerelle doctor`` does: every artifact against its checksums,
   the audit chain, orphan artifacts.

The source is only read, apart from step 2.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, Table, delete, func, insert, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from passerelle import audit
from passerelle._failpoints import failpoint
from passerelle.artifacts import ArtifactStore, StoredFile
from passerelle.context import Context
from passerelle.errors import ConflictError, IntegrityError, InvalidInputError, StoreError
from passerelle.settings import Settings
from passerelle.store import Store
from passerelle.store.schema import Base, DatasetVersion, Lease, ModelVersion

__all__ = ["DEFAULT_BATCH_ROWS", "CopyReport", "copy_store"]

#: Rows read and written per statement: large enough for few round trips, small enough that
#: memory stays flat however large the prediction log is.
DEFAULT_BATCH_ROWS = 2000
#: Leases coordinate the processes running on one database at one moment; the source's holders
#: mean nothing to the target's replicas, so they are neither copied nor counted as data.
_RUNTIME_TABLES = frozenset({Lease.__tablename__})

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_store` did and found."""

    source: str
    target: str
    artifact_uri: str
    #: rows copied per table, in the order they were copied
    tables: dict[str, int]
    #: versions whose artifacts were copied, and their files (0 when the artifact store stays)
    versions_copied: int
    files_copied: int
    #: records (predictions and shadow answers) shipped from local log segments into the source first
    shipped: int
    #: the target held data that the copy replaced
    replaced: bool
    #: audit records in the target, the copy's own included, all chained intact when ``ok``
    audit_records: int
    #: what the integrity check of the target found; empty means healthy
    problems: list[str] = field(default_factory=list)
    #: things to know that are not problems (local paths replicas cannot reach, orphans)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rows(self) -> int:
        return sum(self.tables.values())

    def next_settings(self) -> dict[str, str]:
        """The settings every replica needs to use the target (the database password masked)."""
        return {"PASSERELLE_DATABASE_URL": self.target, "PASSERELLE_ARTIFACT_URI": self.artifact_uri}

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "artifact_uri": self.artifact_uri,
            "tables": dict(self.tables),
            "rows": self.rows,
            "versions_copied": self.versions_copied,
            "files_copied": self.files_copied,
            "shipped": self.shipped,
            "replaced": self.replaced,
            "audit_records": self.audit_records,
            "ok": self.ok,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "next": self.next_settings(),
        }


def copy_store(
    settings: Settings,
    to: str,
    *,
    artifacts: str | None = None,
    replace: bool = False,
    reason: str | None = None,
    actor: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy the store ``settings`` point at (metadata, prediction log, artifacts) to the database ``to``.

    ``artifacts`` is the artifact store the target will use (default: the current one, left in
    place). ``replace`` accepts a target that already holds data and replaces it, in the same
    single transaction. Raises :class:`InvalidInputError` for unusable arguments,
    :class:`ConflictError` for a target holding data or a server still writing the local log,
    :class:`IntegrityError` for a source artifact that does not match its checksum, and
    :class:`StoreError` when a database refuses the copy; in every case the target is left as it was.
    """
    if batch_rows < 1:
        raise InvalidInputError(f"batch_rows must be at least 1, got {batch_rows}")
    say = progress or (lambda _message: None)
    source_url = settings.effective_database_url
    target_url = _check_target_url(to)
    if _same_database(source_url, target_url):
        raise InvalidInputError(
            f"--to {_masked(target_url)} is the store being copied: give another database"
        )
    target_uri = _artifact_uri(artifacts) if artifacts is not None else settings.effective_artifact_uri
    target_settings = settings.model_copy(update={"database_url": target_url, "artifact_uri": target_uri})
    who = actor or audit.current_user(settings.user)

    source = _open_source(source_url)
    target: Store | None = None
    try:
        target, replaced = _open_target(target_url, replace=replace)
        shipped = _ship_pending(Path(settings.home).resolve() / "predictions", source, say)
        source_ctx = Context(settings, actor=who, _store=source)
        target_ctx = Context(target_settings, actor=who, _store=target)
        same_artifacts = _same_artifact_store(source_ctx.artifacts, target_ctx.artifacts)
        tables = [t for t in Base.metadata.sorted_tables if t.name not in _RUNTIME_TABLES]
        with source.read() as src:
            if source.dialect == "postgresql":
                # One snapshot for every table, so rows written meanwhile cannot break references.
                src.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            versions = _artifact_listing(src)
            files = 0
            if not same_artifacts:
                files = _copy_artifacts(source_ctx.artifacts, target_ctx.artifacts, versions, say)

            def record(session: Session, copied: dict[str, int]) -> None:
                audit.record(
                    session,
                    actor=who,
                    action="store.copy",
                    target="store",
                    before={"replaced": True} if replaced else None,
                    after={
                        "from": _masked(source_url),
                        "artifact_uri": target_uri,
                        "tables": copied,
                        "artifact_files": files,
                    },
                    reason=reason,
                )

            counts = _copy_tables(
                src, target, tables, batch_rows=batch_rows, replace=replaced, say=say, record=record
            )
            local_datasets = _local_dataset_versions(src)
        say("checking the target: artifacts against their checksums, the audit chain")
        problems, notes, chained = _check_target(target_ctx)
        if same_artifacts and not target_ctx.artifacts.remote:
            notes.insert(
                0,
                f"artifacts stay in the local folder {target_uri}: replicas on other machines cannot read "
                "it; copy again with --artifacts s3://bucket/prefix to move them",
            )
        if local_datasets:
            notes.append(
                f"{local_datasets} dataset version(s) point to local files, which stay where they are: "
                "monitors on other machines need them at the same path, or register them again from s3://"
            )
        return CopyReport(
            source=_masked(source_url),
            target=_masked(target_url),
            artifact_uri=target_uri,
            tables=counts,
            versions_copied=0 if same_artifacts else len(versions),
            files_copied=files,
            shipped=shipped,
            replaced=replaced,
            audit_records=chained,
            problems=problems,
            notes=notes,
        )
    finally:
        source.dispose()
        if target is not None:
            target.dispose()


# ------------------------------------------------------------------------------------ checks


def _masked(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _check_target_url(to: str) -> str:
    url = to.strip()
    if not url.startswith(("sqlite", "postgresql")):
        raise InvalidInputError(
            f"--to {_masked(url)!r}: must start with postgresql+psycopg:// (or sqlite:/// for another file)"
        )
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInputError(
            f"--to {_masked(url)!r} is not a database URL such as postgresql+psycopg://user:password@host/db"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise InvalidInputError("--to: an in-memory SQLite database would vanish with the copy; give a file")
    return url


def _same_database(a: str, b: str) -> bool:
    first, second = make_url(a), make_url(b)
    if first.get_backend_name() != second.get_backend_name():
        return False
    if first.get_backend_name() == "sqlite":
        return Path(first.database or "").resolve() == Path(second.database or "").resolve()
    return (first.host, first.port or 5432, first.database) == (
        second.host,
        second.port or 5432,
        second.database,
    )


def _artifact_uri(value: str) -> str:
    uri = value.strip().rstrip("/")
    if not uri:
        raise InvalidInputError("--artifacts: give a folder or an s3://bucket/prefix")
    if "://" in uri and not uri.startswith(("s3://", "file://")):
        raise InvalidInputError(f"--artifacts {uri!r}: use a local folder or s3://bucket/prefix")
    if "://" not in uri:
        return str(Path(uri).expanduser().resolve())
    return uri


def _same_artifact_store(a: ArtifactStore, b: ArtifactStore) -> bool:
    if a.remote or b.remote:
        return a.uri == b.uri
    return Path(a.root).resolve() == Path(b.root).resolve()


def _open_source(url: str) -> Store:
    """The store to copy, opened without migrating: the source is read, never changed."""
    from passerelle.store.migrate import current_revision, head_revision

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise InvalidInputError(f"there is no store at {parsed.database}: nothing to copy")
    store = Store(url, migrate=False)
    try:
        with store.engine.connect() as conn:
            current = current_revision(conn)
        head = head_revision(store)
    except SQLAlchemyError as exc:
        store.dispose()
        raise StoreError(f"cannot read the store to copy ({_masked(url)}): {_first_line(exc)}") from exc
    if current != head:
        store.dispose()
        if current is None:
            raise InvalidInputError(f"{_masked(url)} holds no passerelle store: nothing to copy")
        raise ConflictError(
            f"the store to copy is at schema revision {current} and this passerelle expects {head}: "
            "run `passerelle db upgrade` first"
        )
    return store


def _open_target(url: str, *, replace: bool) -> tuple[Store, bool]:
    """The target, with its schema at the newest revision, and whether it holds data.

    Refused when it holds data, unless replacing.
    """
    target = Store(url, migrate=False)
    try:
        # Looked at before migrating: a store of another version is refused as it is, not upgraded.
        found = _rows_held(target)
        if found and not replace:
            shown = ", ".join(f"{name} ({rows} row(s))" for name, rows in found[:3])
            more = f" and {len(found) - 3} more table(s)" if len(found) > 3 else ""
            raise ConflictError(
                f"the target {_masked(url)} already holds data: {shown}{more}; "
                "pass --yes to replace it, or give an empty database"
            )
        target.upgrade()
    except SQLAlchemyError as exc:
        target.dispose()
        raise StoreError(f"cannot use the target {_masked(url)}: {_first_line(exc)}") from exc
    except BaseException:
        target.dispose()
        raise
    return target, bool(found)


def _rows_held(store: Store) -> list[tuple[str, int]]:
    """Tables of passerelle's schema that hold rows in ``store``, whatever its revision."""
    try:
        with store.engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            out: list[tuple[str, int]] = []
            for table in Base.metadata.sorted_tables:
                if table.name in _RUNTIME_TABLES or table.name not in present:
                    continue
                rows = conn.execute(select(func.count()).select_from(table)).scalar_one()
                if rows:
                    out.append((table.name, int(rows)))
            return out
    except DBAPIError as exc:
        raise StoreError(f"cannot reach the target {_masked(store.url)}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ------------------------------------------------------------------------------- prediction log


def _ship_pending(directory: Path, source: Store, say: Progress) -> int:
    """Ship what the local log still holds into the source database; refuse while a server writes it."""
    from passerelle.predictionlog import LogShipper

    if not directory.is_dir():
        return 0
    shipper = LogShipper(directory, source)
    shipped = shipper.ship_once()
    if shipper.last_error is not None:
        raise StoreError(f"the predictions waiting in {directory} could not be shipped: {shipper.last_error}")
    # A shipper leaves alone the segments of a worker that is alive: what remains is being written.
    left = sorted(p.name for p in directory.iterdir() if p.suffix in (".seg", ".done"))
    if left:
        raise ConflictError(
            f"{len(left)} prediction log segment(s) in {directory} are still being written "
            f"({left[0]}…): stop `passerelle serve` on this home, then copy again"
        )
    if shipped:
        say(f"shipped {shipped} record(s) waiting in {directory} (predictions and shadow answers)")
    return shipped


# ------------------------------------------------------------------------------------ artifacts


def _artifact_listing(session: Session) -> list[tuple[str, str, list[StoredFile]]]:
    versions = session.scalars(
        select(ModelVersion)
        .options(selectinload(ModelVersion.files), selectinload(ModelVersion.model))
        .order_by(ModelVersion.id)
    ).all()
    return [
        (
            f"{v.model.name}:{v.number}",
            v.artifact_key,
            [StoredFile(f.path, f.sha256, f.size) for f in v.files],
        )
        for v in versions
    ]


def _copy_artifacts(
    source: ArtifactStore,
    target: ArtifactStore,
    versions: Iterable[tuple[str, str, list[StoredFile]]],
    say: Progress,
) -> int:
    """Copy each version's files under the same key, checking every sha256; return the files copied."""
    copied = 0
    for ref, key, recorded in versions:
        try:
            # Verified against the recorded checksums here (downloaded first when remote)...
            folder = source.local_path(key, recorded)
        except IntegrityError as exc:
            raise IntegrityError(f"{ref}: {exc}; nothing was written to the target database") from exc
        # ...and hashed again while uploading, so what lands in the target is what was checked.
        written = {f.path: f for f in target.put_tree(folder, key)}
        for f in recorded:
            got = written.get(f.path)
            if got is None or got.sha256 != f.sha256:
                raise IntegrityError(
                    f"{ref}: {f.path} changed while it was copied (sha256 "
                    f"{got.sha256[:12] if got else 'missing'}… instead of {f.sha256[:12]}…); copy again"
                )
        copied += len(recorded)
        say(f"artifacts of {ref}: {len(recorded)} file(s) copied to {target.uri}")
    return copied


# --------------------------------------------------------------------------------------- tables


def _copy_tables(
    src: Session,
    target: Store,
    tables: list[Table],
    *,
    batch_rows: int,
    replace: bool,
    say: Progress,
    record: Callable[[Session, dict[str, int]], None],
) -> dict[str, int]:
    counts: dict[str, int] = {}
    try:
        with target.write() as dst:
            if replace:
                for table in reversed(Base.metadata.sorted_tables):
                    if table.name not in _RUNTIME_TABLES:
                        dst.execute(delete(table))
            for table in tables:
                counts[table.name] = _copy_table(src, dst, table, batch_rows)
                say(f"table {table.name}: {counts[table.name]} row(s)")
            if target.dialect == "postgresql":
                _reset_sequences(dst, tables)
            # The copy's own record, chained onto the copied log, doubles as the completion
            # marker: it commits with the rows or not at all.
            record(dst, counts)
            failpoint("dbcopy.before_commit")
    except DBAPIError as exc:
        raise StoreError(f"the target refused the copy, which was rolled back: {_first_line(exc)}") from exc
    return counts


def _copy_table(src: Session, dst: Session, table: Table, batch_rows: int) -> int:
    expected = int(src.execute(select(func.count()).select_from(table)).scalar_one())
    order = list(table.primary_key.columns)
    result = src.execute(select(table).order_by(*order), execution_options={"yield_per": batch_rows})
    copied = 0
    for part in result.partitions():
        rows = [dict(row._mapping) for row in part]
        try:
            dst.execute(insert(table), rows)
        except DBAPIError as exc:
            raise StoreError(
                f"table {table.name}: the target refused a row among rows {copied + 1} to "
                f"{copied + len(rows)}, so nothing was copied: {_first_line(exc)}"
            ) from exc
        copied += len(rows)
    landed = int(dst.execute(select(func.count()).select_from(table)).scalar_one())
    if not expected == copied == landed:
        raise StoreError(
            f"table {table.name}: {expected} row(s) in the source, {copied} read, {landed} in the "
            "target; nothing was copied"
        )
    return copied


def _reset_sequences(dst: Session, tables: Iterable[Table]) -> None:
    """Move each serial id's sequence past the copied ids: explicit ids do not advance it."""
    for table in tables:
        keys = list(table.primary_key.columns)
        if len(keys) != 1 or not isinstance(keys[0].type, Integer):
            continue
        column = keys[0]
        sequence = dst.execute(
            text("SELECT pg_get_serial_sequence(:table, :column)"),
            {"table": table.name, "column": column.name},
        ).scalar_one_or_none()
        if sequence is None:
            continue
        highest = dst.execute(select(func.max(column))).scalar_one_or_none()
        dst.execute(
            text("SELECT setval(CAST(:sequence AS regclass), :value, :called)"),
            {"sequence": sequence, "value": highest or 1, "called": highest is not None},
        )


def _local_dataset_versions(session: Session) -> int:
    uris = session.scalars(select(DatasetVersion.uri)).all()
    return sum(1 for uri in uris if "://" not in uri or uri.startswith("file://"))


# ---------------------------------------------------------------------------------- integrity


def _check_target(ctx: Context) -> tuple[list[str], list[str], int]:
    """Problems and notes of the target, as ``passerelle doctor`` sees them, and its audit records."""
    from passerelle.registry import Registry

    registry = Registry(ctx)
    problems = registry.verify_artifacts()
    chain = audit.verify_chain(ctx.store)
    if not chain.ok:
        problems.append(f"audit chain: {chain.problem}")
    notes: list[str] = []
    orphans = registry.sweep_orphans(dry_run=True, older_than=dt.timedelta(0))
    if orphans:
        notes.append(
            f"{len(orphans)} artifact folder(s) in {ctx.artifacts.uri} belong to no version "
            f"({orphans[0]}…); `passerelle gc` with the new settings removes them"
        )
    return problems, notes, chain.checked
