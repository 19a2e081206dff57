"""Load a page in headless Chromium (Debian's `chromium`, no browser download) and report what a user would see.

Speaks the DevTools protocol over `--remote-debugging-pipe` (NUL-separated JSON on file descriptors 3 and 4), so
it needs no websocket library: open the page, collect console errors, uncaught exceptions and failed loads,
and measure every inline SVG once the page has loaded.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Each inline SVG: its box, whether it is displayed, whether the point at its centre belongs to it (nothing covers
# it), and how many drawn elements it holds.
MEASURE_SVGS = """JSON.stringify([...document.querySelectorAll('figure svg')].map(svg => {
  svg.scrollIntoView({block: 'center'});
  const box = svg.getBoundingClientRect(), style = getComputedStyle(svg);
  const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
  return {width: box.width, height: box.height, displayed: style.display !== 'none' &&
          style.visibility !== 'hidden' && Number(style.opacity) > 0, on_top: !!hit && svg.contains(hit),
          marks: svg.querySelectorAll('path, use, text').length};
}))"""


@dataclass
class PageReport:
    errors: list[str] = field(default_factory=list)
    svgs: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""


class _DevTools:
    def __init__(self, process: subprocess.Popen[bytes], to_browser: int, from_browser: int):
        self.process = process
        self.to_browser = os.fdopen(to_browser, "wb", buffering=0)
        self.from_browser = os.fdopen(from_browser, "rb", buffering=0)
        self.next_id = 0
        self.replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := self.from_browser.read(65536):
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message and message["id"] in self.replies:
                    self.replies[message["id"]].put(message)
                else:
                    self.events.put(message)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        self.next_id += 1
        box: queue.Queue[dict[str, Any]] = queue.Queue()
        self.replies[self.next_id] = box
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.to_browser.write(json.dumps(message).encode() + b"\0")
        reply = box.get(timeout=timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result") or {})


def render(url: str, timeout: float = 60, screenshot: Path | None = None) -> PageReport:
    """Open `url` in headless Chromium; returns the console errors and the measured inline SVGs (and writes a
    full-page PNG to `screenshot`, for a look when a test fails)."""
    if CHROMIUM is None:
        raise FileNotFoundError("chromium is not installed")
    profile = tempfile.mkdtemp(prefix="chromium-")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def wire() -> None:  # the browser reads commands on fd 3 and writes replies on fd 4
        os.dup2(to_browser_r, 3)
        os.dup2(from_browser_w, 4)

    process = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1280,2000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=wire,
        pass_fds=(3, 4),  # kept open through the close of inherited descriptors, which runs after `wire`
    )
    os.close(to_browser_r)
    os.close(from_browser_w)
    tools = _DevTools(process, to_browser_w, from_browser_r)
    report = PageReport()
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + timeout
        loaded = False
        while time.monotonic() < deadline and not loaded:
            try:
                event = tools.events.get(timeout=1)
            except queue.Empty:
                continue
            loaded = _note(event, report)
        if not loaded:
            report.errors.append(f"the page did not finish loading within {timeout:.0f} s")
        time.sleep(0.3)  # late console messages
        while not tools.events.empty():
            _note(tools.events.get(), report)
        value = tools.send("Runtime.evaluate", {"expression": MEASURE_SVGS, "returnByValue": True},
                           session=session)["result"]["value"]
        report.svgs = json.loads(value)
        if screenshot is not None:
            shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                              session=session)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        report.title = tools.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                                  session=session)["result"]["value"]
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return report


def _note(event: dict[str, Any], report: PageReport) -> bool:
    """Record an error event; True once the page's load event fired."""
    method, params = event.get("method"), event.get("params") or {}
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        report.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
    elif method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails") or {}
        report.errors.append("exception: " + str((details.get("exception") or {}).get("description") or details))
    elif method == "Log.entryAdded" and (params.get("entry") or {}).get("level") == "error":
        report.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url') or ''}".strip())
    elif method == "Network.loadingFailed":
        report.errors.append("failed load: " + str(params.get("errorText")))
    return method == "Page.loadEventFired"
