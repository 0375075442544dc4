"""What travels between the remote client and the server, besides JSON: headers and archives.

An artifact folder travels as a gzipped tar of plain files. The server unpacks what a
client uploads and the client unpacks what the server sends, so both sides read archives
they did not write: only plain files with relative paths inside the destination are
accepted, whatever the archive holds.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from passerelle.errors import InvalidInputError

MEDIA_TYPE = "application/gzip"
#: who acts, for the audit log (until authentication establishes it)
USER_HEADER = "X-Passerelle-User"


def pack(folder: Path, paths: Iterable[str], dest: BinaryIO) -> None:
    """Write the files ``paths`` (relative, with forward slashes) of ``folder`` as a tar.gz to ``dest``."""
    with tarfile.open(fileobj=dest, mode="w:gz") as tar:
        for rel in paths:
            tar.add(folder / rel, arcname=rel, recursive=False)


def files_below(folder: Path) -> list[str]:
    """Every file below ``folder``, relative, with forward slashes, in a stable order."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def unpack(source: BinaryIO, dest: Path, *, what: str = "the archive") -> list[str]:
    """Extract the tar.gz ``source`` into the folder ``dest``; return the relative paths of its files.

    Anything but directories and regular files (links, devices), and any path that is
    absolute or climbs out with ``..``, is refused with an :class:`InvalidInputError`.
    """
    names: list[str] = []
    try:
        with tarfile.open(fileobj=source, mode="r:gz") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts:
                    raise InvalidInputError(f"{what} holds {member.name!r}, a path outside its folder")
                if member.isdir():
                    continue
                if not member.isreg():
                    raise InvalidInputError(f"{what} holds {member.name!r}, which is not a plain file")
                tar.extract(member, dest, filter="data")
                if path.as_posix() not in names:
                    names.append(path.as_posix())
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise InvalidInputError(f"{what} is not a readable tar.gz archive: {exc}") from exc
    if not names:
        raise InvalidInputError(f"{what} holds no file")
    return names
