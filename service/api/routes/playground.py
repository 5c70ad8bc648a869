"""``GET /``: the playground page, and its assets under ``/playground/``; both outside the OpenAPI document.

The page (plain HTML, CSS and ES modules in ``service/api/static/``, no build step) is one more client of the
public API: it calls the documented endpoints with ``fetch``, under the same limits and the same ``API_KEY``, so
it needs no auth of its own and holds no secret. Its responses carry a Content-Security-Policy that allows
scripts, styles and connections to this origin only (no inline code) and images from ``data:``/``blob:`` URLs
(the API returns PNGs as base64).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
ASSET_PREFIX = "/playground"
PAGE = "index.html"
MEDIA_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
# One plain file name: no separators or dots beyond the suffix, so no request can leave STATIC_DIR.
_ASSET_NAME = re.compile(r"[a-z][a-z0-9_-]*\.(?:css|js)")

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        # The key form is handled by the script; no form ever submits anywhere.
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate (ETag / Last-Modified) on every load, so an upgraded service never runs a stale script.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def asset_names() -> list[str]:
    """The files ``/playground/{name}`` serves: the CSS and JS files of the static folder."""
    return sorted(path.name for path in STATIC_DIR.iterdir() if _ASSET_NAME.fullmatch(path.name) and path.is_file())


def _static_file(name: str, media_type: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=SECURITY_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
async def playground_page() -> FileResponse:
    """The playground page."""
    return _static_file(PAGE, "text/html; charset=utf-8")


@router.api_route(ASSET_PREFIX + "/{name}", methods=["GET", "HEAD"])
async def playground_asset(name: str) -> FileResponse:
    """One stylesheet or script of the page.

    Raises:
        StarletteHTTPException: 404 for a name that is not one of ``asset_names()``.
    """
    names = asset_names()
    if name not in names:
        raise StarletteHTTPException(404, f"expected one of the playground's assets {names}, got {name!r}")
    return _static_file(name, MEDIA_TYPES[Path(name).suffix])
