"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis, in-process ASGI).

Three streams of requests, for every operation of ``/openapi.json``:

* ``positive``: schemathesis-generated requests that follow the schema (``model`` is often a served name,
  so requests get past the lookup);
* ``negative``: schemathesis-generated requests that break the schema (wrong types, missing fields, ...);
* ``plausible``: hypothesis-generated bodies of the right shapes for the served models, so that most of them
  succeed and the 200 answers are checked against the schema too.

Every response must: not be a 5xx; have a documented status code, content type and headers; match its
documented schema; reject schema-breaking requests with a 4xx; carry ``{"detail": "..."}`` on errors
(``{"error": "..."}`` under ``/v2``, the Open Inference Protocol's body); hold no NaN/Infinity tokens. At least
``MIN_REQUESTS`` requests are sent and counted; ``/healthz`` answers afterwards.

Derandomized (the same requests each run); ``FUZZ_SEED=N`` explores other ones, ``FUZZ_SCALE=K`` sends K times as
many.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.core.config import Settings
from service.main import create_app

MIN_REQUESTS = 2000
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
EXAMPLES = {"positive": int(130 * SCALE), "negative": int(70 * SCALE), "plausible": int(80 * SCALE)}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
MODELS = ("digits", "moons")
# Operations without a body or path parameter: the plausible stream has nothing to add to them.
UNPARAMETRISED = {"/healthz", "/readyz", "/metrics", "/models", "/v2", "/v2/health/live", "/v2/health/ready"}
SHAPES = {"digits": (1, 8, 8), "moons": (2,)}


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize="FUZZ_SEED" not in os.environ,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def _seeded(test: Callable[..., None]) -> Callable[..., None]:
    return seed(int(os.environ["FUZZ_SEED"]))(test) if "FUZZ_SEED" in os.environ else test


# ------------------------------------------------------------------------------------------ plausible bodies
def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False) | st.sampled_from([0.0, 1e30, -3e38, 5e-324])
PIXELS = st.integers(0, 255) | st.sampled_from([-1, 256, 0.5])  # mostly valid, sometimes out of range


@st.composite
def items(draw: st.DrawFn, model: str, count: int) -> list[Any]:
    """``count`` data items of ``model``'s shape as nested lists."""
    if model == "moons":
        return [[draw(FLOATS), draw(FLOATS)] for _ in range(count)]
    return [[[[draw(PIXELS)] * 8 for _ in range(8)]] for _ in range(count)]


@st.composite
def images(draw: st.DrawFn, count: int) -> list[bytes]:
    """``count`` 8x8 grayscale PNGs, now and then truncated."""
    seed_value = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed_value)
    data = [_png(rng.integers(0, 256, size=(8, 8))) for _ in range(count)]
    if draw(st.integers(0, 9)) == 0:
        data[0] = data[0][: len(data[0]) // 2]
    return data


@st.composite
def scoring_body(draw: st.DrawFn, counts: st.SearchStrategy[int] | None = None) -> dict[str, Any]:
    """A /log-likelihood, /encode or /anomaly body: JSON inputs, JSON base64 images or multipart files."""
    model = draw(st.sampled_from(MODELS))
    count = draw(counts or st.integers(1, 4))
    source = draw(st.sampled_from(["inputs", "images", "files"] if model == "digits" else ["inputs"]))
    if source == "inputs":
        return {"model": model, "inputs": draw(items(model, count))}
    pngs = draw(images(count))
    if source == "images":
        return {"model": model, "images": [base64.b64encode(data).decode() for data in pngs]}
    return {"model": model, "files": pngs}


@st.composite
def plausible_case(draw: st.DrawFn, operation: Any) -> Any:
    """A request of the right shapes for ``operation`` (a schemathesis ``APIOperation``)."""
    path = operation.path
    model = draw(st.sampled_from(MODELS))
    fmt = draw(st.sampled_from(["array", "png"]))
    if path == "/sample":
        body = {"model": model, "n": draw(st.integers(1, 20)), "format": fmt}
        body["temperature"] = draw(st.floats(min_value=0.01, max_value=2.0))
        if draw(st.booleans()):
            body["seed"] = draw(st.integers(0, 2**63 - 1))
        return operation.Case(body=body, media_type="application/json")
    if path == "/sample.png":
        query = {"model": draw(st.sampled_from(["digits", "digits", "moons"])), "n": draw(st.integers(1, 20))}
        return operation.Case(query=query)
    if path == "/decode":
        latents = [
            [draw(FLOATS) for _ in range(64 if model == "digits" else 2)] for _ in range(draw(st.integers(1, 3)))
        ]
        return operation.Case(body={"model": model, "latents": latents, "format": fmt}, media_type="application/json")
    if path == "/interpolate":
        method = draw(st.sampled_from(["linear", "slerp", "manifold"]))
        body = {"model": model, "inputs": draw(items(model, 4 if method == "manifold" else 2))}
        body.update(method=method, steps=draw(st.integers(2, 5)), format=fmt)
        return operation.Case(body=body, media_type="application/json")
    if path in ("/log-likelihood", "/encode", "/anomaly"):
        body = draw(scoring_body())
        query: dict[str, Any] = {}
        options = {
            "fpr": draw(st.floats(min_value=0.001, max_value=0.5)),
            "score": draw(st.sampled_from(["nll", "typicality"])),
        }
        if path == "/anomaly":
            options["explain"] = model == "digits" and draw(st.booleans())
        if "files" in body:
            if path == "/anomaly":
                query = options
            return operation.Case(body=body, media_type="multipart/form-data", query=query)
        if path == "/anomaly":
            body.update(options)
        return operation.Case(body=body, media_type="application/json")
    if path in ("/models/{name}", "/v2/models/{name}", "/v2/models/{name}/ready", "/models/{name}/drift"):
        # No dot segments: the client normalises `/models/..` to `/`, another operation (the playground page, whose
        # HTML then fails this operation's checks). test_hostile_inputs sends them percent-encoded and raw.
        return operation.Case(path_parameters={"name": draw(st.sampled_from([*MODELS, "nope", "no such"]))})
    if path == "/v2/models/{name}/infer":
        return operation.Case(path_parameters={"name": model}, body=draw(v2_body(model)), media_type="application/json")
    return operation.Case()


@st.composite
def v2_body(draw: st.DrawFn, model: str) -> dict[str, Any]:
    """An Open Inference Protocol infer body for ``model``: mostly valid, now and then with a wrong datatype."""
    count = draw(st.integers(1, 4))
    values = draw(items(model, count))
    datatype = draw(st.sampled_from(["FP32", "FP64", "INT32"] + (["UINT8"] * 3 if model == "digits" else ["FP32"])))
    data = np.asarray(values, dtype=np.float64).reshape(-1).tolist() if draw(st.booleans()) else values
    body: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": [count, *SHAPES[model]], "datatype": datatype, "data": data}]
    }
    if draw(st.booleans()):
        body["outputs"] = [
            {"name": name} for name in draw(st.sets(st.sampled_from(["log_likelihood", "bits_per_dim"])))
        ]
    if draw(st.booleans()):
        body["id"] = draw(st.text(max_size=8))
    return body


def _with_served_model(case: Any, choice: str) -> Any:
    """Point a generated request at a served model (``choice``), or leave it as generated (``keep``)."""
    if choice == "keep":
        return case
    if isinstance(case.body, dict):
        case.body["model"] = choice
    if "model" in case.query or case.path == "/sample.png":
        case.query["model"] = choice
    if "name" in case.path_parameters:
        case.path_parameters["name"] = choice
    return case


# ------------------------------------------------------------------------------------------------- the test
class Tally:
    """What the fuzzer sent and got back."""

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: Counter[tuple[str, str, int]] = Counter()
        self.failures: list[str] = []

    def record(self, stream: str, case: Any) -> None:
        response = case.call()
        self.requests += 1
        self.statuses[(f"{case.method} {case.path}", stream, response.status_code)] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseException as exc:  # schemathesis raises a FailureGroup (a BaseExceptionGroup)
            self.failures.append(f"[{stream}] {exc}")
            return
        problem = _body_problem(response, case.path)
        if problem:
            self.failures.append(f"[{stream}] {case.method} {case.path} -> {response.status_code}: {problem}")

    def count(self, predicate: Callable[[tuple[str, str, int]], bool]) -> int:
        return sum(n for key, n in self.statuses.items() if predicate(key))


def _body_problem(response: Any, path: str) -> str | None:
    """Why a response breaks the service's own rules (error bodies say why; no NaN/Inf), or None."""
    if "json" not in response.headers.get("content-type", [""])[0]:
        return None

    def refuse(token: str) -> None:
        raise ValueError(f"non-finite token {token}")

    try:
        body = json.loads(response.text, parse_constant=refuse)
    except ValueError as exc:
        return f"{exc}: {response.text[:200]}"
    if response.status_code >= 400:
        key = "error" if path.startswith("/v2") else "detail"
        detail = body.get(key) if isinstance(body, dict) else None
        if not isinstance(detail, str) or "expected" not in detail:
            return f"error body without an 'expected ..., got ...' detail: {response.text[:200]}"
    return None


@pytest.fixture(scope="module")
def schema(store: Path) -> Any:
    """The app's own schema, bound to the app (schemathesis runs its lifespan once, on one event loop)."""
    app = create_app(Settings(model_dir=store, max_batch_size=8, max_samples=16, max_queue=64, torch_threads=1))
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    # 413 is a rejection too: a request that breaks the schema *and* sends more than MAX_SAMPLES files is refused
    # for its size before its query is read (schemathesis's default list of rejections leaves 413 out).
    rejection = loaded.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    with asgi.get_client(app) as client:
        give_up = time.monotonic() + 60
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < give_up:
            time.sleep(0.02)
        assert client.get("/readyz").status_code == 200
    yield loaded
    asgi.shutdown_lifespans()


def _run_stream(tally: Tally, stream: str, strategy: st.SearchStrategy[Any], examples: int) -> None:
    @_seeded
    @_settings(examples)
    @given(case=strategy)
    def send(case: Any) -> None:
        tally.record(stream, case)

    try:
        send()
    except Unsatisfiable:  # an operation without parameters has no schema-breaking variant
        assert stream == "negative"


@pytest.mark.slow
def test_fuzz_every_endpoint_from_the_openapi_schema(schema: Any) -> None:
    tally = Tally()
    paths = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        paths.add(operation.path)
        positive = st.tuples(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            st.sampled_from(["keep", *MODELS]),
        ).map(lambda pair: _with_served_model(*pair))
        _run_stream(tally, "positive", positive, EXAMPLES["positive"])
        _run_stream(
            tally, "negative", operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), EXAMPLES["negative"]
        )
        if operation.path not in UNPARAMETRISED:
            _run_stream(tally, "plausible", plausible_case(operation), EXAMPLES["plausible"])

    with asgi.get_client(schema.app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        assert client.post("/sample", json={"model": "moons", "n": 2}).status_code == 200

    summary = {f"{op} [{stream}] {status}": n for (op, stream, status), n in sorted(tally.statuses.items())}
    print(json.dumps({"requests": tally.requests, "failures": len(tally.failures), "statuses": summary}, indent=1))
    server_errors = tally.count(lambda key: key[2] >= 500)
    assert not tally.failures, f"{len(tally.failures)} failures; first ones:\n" + "\n\n".join(tally.failures[:5])
    assert server_errors == 0
    assert tally.requests >= MIN_REQUESTS * min(SCALE, 1.0), tally.requests
    expected_paths = {
        "/sample",
        "/sample.png",
        "/decode",
        "/log-likelihood",
        "/encode",
        "/interpolate",
        "/models",
        "/models/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert expected_paths <= paths, paths
    # The plausible stream reaches the models: every model endpoint answered 200 many times (schema-checked).
    for path in sorted(paths - UNPARAMETRISED):
        ok = tally.count(lambda key, path=path: key[0].endswith(" " + path) and key[2] == 200)
        assert ok >= 10, (path, ok)
