"""What is in ``MODEL_DIR`` now: the model folders, a cheap fingerprint of each, and the folders refused.

The registry polls this (``RELOAD_INTERVAL_S``) and ``POST /admin/reload`` calls it: a folder whose fingerprint
changed since it was last tried is loaded anew; a name that disappeared is removed. The fingerprint is made of
``stat`` results only (inode, size, modification time of the folder, ``model.ts`` and ``card.json``), so a look
costs a few system calls per model however large the modules; what a changed folder actually holds is decided
by its card and the sha256 of its module (``same_artifact``).

Symbolic links: a model folder, or its ``model.ts`` or ``card.json``, may be a link only to somewhere inside
``MODEL_DIR`` itself (a versioned store such as ``mnist -> .versions/mnist-3``); one that resolves outside is
refused and reported, never read. ``MODEL_DIR`` itself may be a link (it is the operator's setting).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from artifact import CARD_FILE, MODULE_FILE, ArtifactError, ModelCard, read_card

Fingerprint = tuple[object, ...]


@dataclass(frozen=True)
class ModelFolder:
    """One non-hidden sub-folder of ``MODEL_DIR``.

    Attributes:
        name: the model's name (the folder's name).
        path: the folder as listed, ``MODEL_DIR/name``.
        source: where it resolves to, the folder that is read (inside ``MODEL_DIR``).
        fingerprint: changes whenever the folder or one of its two files is replaced or rewritten.
        refusal: why the folder may not be read (a symbolic link out of ``MODEL_DIR``), or None.
    """

    name: str
    path: Path
    source: Path
    fingerprint: Fingerprint
    refusal: str | None = None


@dataclass
class ReloadReport:
    """What one look at ``MODEL_DIR`` changed.

    Attributes:
        added: ``NAME@VERSION`` of models that began to serve.
        replaced: ``NAME@VERSION`` of new versions that took over from an older one.
        removed: names of folders gone (their versions drain).
        unchanged: names of folders touched or rewritten with the very artifact that serves.
        failed: name → why its new contents were refused (an older version, if any, keeps serving).
    """

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class Scan:
    """One look at ``MODEL_DIR``.

    Attributes:
        folders: name → folder, sorted by name.
        problem: what is wrong with ``MODEL_DIR`` itself (missing, empty), or None.
    """

    folders: dict[str, ModelFolder] = field(default_factory=dict)
    problem: str | None = None


def scan_model_dir(root: Path) -> Scan:
    """List the model folders of ``root`` (direct, non-hidden sub-folders), fingerprinted, links checked."""
    if not root.is_dir():
        return Scan(problem=f"expected a folder of models, got no folder at {root}")
    base = root.resolve()
    scan = Scan()
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not path.is_dir():  # the exporter's temporary folders are hidden
            continue
        source = path.resolve()
        scan.folders[path.name] = ModelFolder(
            name=path.name,
            path=path,
            source=source,
            fingerprint=_fingerprint(source),
            refusal=_escape(path, base),
        )
    if not scan.folders:
        scan.problem = f"expected at least one model folder, got none in {root}"
    return scan


def _escape(path: Path, base: Path) -> str | None:
    """Why ``path`` (a model folder) or one of its files may not be read: it resolves outside ``base``."""
    for candidate in (path, path / MODULE_FILE, path / CARD_FILE):
        target = candidate.resolve()
        if not target.is_relative_to(base):
            return (
                f"{candidate}: expected a path inside MODEL_DIR {base}, got a symbolic link to {target} "
                "(links may only point inside MODEL_DIR)"
            )
    return None


def _fingerprint(source: Path) -> Fingerprint:
    """Where the folder resolves, and ``(inode, size, mtime_ns)`` of it and its two files (None when missing)."""
    stats: list[object] = [str(source)]
    for candidate in (source, source / MODULE_FILE, source / CARD_FILE):
        try:
            info = os.stat(candidate)
        except OSError:
            stats.append(None)
            continue
        stats.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(stats)


def same_artifact(source: Path, card: ModelCard) -> bool:
    """Whether ``source`` holds exactly the artifact ``card`` describes: an equal card, a module of its sha256.

    A folder touched, copied over with the same files, or rewritten by an export of the same weights and card
    is then kept as it is instead of being loaded and swapped for nothing. Runs on a worker thread (it reads the
    whole module).
    """
    try:
        candidate = read_card(source)
        data = (source / MODULE_FILE).read_bytes()
    except (ArtifactError, OSError):
        return False
    return candidate == card and hashlib.sha256(data).hexdigest() == card.sha256
