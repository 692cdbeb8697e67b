"""Headless Debian chromium driven over the DevTools protocol (CDP), for the dashboard test.

No browser download: the system ``chromium`` (``scripts/bootstrap.sh --chromium``) is started
with ``--remote-debugging-port=0`` and one page is driven over its WebSocket with the
``websockets`` client. Calls block: run them off the reactor thread (``deferToThread``).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

#: Seconds any one wait for the page may take.
WAIT = 10.0
#: Seconds chromium may take to start and open its DevTools port.
STARTUP_WAIT = 60.0


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless chromium process with one page."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900) -> None:
        executable = chromium_path()
        if executable is None:
            raise RuntimeError("chromium is not installed (bash scripts/bootstrap.sh --chromium)")
        self._command = [
            executable,
            "--headless=new",
            "--no-sandbox",  # tests run as root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        self.process = self._start()
        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()
        self.console: list[str] = []
        try:
            port = self._devtools_port()
            if port == 0:  # it died at start (seen once in CI, as a lone crash): once more
                self.process = self._start()
                port = self._devtools_port()
            if port == 0:
                raise RuntimeError(f"chromium did not open its DevTools port: {self._said}")
            self.page = self._connect_page(port)
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def _devtools_port(self) -> int:
        """The DevTools port chromium opened; 0 if it exited first (``_said`` says why)."""
        assert self.process.stderr is not None
        # A first start on a fresh machine (font caches, a new profile) can take far longer
        # than a page load: a generous bound, and chromium's own words if it is passed.
        deadline = time.monotonic() + STARTUP_WAIT
        said: list[str] = []
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                break
            said.append(line.rstrip())
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:
                return int(found.group(1))
        code = self.process.poll()
        self._said = f"exit code {code}; it said: " + " | ".join(said[-10:])
        if code is not None:
            return 0
        raise RuntimeError(f"chromium did not open its DevTools port: {self._said}")

    def _connect_page(self, port: int) -> ClientConnection:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=WAIT) as answer:
            targets = json.load(answer)
        page = next(target for target in targets if target["type"] == "page")
        websocket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=WAIT)
        return self._stack.enter_context(websocket)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result (events met meanwhile are noted)."""
        call_id = next(self._ids)
        self.page.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + WAIT
        while True:
            message = json.loads(self.page.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if message.get("method") == "Runtime.exceptionThrown":
                self.console.append(json.dumps(message["params"]["exceptionDetails"])[:500])

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, what: str, timeout: float = WAIT) -> Any:
        """Evaluate ``expression`` until it is truthy; fail naming ``what`` otherwise."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.05)
        body = self.evaluate("document.body ? document.body.innerText : ''")
        raise AssertionError(f"timed out waiting for {what}; the page says:\n{body[:2000]}")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)
            if self.process.stderr is not None:
                self.process.stderr.close()
