"""The output of a bulk-scoring run: one row per item, as CSV or NDJSON, appended to and resumable.

A row is the item's ``id``, its bits/dim, the score that decided ``is_anomaly`` and the decision, every per-item
anomaly score with its p-value (empty where the model has no such score), and ``error`` (empty on success).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

SCORE_NAMES = ("nll", "complexity", "latent", "combined")
COLUMNS = (
    "id",
    "bits_per_dim",
    "score",
    "is_anomaly",
    *(column for name in SCORE_NAMES for column in (name, f"{name}_p_value")),
    "error",
)
Row = dict[str, Any]


def error_row(item_id: str, error: str) -> Row:
    """The row of an item that could not be read or scored."""
    return {"id": item_id, "error": error}


def rows_from_response(ids: list[str], body: dict[str, Any]) -> list[Row]:
    """Rows of a ``/anomaly`` (or ``/log-likelihood``) answer for the items ``ids``, in order."""
    rows = []
    item_scores = body.get("scores") or {}
    bits = body.get("bits_per_dim") or (item_scores.get("nll") or {}).get("values") or []
    decided = body.get("is_anomaly")
    for index, item_id in enumerate(ids):
        row: Row = {"id": item_id, "bits_per_dim": bits[index] if index < len(bits) else None}
        if decided is not None:
            row.update(score=body.get("score"), is_anomaly=decided[index])
        for name in SCORE_NAMES:
            if name in item_scores:
                row[name] = item_scores[name]["values"][index]
                row[f"{name}_p_value"] = item_scores[name]["p_value"][index]
        rows.append(row)
    return rows


def _drop_partial_last_line(path: Path) -> None:
    """Cut a last line that a killed run left without its newline, so that appending starts on a fresh line."""
    with path.open("rb+") as stream:
        stream.seek(0, io.SEEK_END)
        size = stream.tell()
        if size == 0:
            return
        stream.seek(size - 1)
        if stream.read(1) == b"\n":
            return
        position = size
        while position > 0:  # scan back in blocks for the previous newline
            start = max(0, position - 65536)
            stream.seek(start)
            block = stream.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                stream.truncate(start + newline + 1)
                return
            position = start
        stream.truncate(0)


def done_ids(path: Path) -> set[str]:
    """The ids already in an output file (none when it does not exist); cuts a partial last line first.

    Raises:
        ValueError: a CSV file whose header is not this client's columns (another file: refuse to append).
    """
    if not path.exists():
        return set()
    _drop_partial_last_line(path)
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as stream:
            reader = csv.reader(stream)
            header = next(reader, None)
            if header is None:
                return set()
            if tuple(header) != COLUMNS:
                raise ValueError(f"--out: expected a CSV with columns {','.join(COLUMNS)}, got {','.join(header)}")
            return {row[0] for row in reader if row}
    ids = set()
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                ids.add(str(json.loads(line)["id"]))
    return ids


class ResultWriter:
    """Appends rows to a CSV or NDJSON file (or writes CSV to stdout), flushed after every batch.

    Args:
        path: the output file (``.csv``, else NDJSON), or None for CSV on stdout.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.ndjson = path is not None and path.suffix.lower() != ".csv"
        if path is None:
            self._stream: IO[str] = sys.stdout
            new = True
        else:
            new = not path.exists() or path.stat().st_size == 0
            self._stream = path.open("a", newline="", encoding="utf-8")
        self._csv = None if self.ndjson else csv.DictWriter(self._stream, fieldnames=COLUMNS, extrasaction="ignore")
        if self._csv is not None and new:
            self._csv.writeheader()

    def write(self, rows: Iterable[Row]) -> None:
        """Append ``rows`` and flush, so that a killed run keeps every row written before."""
        for row in rows:
            if self._csv is not None:
                self._csv.writerow({column: _csv_value(row.get(column)) for column in COLUMNS})
            else:
                self._stream.write(json.dumps({key: value for key, value in row.items() if value is not None}) + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Close the file (stdout stays open)."""
        if self.path is not None:
            self._stream.close()


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value
