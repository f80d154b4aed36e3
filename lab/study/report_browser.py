"""The report in a real browser (headless Chromium, Debian's `chromium` package): a check
that every table and image of report.html renders offline with no broken image, and a
screenshot (for docs/). Chromium runs with a throw-away profile and no network services."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from fedcmr.common.atomic import atomic_path, write_text

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--hide-scrollbars", "--run-all-compositor-stages-before-draw")
RESULT_ID = "fedcmr-browser-check"

#: Injected before </body>: on load, counts tables and images, lists broken images and any
#: resource that is not inlined, and writes the result as JSON into the DOM.
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var linked = Array.prototype.slice.call(document.querySelectorAll('[src], link[href]'))
    .map(function (e) { return e.getAttribute('src') || e.getAttribute('href'); })
    .filter(function (u) { return u.indexOf('data:') !== 0; });
  var result = {
    tables: document.querySelectorAll('table').length,
    captions: Array.prototype.map.call(document.querySelectorAll('table caption'),
                                       function (c) { return c.textContent; }),
    images: images.length,
    loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; })
                  .map(function (i) { return [i.alt, i.naturalWidth, i.naturalHeight]; }),
    broken: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                  .map(function (i) { return i.alt; }),
    external: linked
  };
  var out = document.createElement('pre');
  out.id = 'RESULT_ID';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>""".replace("RESULT_ID", RESULT_ID)


class BrowserError(RuntimeError):
    """Chromium is missing or did not render the page."""


def chromium() -> Path | None:
    """The Chromium binary, or None where it is not installed."""
    if CHROMIUM.exists():
        return CHROMIUM
    found = shutil.which("chromium")
    return Path(found) if found else None


def _run(args: list[str], profile: Path, timeout: float) -> str:
    binary = chromium()
    if binary is None:
        raise BrowserError(f"no Chromium at {CHROMIUM}. Fix: apt-get install -y chromium")
    command = [str(binary), *FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise BrowserError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def check_page(page: Path, timeout: float = 120) -> dict:
    """Render a copy of `page` (the original is untouched) with CHECK_SCRIPT and return its
    result: {"tables", "captions", "images", "loaded", "broken", "external"}."""
    with tempfile.TemporaryDirectory(prefix="fedcmr-browser-") as tmp:
        copy = Path(tmp) / "page.html"
        text = Path(page).read_text(encoding="utf-8")
        if "</body>" not in text:
            raise BrowserError(f"{page}: no </body>; not an HTML page")
        write_text(copy, text.replace("</body>", CHECK_SCRIPT + "</body>", 1))
        dom = _run(["--virtual-time-budget=10000", "--dump-dom", copy.as_uri()],
                   Path(tmp) / "profile", timeout)
    found = re.search(rf'<pre id="{RESULT_ID}">(.*?)</pre>', dom, re.S)
    if found is None:
        raise BrowserError(f"{page}: the check script left no result in the rendered page "
                           f"(DOM of {len(dom)} characters)")
    return json.loads(html.unescape(found.group(1)))


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 2400,
               timeout: float = 120) -> Path:
    """A PNG of the rendered page's top `height` pixels at `width` (for docs/)."""
    with tempfile.TemporaryDirectory(prefix="fedcmr-browser-") as tmp, \
            atomic_path(Path(png), suffix=".png") as target:
        _run([f"--screenshot={target}", f"--window-size={width},{height}",
              "--virtual-time-budget=10000", Path(page).resolve().as_uri()],
             Path(tmp) / "profile", timeout)
        if not target.exists():
            raise BrowserError(f"chromium wrote no screenshot for {page}")
    return Path(png)
