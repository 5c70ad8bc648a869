"""The playground page in headless Chromium against the running service over the bundled models.

Each test loads the page, works it as a person would (sliders, strokes on a canvas, file inputs) and checks what
it shows against what the API answered. ``PLAYGROUND_SCREENSHOTS=docs/playground`` refreshes the screenshots in
the docs (one per panel).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.core.config import BUNDLED_MODEL_DIR
from tests.browser.conftest import API_KEY
from tests.browser.page import Playground, decode_png, request_body

pytestmark = pytest.mark.browser

ONE = [(0.52, 0.18), (0.48, 0.5), (0.45, 0.82)]  # a stroke like a "1", in fractions of the canvas
ZERO = [(0.5, 0.15), (0.75, 0.3), (0.75, 0.7), (0.5, 0.85), (0.25, 0.7), (0.25, 0.3), (0.5, 0.15)]
FPR = 0.01


def as_sources(images: list[str]) -> list[str]:
    return [f"data:image/png;base64,{image}" for image in images]


def test_samples_render_and_the_same_seed_gives_the_same_grid(page: Playground, screenshot_dir: Path) -> None:
    page.open("mnist")
    assert page.status("sample-panel") == "done", page.error("sample-panel")
    card = json.loads((BUNDLED_MODEL_DIR / "mnist" / "card.json").read_text())
    assert page.facts("card") == {
        "flow": "RealNVP",
        "data": "mnist5k (image 1×28×28)",
        "bits": f"{card['metrics']['test_bits_per_dim']:.3f}",
        "parameters": f"{card['num_parameters']:,}",
    }
    [call] = page.api_calls("/sample")
    assert request_body(call) == {"model": "mnist", "n": 36, "temperature": 0.7, "seed": 7, "format": "png"}
    first = page.image_sources("samples")
    assert first == as_sources(call["answer"]["images"]) and len(first) == 36
    page.screenshot("sample-panel", screenshot_dir / "sample.png")

    assert page.press("sample", "sample-panel") == "done"
    assert page.image_sources("samples") == first  # same seed, same grid
    page.set_value("seed", "8")
    assert page.press("sample", "sample-panel") == "done"
    assert page.image_sources("samples") != first
    page.set_value("seed", "7")
    page.find("temperature").send_keys("\ue014")  # arrow right: one slider step up
    assert page.find("temperature-value").text == "0.75"
    assert page.press("sample", "sample-panel") == "done"
    assert request_body(page.api_calls("/sample")[-1])["temperature"] == 0.75
    assert page.image_sources("samples") != first


def test_a_drawn_digit_gets_scored_with_its_explanation_map(
    page: Playground, service_url: str, screenshot_dir: Path
) -> None:
    page.open("mnist")
    page.draw("score-pad", ONE)
    assert page.press("score", "score-panel") == "done", page.error("score-panel")
    [call] = page.api_calls("/anomaly")
    body = request_body(call)
    assert {key: body[key] for key in ("model", "fpr", "explain")} == {"model": "mnist", "fpr": FPR, "explain": True}
    drawn = decode_png(body["images"][0])
    assert drawn.mode == "L" and drawn.size == (28, 28)  # the card's size and mode, as the API requires
    bright_rows, bright_columns = np.nonzero(np.asarray(drawn) > 128)
    assert bright_rows.max() - bright_rows.min() >= 14 and bright_columns.max() - bright_columns.min() <= 8

    answer = call["answer"]
    deciding = answer["score"]
    assert deciding == "combined"  # the image default
    facts = page.facts("score-result")
    assert facts["bits"] == f"{answer['scores']['nll']['values'][0]:.3f}"
    assert facts["score"].startswith(f"{answer['scores'][deciding]['values'][0]:.3f} (percentile")
    assert float(facts["p-value"]) == pytest.approx(answer["scores"][deciding]["p_value"][0], rel=5e-3)
    verdict = "anomaly" if answer["is_anomaly"][0] else "not flagged"
    assert facts["verdict"].startswith(f"{verdict} at FPR {FPR}")
    assert f"{answer['explanation_scale'][0]:.3f} nats per intensity unit" in facts["explanation"]
    # The page shows the API's own numbers: the same body sent straight to the API scores the same.
    direct = httpx.post(f"{service_url}/anomaly", json=body, timeout=60).json()
    assert direct["scores"] == answer["scores"] and direct["is_anomaly"] == answer["is_anomaly"]

    def red_pixels() -> int:
        view = np.asarray(page.canvas_pixels("score-view"))[..., :3].astype(int)
        return int((view[..., 0] - view[..., 1:].max(axis=-1) > 20).sum())

    # The map is overlaid in red (the drawing itself is gray): where it is non-zero, most of the 280x280 view.
    assert red_pixels() > 280 * 280 // 4
    page.find("show-map").click()
    assert red_pixels() == 0
    page.find("show-map").click()
    page.screenshot("score-panel", screenshot_dir / "score.png")


def test_interpolations_render(page: Playground, screenshot_dir: Path) -> None:
    page.open("mnist")
    page.draw("slot-a", ONE)
    page.draw("slot-b", ZERO)
    shown = {}
    for method in ("linear", "slerp"):
        page.choose("method", method)
        page.set_value("steps", "6")
        assert page.press("interpolate", "interpolate-panel") == "done", page.error("interpolate-panel")
        call = page.api_calls("/interpolate")[-1]
        body = request_body(call)
        assert (body["method"], body["steps"], len(body["images"]), body["format"]) == (method, 6, 2, "png")
        shown[method] = page.image_sources("frames")
        assert shown[method] == as_sources(call["answer"]["images"]) and len(shown[method]) == 6
        assert shown[method][0] != shown[method][-1]
    assert shown["linear"][1:-1] != shown["slerp"][1:-1]

    # The manifold grid over four samples put into the slots
    assert page.press("fill-slots", "interpolate-panel") == "done", page.error("interpolate-panel")
    fill = page.api_calls("/sample")[-1]
    assert request_body(fill)["n"] == 4
    page.choose("method", "manifold")
    page.set_value("steps", "5")
    assert page.press("interpolate", "interpolate-panel") == "done", page.error("interpolate-panel")
    call = page.api_calls("/interpolate")[-1]
    corners = fill["answer"]["images"]
    assert request_body(call)["images"] == corners  # the slots send the samples' bytes untouched
    grid = page.image_sources("frames")
    assert grid == as_sources(call["answer"]["images"]) and len(grid) == 25
    # Dinh et al. eq. 19 at phi, phi' in {0, pi/2}: the corners are the four encoded items, decoded back.
    for cell, corner in zip((0, 4, 20, 24), corners, strict=True):
        decoded = np.asarray(decode_png(call["answer"]["images"][cell])).astype(int)
        assert np.abs(decoded - np.asarray(decode_png(corner)).astype(int)).max() <= 1
    page.screenshot("interpolate-panel", screenshot_dir / "interpolate.png")


def test_a_bad_file_shows_the_api_error(page: Playground, service_url: str, tmp_path: Path) -> None:
    page.open("mnist")
    wrong_size = tmp_path / "photo.png"
    Image.new("L", (40, 30)).save(wrong_size)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"these are notes, not an image\n")
    for path in (wrong_size, not_an_image):
        page.upload("score-file", path)
        assert page.press("score", "score-panel") == "error"
        direct = httpx.post(
            f"{service_url}/anomaly",
            params={"explain": "true", "fpr": str(FPR)},
            data={"model": "mnist"},
            files={"files": (path.name, path.read_bytes(), "image/png")},
            timeout=60,
        )
        assert direct.status_code == 422
        # Pillow's message names an object address, different per request
        normalise = lambda text: re.sub(r"0x[0-9a-f]+", "0x…", text)  # noqa: E731
        assert normalise(page.error("score-panel")) == normalise(direct.json()["detail"])
        assert f"file {path.name!r}" in page.error("score-panel")
        assert page.facts("score-result") == {}
    # A file of the right size goes the same way and is scored.
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[5:23, 13:16] = 255
    good = tmp_path / "digit.png"
    Image.fromarray(digit).save(good)
    page.upload("score-file", good)
    assert page.press("score", "score-panel") == "done", page.error("score-panel")
    assert page.error("score-panel") == ""
    assert page.api_calls("/anomaly")[-1]["body"] is None  # sent as the multipart upload it is
    assert set(page.facts("score-result")) == {"bits", "score", "p-value", "verdict", "explanation"}


def test_a_vector_model_shows_samples_over_its_density(page: Playground, screenshot_dir: Path) -> None:
    page.open("moons")
    assert page.status("sample-panel") == "done", page.error("sample-panel")
    assert not page.find("score-panel").is_displayed()  # image panels are for image models
    [sample] = page.api_calls("/sample")
    assert request_body(sample) == {"model": "moons", "n": 256, "temperature": 1, "seed": 7, "format": "array"}
    grid = page.api_calls("/log-likelihood")
    inputs = [point for call in grid for point in request_body(call)["inputs"]]
    assert len(grid) == 8 and len(inputs) == 32 * 32
    samples = np.array(sample["answer"]["samples"])
    # the grid spans the samples, with a margin
    assert (np.array(inputs).min(axis=0) < samples.min(axis=0)).all()
    assert (np.array(inputs).max(axis=0) > samples.max(axis=0)).all()
    plot = np.asarray(page.canvas_pixels("density"))[..., :3].astype(int)
    yellow = (plot[..., 0] > 200) & (plot[..., 1] > 190) & (plot[..., 2] < 90)  # the top of the colour ramp
    purple = (plot[..., 0] < 90) & (plot[..., 1] < 40) & (plot[..., 2] > 60)  # the bottom
    dots = (plot > 235).all(axis=-1)
    assert yellow.sum() > 500 and purple.sum() > 500 and dots.sum() > 300

    # A click scores the point under it.
    page.driver.execute_script("delete arguments[0].dataset.status", page.find("sample-panel"))
    page.click_at("density", 0.55, 0.5)
    assert page.wait_for("sample-panel") == "done", page.error("sample-panel")
    [call] = page.api_calls("/anomaly")
    [point] = request_body(call)["inputs"]
    assert len(point) == 2
    answer = call["answer"]
    facts = page.facts("point-result")
    assert facts["point"] == f"({point[0]:.3f}, {point[1]:.3f})"
    assert facts["bits"] == f"{answer['scores']['nll']['values'][0]:.3f}"
    assert facts["verdict"].startswith(("anomaly", "not flagged")) and f"FPR {answer['fpr']}" in facts["verdict"]
    page.screenshot("sample-panel", screenshot_dir / "density.png")


def test_a_one_dimensional_model_shows_its_density_curve(page: Playground) -> None:
    page.open("bimodal")
    assert page.status("sample-panel") == "done", page.error("sample-panel")
    assert sum(len(request_body(call)["inputs"]) for call in page.api_calls("/log-likelihood")) == 160
    plot = np.asarray(page.canvas_pixels("density"))[..., :3].astype(int)
    assert ((plot < 200).any(axis=-1)).sum() > 2000  # the filled curve, not a blank plot


def test_with_an_api_key_the_page_asks_for_it_once(page: Playground, keyed_service_url: str) -> None:
    keyed = Playground(page.driver, keyed_service_url)
    keyed.open(wait_for_samples=False)
    try:
        keyed.wait_until(lambda: keyed.find("key-form").is_displayed())
        assert keyed.find("key-reason").text == "expected header 'Authorization: Bearer <API_KEY>', got no bearer token"
        keyed.enter_key("not-the-key")
        # the form comes back with the API's words for a wrong key
        keyed.wait_until(lambda: keyed.find("key-reason").text.endswith("got another key"))
        assert keyed.find("key-form").is_displayed()
        keyed.enter_key(API_KEY)
        assert keyed.wait_for("sample-panel") == "done", keyed.error("sample-panel")
        assert not keyed.find("key-form").is_displayed()
        assert keyed.facts("card")["flow"] == "NVPNet"
        for call in keyed.api_calls("/sample") + keyed.api_calls("/log-likelihood"):
            assert call["headers"]["Authorization"] == f"Bearer {API_KEY}" and call["status"] == 200
        assert API_KEY not in keyed.driver.page_source
        # once: a reload in the same tab keeps the key
        keyed.open()
        assert keyed.status("sample-panel") == "done" and not keyed.find("key-form").is_displayed()
    finally:
        keyed.driver.execute_script("sessionStorage.clear()")


def test_the_browser_enforces_the_content_security_policy(page: Playground) -> None:
    page.open("moons")
    page.driver.execute_script(
        "const script = document.createElement('script');"
        "script.textContent = 'window.inlineRan = true';"
        "document.body.append(script);"
    )
    assert page.driver.execute_script("return window.inlineRan === undefined")
    violations = [entry["message"] for entry in page.driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert len(violations) == 1 and "Content Security Policy" in violations[0]
