"""The playground page's routes: headers, assets, no inline code or secret, and an API left as it was."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import tomllib
from fastapi import APIRouter

from service.api.routes import playground
from tests.support.inprocess import serve_in_process

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[3]
API_PATHS = {
    "/anomaly",
    "/decode",
    "/encode",
    "/healthz",
    "/interpolate",
    "/log-likelihood",
    "/metrics",
    "/models",
    "/models/{name}",
    "/readyz",
    "/sample",
    "/sample.png",
    "/models/{name}/drift",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/infer",
}
SECRET = "playground-test-secret-4f1c"


class PageParser(HTMLParser):
    """Collects the tags, attributes and text inside each tag of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_in: dict[str, str] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            self._open.remove(tag)

    def handle_data(self, data: str) -> None:
        if self._open:
            self.text_in[self._open[-1]] = self.text_in.get(self._open[-1], "") + data


@pytest.fixture(scope="module")
async def page_client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """An app over an empty model folder: the page needs no model, and none is loaded (fast)."""
    async with serve_in_process(tmp_path_factory.mktemp("no_models")) as client:
        yield client


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


async def test_page_is_served_with_a_content_security_policy(page_client: httpx.AsyncClient) -> None:
    response = await page_client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>RealNVP playground</title>" in response.text
    policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert set(policy["img-src"].split()) == {"'self'", "data:", "blob:"}
    assert policy["connect-src"] == "'self'" and policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_head_answers_the_headers_only(page_client: httpx.AsyncClient) -> None:
    response = await page_client.head("/")
    assert response.status_code == 200
    assert response.content == b""
    assert "content-security-policy" in response.headers


async def test_page_has_no_inline_script_style_or_handler(page_client: httpx.AsyncClient) -> None:
    page = parse((await page_client.get("/")).text)
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts == [{"type": "module", "src": "/playground/playground.js"}]
    assert page.text_in.get("script", "").strip() == ""
    assert all(tag != "style" for tag, _ in page.tags)
    for tag, attrs in page.tags:
        assert "style" not in attrs, tag
        handlers = [name for name in attrs if name.startswith("on")]
        assert handlers == [], (tag, handlers)


async def test_every_referenced_asset_is_served_with_its_type(page_client: httpx.AsyncClient) -> None:
    page = parse((await page_client.get("/")).text)
    referenced = [attrs["src"] for tag, attrs in page.tags if tag == "script"]
    referenced += [attrs["href"] for tag, attrs in page.tags if tag == "link" and attrs.get("rel") == "stylesheet"]
    # ES module imports inside the scripts
    for script in sorted(playground.STATIC_DIR.glob("*.js")):
        referenced += [f"/playground/{name}" for name in re.findall(r'from "\./([\w-]+\.js)"', script.read_text())]
    assert "/playground/playground.css" in referenced and "/playground/pad.js" in referenced
    expected_types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    for path in sorted(set(referenced)):
        response = await page_client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == expected_types[Path(path).suffix], path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.text == (playground.STATIC_DIR / Path(path).name).read_text()
    # and nothing is shipped that the page does not use
    assert {f"/playground/{name}" for name in playground.asset_names()} == set(referenced)


@pytest.mark.parametrize("name", ["nope.js", "index.html", "..%2Fplayground.py", ".hidden.js", "PAD.JS"])
async def test_anything_else_under_the_prefix_is_404(page_client: httpx.AsyncClient, name: str) -> None:
    response = await page_client.get(f"/playground/{name}")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail.startswith("expected one of the") and "got" in detail


@pytest.mark.parametrize("api_key", [None, SECRET], ids=["open", "api-key"])
async def test_openapi_document_is_the_one_without_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_key: str | None
) -> None:
    async with serve_in_process(tmp_path, api_key=api_key) as client:
        assert (await client.get("/")).status_code == 200
        document = (await client.get("/openapi.json")).json()
    assert set(document["paths"]) == API_PATHS
    # The same app with the page's router emptied: the very same document.
    monkeypatch.setattr(playground, "router", APIRouter())
    async with serve_in_process(tmp_path, api_key=api_key) as bare:
        assert (await bare.get("/")).status_code == 404
        assert (await bare.get("/openapi.json")).json() == document


async def test_other_routes_answer_as_before(page_client: httpx.AsyncClient) -> None:
    assert (await page_client.get("/healthz")).json() == {"status": "ok"}
    missing = await page_client.get("/nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "expected one of the documented paths (see /docs), got /nope"}
    posted = await page_client.post("/")
    assert posted.status_code == 405
    assert posted.json() == {"detail": "expected another method for /, got POST"}
    docs = await page_client.get("/docs")
    assert docs.status_code == 200 and "content-security-policy" not in docs.headers  # Swagger UI as before


async def test_with_an_api_key_the_page_is_open_and_holds_no_secret(tmp_path: Path) -> None:
    async with serve_in_process(tmp_path, api_key=SECRET) as client:
        page = await client.get("/")
        assert page.status_code == 200
        bodies = [page.text]
        for name in playground.asset_names():
            asset = await client.get(f"/playground/{name}")
            assert asset.status_code == 200
            bodies.append(asset.text)
        assert all(SECRET not in body for body in bodies)
        # the page opens nothing: the API still wants the key
        refused = await client.get("/models")
        assert refused.status_code == 401
        assert refused.json()["detail"] == "expected header 'Authorization: Bearer <API_KEY>', got no bearer token"
        allowed = await client.get("/models", headers={"Authorization": f"Bearer {SECRET}"})
        assert allowed.status_code == 200


def test_static_files_are_package_data() -> None:
    """A wheel (and so the Docker image, built from one) installs every file the page needs."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    package = REPO / "service"
    files = [path.relative_to(package).as_posix() for path in playground.STATIC_DIR.iterdir() if path.is_file()]
    assert "api/static/index.html" in files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
