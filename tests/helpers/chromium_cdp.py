"""Headless Chromium driven over the DevTools protocol on a pipe: real clicks, no port, no extra package.

With ``--remote-debugging-pipe`` Chromium reads protocol messages on its file descriptor 3 and
writes them on 4, each a JSON object followed by a NUL byte. Nothing listens on the network.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


class BrowserError(RuntimeError):
    """The browser answered with an error, went away, or a page never reached the expected state."""


class Chromium:
    """One headless browser with one page. Use as a context manager; it is killed on exit."""

    def __init__(self, executable: str, flags: list[str]):
        self._profile = tempfile.TemporaryDirectory()
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()
        # Above the descriptors the child is given, so that moving them to 3 and 4 clobbers nothing.
        high_in, high_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome, from_chrome))
        os.close(to_chrome)
        os.close(from_chrome)

        def give_pipe() -> None:
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        try:
            self.proc = subprocess.Popen(
                [executable, *flags, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(3, 4), preexec_fn=give_pipe)
        except OSError:
            for fd in (self._write, self._read):
                os.close(fd)
            self._profile.cleanup()
            raise
        finally:
            os.close(high_in)
            os.close(high_out)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    def __enter__(self) -> "Chromium":
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                targets = self.send("Target.getTargets", browser=True)["targetInfos"]
                if pages := [t for t in targets if t["type"] == "page"]:
                    break
                time.sleep(0.2)
            else:
                raise BrowserError("Chromium opened no page")
            self._session = self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True},
                                      browser=True)["sessionId"]
            self.send("Page.enable")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.send("Browser.close", browser=True, timeout=5)
        except BrowserError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)
        self._profile.cleanup()

    def send(self, method: str, params: dict | None = None, *, browser: bool = False, timeout: float = 30) -> dict:
        """Send one command (to the page, or with ``browser`` to the browser) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser:
            message["sessionId"] = self._session
        try:
            os.write(self._write, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise BrowserError(f"{method}: Chromium exited (code {self.proc.poll()})") from None
        deadline = time.time() + timeout
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == self._next_id:  # anything else is an event, not needed here
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def _receive(self, deadline: float, method: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.time()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise BrowserError(f"{method}: no answer from Chromium")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise BrowserError(f"{method}: Chromium exited (code {self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values only)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"script failed: {details.get('exception', {}).get('description') or details['text']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what}")

    def mouse(self, x: float, y: float, *, click: bool) -> None:
        """Move the mouse to viewport point (x, y), and press and release the left button there if ``click``.

        These are input events as a user's, not a script's ``element.click()``: the page sees them
        only where its layout really puts something under the pointer.
        """
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        if click:
            for kind in ("mousePressed", "mouseReleased"):
                self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"}, timeout=60)["data"]
        Path(path).write_bytes(base64.b64decode(data))
