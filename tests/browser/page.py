"""The playground page as a test sees it: open it, press its buttons, draw on it, read what it shows.

Selenium is imported here only when installed (the ``browser`` extra), so that the default suite, which skips
these tests, collects without it.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

try:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # the fixtures skip (or fail, in CI) before any of this is used
    pass

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

WAIT_S = 90.0  # explanation maps on the bundled mnist take seconds on a busy 2-core machine
# Installed before the page's own scripts run (DevTools, so the page's CSP does not apply): every fetch the page
# makes, with its JSON body and answer, so tests can check that the page shows what the API said.
RECORD_API_CALLS = """
window.apiCalls = [];
const originalFetch = window.fetch;
window.fetch = async (input, init = {}) => {
  const call = { url: String(input), method: init.method || "GET", headers: init.headers || {},
                 body: typeof init.body === "string" ? init.body : null };
  const response = await originalFetch(input, init);
  call.status = response.status;
  call.answer = await response.clone().json().catch(() => null);
  window.apiCalls.push(call);
  return response;
};
"""


class Playground:
    """One browser tab on the playground page of one running service."""

    def __init__(self, driver: WebDriver, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    def open(self, model: str | None = None, wait_for_samples: bool = True) -> None:
        """Load the page (optionally ``?model=``) and wait until its first samples are drawn (or refused)."""
        self.driver.get(self.base_url + "/" + (f"?model={model}" if model else ""))
        if wait_for_samples:
            self.wait_for("sample-panel")

    def find(self, element_id: str) -> WebElement:
        return self.driver.find_element(By.ID, element_id)

    def status(self, panel: str) -> str | None:
        return self.find(panel).get_attribute("data-status")

    def wait_for(self, panel: str) -> str:
        """Wait until ``panel`` has finished its action; return ``done`` or ``error``."""
        WebDriverWait(self.driver, WAIT_S).until(lambda _: self.status(panel) in ("done", "error"))
        return self.status(panel) or ""

    def wait_until(self, condition: Callable[[], bool]) -> None:
        WebDriverWait(self.driver, WAIT_S).until(lambda _: condition())

    def enter_key(self, key: str) -> None:
        """Type an API key into the page's key form and submit it."""
        self.set_value("key", key)
        self.driver.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()

    def press(self, button: str, panel: str) -> str:
        """Press ``button`` of ``panel`` and wait for the answer to be shown; ``done`` or ``error``."""
        self.driver.execute_script("delete arguments[0].dataset.status", self.find(panel))
        self.find(button).click()
        return self.wait_for(panel)

    def set_value(self, element_id: str, value: str) -> None:
        element = self.find(element_id)
        element.clear()
        element.send_keys(value)

    def choose(self, select_id: str, value: str) -> None:
        Select(self.find(select_id)).select_by_value(value)

    def draw(self, canvas_id: str, points: Sequence[tuple[float, float]]) -> None:
        """Draw one stroke through ``points``, given as fractions of the canvas (0, 0 top left; 1, 1 bottom right)."""
        canvas = self.find(canvas_id)
        size = canvas.size
        # Selenium 4 offsets are from the element's centre.
        offsets = [(round((x - 0.5) * size["width"]), round((y - 0.5) * size["height"])) for x, y in points]
        actions = ActionChains(self.driver).move_to_element_with_offset(canvas, *offsets[0]).click_and_hold()
        for (x0, y0), (x1, y1) in itertools.pairwise(offsets):
            for step in range(1, 5):  # several moves per segment, as a hand makes
                actions.move_to_element_with_offset(canvas, x0 + (x1 - x0) * step // 4, y0 + (y1 - y0) * step // 4)
        actions.release().perform()

    def click_at(self, canvas_id: str, x: float, y: float) -> None:
        canvas = self.find(canvas_id)
        size = canvas.size
        offset = (round((x - 0.5) * size["width"]), round((y - 0.5) * size["height"]))
        ActionChains(self.driver).move_to_element_with_offset(canvas, *offset).click().perform()

    def upload(self, input_id: str, path: Path) -> None:
        self.find(input_id).send_keys(str(path))
        time.sleep(0.2)  # the pad reads the file asynchronously (a few ms)

    def error(self, panel: str) -> str:
        """The error text ``panel`` shows ("" when none)."""
        element = self.find(panel).find_element(By.CSS_SELECTOR, ".error")
        return element.text if element.is_displayed() else ""

    def facts(self, list_id: str) -> dict[str, str]:
        """The ``<dd data-fact=...>`` values of a fact list, by key."""
        items = self.find(list_id).find_elements(By.CSS_SELECTOR, "dd")
        return {item.get_attribute("data-fact"): item.text for item in items}

    def image_sources(self, container_id: str) -> list[str]:
        return [image.get_attribute("src") for image in self.find(container_id).find_elements(By.TAG_NAME, "img")]

    def api_calls(self, path: str) -> list[dict[str, Any]]:
        """The page's calls to ``path`` (query string ignored) since it was loaded, oldest first."""
        calls = self.driver.execute_script("return window.apiCalls || []")
        return [call for call in calls if call["url"].split("?")[0].rstrip("/").endswith(path)]

    def canvas_pixels(self, canvas_id: str) -> Image.Image:
        """What a canvas shows, as an RGBA image."""
        data_url = self.driver.execute_script("return arguments[0].toDataURL('image/png')", self.find(canvas_id))
        return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGBA")

    def screenshot(self, element_id: str, path: Path) -> None:
        """Save a screenshot of one element as a small palette PNG (docs/playground/)."""
        self.driver.execute_script("arguments[0].scrollIntoView()", self.find(element_id))
        shot = Image.open(io.BytesIO(self.find(element_id).screenshot_as_png)).convert("RGB")
        path.parent.mkdir(parents=True, exist_ok=True)
        shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def request_body(call: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a recorded call."""
    assert call["body"] is not None, f"{call['url']} was not sent as JSON"
    return json.loads(call["body"])


def decode_png(base64_png: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(base64_png)))
