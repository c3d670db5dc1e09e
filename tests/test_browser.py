"""The built leaderboard in real headless Chromium: tables render, sorting works, no console errors.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so no network port, websocket library
or browser download is needed. Debian's ``chromium`` is used. Installing it is an explicit set-up
step, ``make browser`` (run by ``.ci/run``); where it is missing the tests skip with a message naming
that command, except under CI, where they fail.
A screenshot of the page is saved (its path is printed; set ``CELLBENCH_SCREENSHOT_DIR`` to keep a
copy).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cellbench.leaderboard import build_leaderboard
from tests.test_leaderboard import EVIL, demo_submissions, verified_report

pytestmark = pytest.mark.slow

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--remote-debugging-pipe",
)


def _works(exe: str) -> bool:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def find_chromium() -> str | None:
    for name in CANDIDATES:
        exe = shutil.which(name)
        if exe and _works(exe):
            return exe
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable. Installing it is a set-up step (`make browser`), never done here.

    Missing: the tests skip with the install command, except under CI (``CI`` set), where
    ``.ci/run`` installs it first and a missing browser is a failure.
    """
    exe = find_chromium()
    if exe is None:
        message = (
            "no headless Chromium: `make browser` installs Debian's chromium "
            "(apt-get install -y --no-install-recommends chromium, as root)"
        )
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run should have done so")
        pytest.skip(message)
    return exe


class Browser:
    """A headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, exe: str, profile: Path):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # park the child's ends above 10 so that moving them onto 3 and 4 cannot clobber them
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire() -> None:  # in the child: Chromium reads fd 3 and writes fd 4
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire,
            pass_fds=(3, 4, hi_r, hi_w),
        )
        os.close(hi_r)
        os.close(hi_w)
        self._next = 0
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self.events: queue.Queue[dict] = queue.Queue()
        self.log: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=self.session)

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self.log.append(msg)
                    self.events.put(msg)

    def call(
        self, method: str, params: dict | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 60
        with self._cond:
            while self._next not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no reply to {method} from Chromium")
                self._cond.wait(left)
            reply = self._replies.pop(self._next)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, url: str) -> None:
        while not self.events.empty():
            self.events.get_nowait()
        self.call("Page.navigate", {"url": url}, session=self.session)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=1)
            except queue.Empty:
                continue
            if ev.get("method") == "Page.loadEventFired":
                return
        raise RuntimeError(f"{url} did not load")

    def js(self, expression: str) -> Any:
        res = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path, width: int = 1400) -> None:
        height = int(self.js("document.documentElement.scrollHeight"))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": min(height, 6000), "deviceScaleFactor": 1, "mobile": False},
            session=self.session,
        )
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=self.session)
        path.write_bytes(base64.b64decode(data["data"]))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (CSP violations included)."""
        out = []
        for ev in self.log:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(params.get("exceptionDetails", {}))[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(json.dumps(params.get("args", []))[:300])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(params["entry"].get("text", "")[:300])
        return out

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


@pytest.fixture(scope="module")
def page(chromium: str, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("browser")
    site = root / "site"
    subs = demo_submissions(root)
    names = ["2026-01-15_toy-model", "2026-01-16_evil", "2026-01-17_identity"]
    report = verified_report(subs, names, root / "verified.json")  # only verified rows are ranked
    build_leaderboard(subs, site, stamp="browser test", verified=[report])
    browser = Browser(chromium, root / "profile")
    try:
        yield browser, site
    finally:
        browser.close()


# the entry rows of the first (current, ranked) table, and one column's data-sort values
ROWS_JS = """(() => {
  const t = document.querySelector('table.ranked');
  const th = Array.from(t.tHead.rows[t.tHead.rows.length - 1].cells);
  const i = th.findIndex(h => h.dataset.key === '%s');
  const rows = Array.from(t.tBodies[1].rows);
  return {ids: rows.map(r => r.dataset.entry), vals: rows.map(r => r.cells[i].dataset.sort),
          sort: th[i].getAttribute('aria-sort')};
})()"""
CLICK_JS = """document.querySelector('table.ranked thead th[data-key="%s"] button').click()"""


def test_page_renders_sorts_and_logs_no_error(page, tmp_path: Path) -> None:
    browser, site = page
    browser.open((site / "index.html").as_uri())
    counts = browser.js(
        "Array.from(document.querySelectorAll('table.sortable')).map(t => t.querySelectorAll('tbody tr').length)"
    )
    assert counts == [4, 2, 5, 3]  # current (reference + 3), stale (reference + 1), 2 reported
    assert browser.js("document.querySelector('svg circle') !== null") is True
    before = browser.js(ROWS_JS % "overall")
    assert [float(v) for v in before["vals"]] == sorted(
        (float(v) for v in before["vals"]), reverse=True
    )

    browser.js(CLICK_JS % "fid_o")
    asc = browser.js(ROWS_JS % "fid_o")
    assert asc["sort"] == "ascending"
    assert [float(v) for v in asc["vals"]] == [25.0, 40.0, 60.0]
    assert asc["ids"] == ["2026-01-16_evil", "2026-01-15_toy-model", "2026-01-17_identity"]
    browser.js(CLICK_JS % "fid_o")
    desc = browser.js(ROWS_JS % "fid_o")
    assert desc["sort"] == "descending" and desc["ids"] == asc["ids"][::-1]
    # the reference row stays pinned above the entries whatever the order
    assert browser.js(
        "document.querySelector('table.ranked').tBodies[0].rows[0].textContent.includes('real reference')"
    )
    # a text column sorts too
    browser.js(
        "document.querySelector('table.ranked thead tr:last-child th:nth-child(2) button').click()"
    )
    names = browser.js(
        "Array.from(document.querySelector('table.ranked').tBodies[1].rows).map(r => r.cells[1].dataset.sort)"
    )
    assert names == sorted(names, key=lambda s: s.lower()) or names == sorted(names)

    shot = tmp_path / "leaderboard.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep = os.environ.get("CELLBENCH_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(keep) / "leaderboard.png")
    print(f"screenshot: {shot}")
    assert browser.errors() == []


def test_html_in_a_model_name_is_shown_as_text(page) -> None:
    browser, site = page
    for url in [
        (site / "index.html").as_uri(),
        (site / "entries" / "2026-01-16_evil.html").as_uri(),
    ]:
        browser.open(url)
        assert browser.js("typeof window.__xss") == "undefined"
        assert browser.js("document.title") != "pwned"
        assert browser.js("document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert browser.js(f"document.body.innerText.includes({json.dumps(EVIL)})") is True
    assert browser.errors() == []


def test_detail_page_shows_its_grid(page) -> None:
    browser, site = page
    browser.open((site / "entries" / "2026-01-15_toy-model.html").as_uri())
    assert browser.js("document.querySelector('img.grid-image').naturalWidth") == 1
    assert browser.js("document.querySelectorAll('table').length") >= 5
    assert browser.errors() == []
