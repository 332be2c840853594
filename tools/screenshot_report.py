#!/usr/bin/env python3
"""Render a verification page (``report.html``) in headless Chromium: PNG screenshots and a layout check.

    python tools/screenshot_report.py demo_out/report.html --out-dir /tmp/shots
    python tools/screenshot_report.py report.html --widths 1400 600 --json layout.json

For each width (default 1400 and 600 CSS px) it writes ``<name>_<width>.png`` (the whole page) and
measures the laid-out page through the DOM (``--dump-dom`` of a copy of the page with a small
measuring script added): the viewport width, the page's scroll width and height, every table's right
edge and whether it sits in (and fits) a horizontally scrolling box, every image's right edge. It
exits with 1 when the page is wider than the viewport (something is clipped or forces sideways
scrolling), a table or image sticks out of the viewport, or a table is wider than its scrolling box
(part of it hidden); 2 without Chromium.

Chromium is found as ``$LNM_CHROMIUM``, else ``chromium``, ``chromium-browser``, ``google-chrome``
or ``google-chrome-stable`` on ``PATH`` (Debian: ``apt-get install chromium``). It is a tool for
people and for ``tests/test_report.py`` (which skips without Chromium), not a dependency of the
package. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DEFAULT_WIDTHS = (1400, 600)
TIMEOUT_S = 120
#: Flags for a headless run in a container or CI (no sandbox user namespaces, no GPU).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio")

#: Added before ``</body>``: once the page (and its images) has loaded, write the measurements into
#: an attribute of ``<html>``, which ``--dump-dom`` prints.
MEASURE_JS = """
<script>
window.addEventListener('load', function () {
  var vw = window.innerWidth, doc = document.documentElement;
  function box(el) {
    for (var p = el.parentElement; p; p = p.parentElement) {
      var ox = getComputedStyle(p).overflowX;
      if (ox === 'auto' || ox === 'scroll') return p;
    }
    return null;
  }
  var tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t, i) {
    var r = t.getBoundingClientRect(), b = box(t), br = b ? b.getBoundingClientRect() : null;
    return {index: i, right: r.right, width: r.width, in_scroll_box: !!b,
            box_right: br ? br.right : null, scrolls: b ? b.scrollWidth > b.clientWidth + 0.5 : false};
  });
  var images = Array.prototype.map.call(document.querySelectorAll('img'), function (im) {
    var r = im.getBoundingClientRect();
    return {alt: im.alt, right: r.right, width: r.width, height: r.height, natural_width: im.naturalWidth,
            loaded: im.complete && im.naturalWidth > 0};
  });
  doc.setAttribute('data-layout', JSON.stringify({
    viewport_width: vw, scroll_width: doc.scrollWidth, scroll_height: doc.scrollHeight,
    tables: tables, images: images}));
});
</script>
"""


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: ``$LNM_CHROMIUM`` or the first candidate on PATH."""
    env = os.environ.get("LNM_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(chromium: str, args: list[str], profile: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)


def measure(html_path: str | os.PathLike[str], width: int, chromium: str, height: int = 900) -> dict[str, Any]:
    """Lay the page out at ``width`` CSS px and return the measurements (see ``MEASURE_JS``).

    Raises ``RuntimeError`` when Chromium prints no measured DOM."""
    page = Path(html_path).read_text(encoding="utf-8")
    at = page.rfind("</body>")
    page = page[:at] + MEASURE_JS + page[at:] if at >= 0 else page + MEASURE_JS
    with tempfile.TemporaryDirectory(prefix="lnm-shot-") as tmp:
        copy = Path(tmp) / "page.html"
        copy.write_text(page, encoding="utf-8")
        proc = _run(chromium, [f"--window-size={width},{height}", "--virtual-time-budget=10000",
                               "--dump-dom", copy.as_uri()], str(Path(tmp) / "profile"))
    marker = 'data-layout="'
    start = proc.stdout.find(marker)
    if start < 0:
        raise RuntimeError(f"Chromium printed no measured page (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-500:]}")
    end = proc.stdout.find('"', start + len(marker))
    import html as _html

    return dict(json.loads(_html.unescape(proc.stdout[start + len(marker):end])))


def problems(layout: dict[str, Any]) -> list[str]:
    """What is wrong with a measured layout: the page wider than the viewport, a table or image
    sticking out of the viewport (or a table wider than its scrolling box, so that part of it is
    hidden), an image that did not load."""
    vw = float(layout["viewport_width"])
    out = []
    if layout["scroll_width"] > vw + 0.5:
        out.append(f"the page is {layout['scroll_width']} px wide in a {vw:.0f} px viewport")
    for t in layout["tables"]:
        if t["right"] > vw + 0.5 and not t["in_scroll_box"]:
            out.append(f"table {t['index']} ends at {t['right']:.0f} px, past the {vw:.0f} px viewport, "
                       "with no scrolling box")
        if t["in_scroll_box"] and t["box_right"] is not None and t["box_right"] > vw + 0.5:
            out.append(f"the scrolling box of table {t['index']} ends at {t['box_right']:.0f} px")
        if t["scrolls"]:
            out.append(f"table {t['index']} ({t['width']:.0f} px) is wider than its box: part of it is "
                       "hidden until scrolled")
    for im in layout["images"]:
        if not im["loaded"]:
            out.append(f"image '{im['alt']}' did not load")
        elif im["right"] > vw + 0.5:
            out.append(f"image '{im['alt']}' ends at {im['right']:.0f} px, past the {vw:.0f} px viewport")
    return out


def screenshot(html_path: str | os.PathLike[str], width: int, out_png: str | os.PathLike[str], chromium: str,
               height: int) -> Path:
    """A PNG of the page at ``width`` CSS px, ``height`` px tall (pass the measured scroll height)."""
    out = Path(out_png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lnm-shot-") as tmp:
        proc = _run(chromium, [f"--window-size={width},{height}", "--virtual-time-budget=10000",
                               f"--screenshot={out}", Path(html_path).resolve().as_uri()],
                    str(Path(tmp) / "profile"))
    if not out.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return out


def check_report(html_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 widths: tuple[int, ...] = DEFAULT_WIDTHS, chromium: str | None = None,
                 shots: bool = True) -> dict[int, dict[str, Any]]:
    """Measure (and with ``shots`` screenshot) the page at each width: ``{width: {"layout": ...,
    "problems": [...], "png": path or None}}``. Raises ``FileNotFoundError`` without Chromium."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (set LNM_CHROMIUM or install chromium)")
    stem = Path(html_path).stem
    res: dict[int, dict[str, Any]] = {}
    for w in widths:
        layout = measure(html_path, w, chromium)
        png = None
        if shots:
            # The window is taller than the viewport by the browser's own frame: add a margin.
            png = str(screenshot(html_path, w, Path(out_dir) / f"{stem}_{w}.png", chromium,
                                 int(layout["scroll_height"]) + 200))
        res[w] = {"layout": layout, "problems": problems(layout), "png": png}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", help="the report page (report.html)")
    ap.add_argument("--out-dir", default=".", help="where the PNGs go (default: here)")
    ap.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS), help="CSS px (default 1400 600)")
    ap.add_argument("--json", default=None, help="also write the measurements as JSON")
    ap.add_argument("--no-screenshots", action="store_true", help="only measure the layout")
    args = ap.parse_args(argv)
    try:
        res = check_report(args.html, args.out_dir, tuple(args.widths), shots=not args.no_screenshots)
    except FileNotFoundError as e:
        print(f"screenshot_report: {e}", file=sys.stderr)
        return 2
    bad = False
    for w, r in res.items():
        lay = r["layout"]
        print(f"{w} px: page {lay['scroll_width']} x {lay['scroll_height']} px, {len(lay['tables'])} tables, "
              f"{len(lay['images'])} images" + (f" -> {r['png']}" if r["png"] else ""))
        for p in r["problems"]:
            bad = True
            print(f"  PROBLEM: {p}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
