"""The bulk-scoring client against an in-process app: every source kind, errors as rows, resume, retries."""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.client.__main__ import score_path
from service.client.results import COLUMNS
from service.client.scorer import ScoreConfig, ScoringAbortedError, run
from service.client.sources import Item
from tests.service.client.conftest import CORRUPT_PNG, app_transport

pytestmark = pytest.mark.anyio
URL = "http://service"


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows), "no id twice"
    return by_id


async def direct_anomaly(transport: httpx.ASGITransport, **body: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(transport=transport, base_url=URL) as client:
        response = await client.post("/anomaly", json={"model": "digits", **body})
        assert response.status_code == 200, response.text
        return response.json()


def check_images_scored(rows: dict[str, dict[str, str]], expected: dict[str, Any], pngs: dict[str, bytes]) -> None:
    good = sorted(name for name in pngs if name.startswith(("a/", "b/c/")))
    assert set(rows) == set(pngs)
    assert (
        "expected a PNG or JPEG image" in rows["b/corrupt.png"]["error"] and not rows["b/corrupt.png"]["bits_per_dim"]
    )
    assert "expected a 8x8 image (width x height), got 16x16" in rows["b/large.png"]["error"]
    for index, name in enumerate(good):
        row = rows[name]
        assert row["error"] == "" and row["score"] == "combined"
        assert float(row["bits_per_dim"]) == pytest.approx(expected["scores"]["nll"]["values"][index], rel=1e-6)
        for score in ("nll", "complexity", "latent", "combined"):
            assert float(row[f"{score}_p_value"]) == pytest.approx(expected["scores"][score]["p_value"][index])
        assert row["is_anomaly"] == str(expected["is_anomaly"][index]).lower()


@pytest.mark.parametrize("kind", ["folder", "zip", "tar"])
async def test_images_score_as_the_api_and_bad_files_are_rows(
    kind: str,
    request: pytest.FixtureRequest,
    anomaly_transport: httpx.ASGITransport,
    digit_pngs: dict[str, bytes],
    tmp_path: Path,
) -> None:
    source = request.getfixturevalue({"folder": "image_folder", "zip": "image_zip", "tar": "image_tar"}[kind])
    out = tmp_path / "scores.csv"
    config = ScoreConfig(batch=4, concurrency=3)
    summary = await score_path(source, URL, out, config, transport=anomaly_transport)
    assert (summary.scored, summary.errors) == (5, 2)
    good = sorted(name for name in digit_pngs if name.startswith(("a/", "b/c/")))
    images = [base64.b64encode(digit_pngs[name]).decode() for name in good]
    check_images_scored(read_csv(out), await direct_anomaly(anomaly_transport, images=images), digit_pngs)


async def test_npz_rows_of_the_chosen_array(
    anomaly_transport: httpx.ASGITransport, digits_npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.ndjson"
    summary = await score_path(digits_npz, URL, out, ScoreConfig(batch=4), keys=["x"], transport=anomaly_transport)
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert summary.scored == 6 and sorted(rows) == [f"x[{index}]" for index in range(6)]
    expected = await direct_anomaly(anomaly_transport, inputs=np.load(digits_npz)["x"].tolist())
    values = [rows[f"x[{index}]"]["combined"] for index in range(6)]
    np.testing.assert_allclose(values, expected["scores"]["combined"]["values"], rtol=1e-6)
    assert all("error" not in row and row["score"] == "combined" for row in rows.values())


async def test_npz_of_vectors_and_every_array_without_keys(
    anomaly_transport: httpx.ASGITransport, moons_npz: Path, digits_npz: Path, tmp_path: Path
) -> None:
    out = tmp_path / "moons.csv"
    summary = await score_path(moons_npz, URL, out, ScoreConfig(model="moons"), transport=anomaly_transport)
    rows = read_csv(out)
    assert summary.scored == 9 and rows["points[0]"]["score"] == "nll" and rows["points[0]"]["combined"] == ""
    assert rows["points[8]"]["nll"] == rows["points[8]"]["bits_per_dim"]
    every = tmp_path / "every.csv"
    summary = await score_path(digits_npz, URL, every, ScoreConfig(batch=8), transport=anomaly_transport)
    rows = read_csv(every)
    assert (summary.scored, summary.errors) == (6, 6)  # the labels array is not items of the model
    assert "expected shape [N, 1, 8, 8], got [1, 1]" in rows["labels[0]"]["error"]


async def test_ndjson_items_and_their_errors(
    anomaly_transport: httpx.ASGITransport, mixed_ndjson: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    summary = await score_path(mixed_ndjson, URL, out, ScoreConfig(batch=8), transport=anomaly_transport)
    rows = read_csv(out)
    assert (summary.scored, summary.errors) == (3, 3)
    assert rows["pixels"]["error"] == rows["png"]["error"] == rows["line 7"]["error"] == ""
    assert "expected a JSON object on this line, got invalid JSON" in rows["line 3"]["error"]
    assert (
        "expected exactly one of 'inputs' (numbers) or 'image' (base64), got ['id', 'label']"
        in rows["neither"]["error"]
    )
    assert "expected 'image' as base64" in rows["bad64"]["error"]


async def test_resume_skips_done_ids_and_drops_a_partial_last_row(
    anomaly_transport: httpx.ASGITransport, image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    await score_path(image_folder, URL, out, ScoreConfig(batch=2), transport=anomaly_transport)
    complete = read_csv(out)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:10])  # header, two rows, and a row a kill cut short
    summary = await score_path(image_folder, URL, out, ScoreConfig(batch=2), transport=anomaly_transport)
    assert summary.scored + summary.errors == len(complete) - 2
    resumed = read_csv(out)
    assert resumed.keys() == complete.keys()
    for key, row in complete.items():  # batches differ between the runs: equal up to float32 batch effects
        assert resumed[key]["error"].split(" (")[0] == row["error"].split(" (")[0]  # without object addresses
        assert float(resumed[key]["bits_per_dim"] or 0) == pytest.approx(float(row["bits_per_dim"] or 0), rel=1e-5)
    again = await score_path(image_folder, URL, out, ScoreConfig(), transport=anomaly_transport)
    assert again.scored + again.errors == 0 and again.requests == 0


class Flaky(httpx.AsyncBaseTransport):
    """Refuses the first requests (503 + Retry-After, then a connection error), then passes them on."""

    def __init__(self, inner: httpx.AsyncBaseTransport, busy: int) -> None:
        self.inner, self.busy, self.seen = inner, busy, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.seen <= self.busy:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "queue full"})
        if self.seen == self.busy + 1:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


async def test_503_and_connection_errors_are_retried(
    anomaly_transport: httpx.ASGITransport, image_zip: Path, tmp_path: Path
) -> None:
    flaky = Flaky(anomaly_transport, busy=3)
    config = ScoreConfig(batch=16, concurrency=1, backoff_s=0.01)
    summary = await score_path(image_zip, URL, tmp_path / "s.csv", config, transport=flaky)
    assert (summary.scored, summary.errors, summary.retries) == (5, 2, 4)
    exhausted = Flaky(anomaly_transport, busy=100)
    summary = await score_path(
        image_zip, URL, tmp_path / "t.csv", ScoreConfig(retries=2, backoff_s=0.01), transport=exhausted
    )
    rows = read_csv(tmp_path / "t.csv")
    assert summary.errors == 7 and all(row["error"] == "HTTP 503: queue full" for row in rows.values())


async def test_what_no_item_can_fix_stops_the_run(
    anomaly_transport: httpx.ASGITransport, image_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(ScoringAbortedError, match="404: model: expected one of"):
        await score_path(image_folder, URL, tmp_path / "a.csv", ScoreConfig(model="cifar"), transport=anomaly_transport)


async def test_a_card_without_references_falls_back_to_log_likelihood(
    store: Path, image_folder: Path, tmp_path: Path
) -> None:
    async with app_transport(store, api_key="k") as transport:
        with pytest.raises(ScoringAbortedError, match="401"):
            await score_path(image_folder, URL, None, ScoreConfig(model="digits"), transport=transport)
        out = tmp_path / "s.csv"
        summary = await score_path(
            image_folder, URL, out, ScoreConfig(model="digits", api_key="k"), transport=transport
        )
    rows = read_csv(out)
    assert summary.endpoint == "/log-likelihood" and summary.scored == 5
    assert all(row["score"] == "" and row["bits_per_dim"] for row in rows.values() if not row["error"])


class CountingWriter:
    def __init__(self) -> None:
        self.rows = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows += len(rows)


async def test_memory_is_bounded_by_concurrency_times_batch(anomaly_transport: httpx.ASGITransport) -> None:
    writer = CountingWriter()
    read = 0
    most_ahead = 0

    def items() -> Iterator[Item]:
        nonlocal read, most_ahead
        for index in range(300):
            read += 1
            most_ahead = max(most_ahead, read - writer.rows)
            yield Item(f"i{index}", image=CORRUPT_PNG) if index % 50 == 0 else Item(f"i{index}", inputs=[[[0] * 8] * 8])

    async with httpx.AsyncClient(transport=anomaly_transport, base_url=URL) as client:
        summary = await run(items(), writer, client, ScoreConfig(batch=8, concurrency=3))  # type: ignore[arg-type]
    assert writer.rows == 300 and summary.errors == 6
    assert most_ahead <= 3 * 8 + 8 + 1, most_ahead  # in flight, plus the batch being gathered
