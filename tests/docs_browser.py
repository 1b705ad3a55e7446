"""Open every page of every built site in headless Chromium, offline, and report what a reader would see broken.

Run by ``nox -s docs_browser`` (which builds the sites first) as ``python tests/docs_browser.py SITE_ROOT``,
where ``SITE_ROOT`` holds one folder per site (``paperpack/``, ``paperpack-core/``, ``paperpack-sewa/``, ...),
as ``nox -s docs`` lays them out, so that links between sites resolve.

Checked on each page:

- math: no TeX delimiter (``\\(``, ``\\[``, ``$$``) left in the text outside code, no ``arithmatex`` element left
  for a script to render, every ``<math>`` element laid out with a size and holding no raw ``\\command``;
- links: every link, image, script and stylesheet inside the sites points to a file that exists, and every
  ``#anchor`` to an element of that page (checked on the files, without the browser);
- scripts: no error in the browser's console, and no request leaving the machine (every host but the local
  server is unreachable, so a page that needs the network shows up as an error);
- examples: no ``>>>`` example rendered as three nested quotes (a docstring section titled ``Example:``,
  which griffe renders as text; ``Examples:`` is rendered as code).

Chromium and chromedriver come from the OS packages (``apt-get install -y chromium chromium-driver``).
Exit status 0 when every page is clean, 1 otherwise, with one line per problem.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import sys
import threading
import time
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Every host but the local server is unreachable: a page that fetches anything from the web fails loudly.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]

# Run in the page: what a reader would see as unrendered math.
_MATH_PROBE = r"""
const skip = new Set(["CODE", "PRE", "SCRIPT", "STYLE", "MATH", "TEXTAREA"]);
const raw = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  let parent = node.parentElement, inside = false;
  while (parent) { if (skip.has(parent.tagName.toUpperCase())) { inside = true; break; } parent = parent.parentElement; }
  if (!inside && /\\\(|\\\)|\\\[|\\\]|\$\$/.test(node.textContent)) raw.push(node.textContent.trim().slice(0, 80));
}
const maths = Array.from(document.querySelectorAll("math"));
return {
  raw: raw,
  arithmatex: document.querySelectorAll(".arithmatex").length,
  formulas: maths.length,
  empty: maths.filter(m => { const r = m.getBoundingClientRect(); return r.width === 0 || r.height === 0; })
              .map(m => m.textContent.slice(0, 60)),
  commands: maths.filter(m => /\\[A-Za-z]+/.test(m.textContent)).map(m => m.textContent.slice(0, 60)),
  doctests: Array.from(document.querySelectorAll("blockquote > blockquote > blockquote"))
              .map(b => b.textContent.trim().slice(0, 60)),
};
"""


class _Page(HTMLParser):
    """The ids of a page and the URLs it refers to."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("id", "name"):
            if values.get(key):
                self.ids.add(str(values[key]))
        for key in ("href", "src"):
            if values.get(key) and not (tag == "link" and values.get("rel") in ("canonical", "alternate")):
                self.refs.append(str(values[key]))


@functools.cache
def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def _file(root: Path, url: str) -> Path:
    path = root / unquote(urlparse(url).path).lstrip("/")
    return path / "index.html" if url.endswith("/") or path.is_dir() else path


def check_links(root: Path, pages: list[Path], base: str) -> list[str]:
    """Broken links, images, scripts and stylesheets, and anchors that name no element, across the sites."""
    problems = []
    for page in pages:
        url = base + "/" + page.relative_to(root).as_posix()
        for ref in _parse(page).refs:
            target = urljoin(url, ref)
            if not target.startswith(base) or ref.startswith(("mailto:", "javascript:", "data:")):
                continue  # another host: outside the sites (reported by the browser if the page needs it)
            address, anchor = urldefrag(target)
            file = _file(root, address)
            where = f"{page.relative_to(root)}: {ref}"
            if not file.is_file():
                problems.append(f"broken link {where} (no {file.relative_to(root)})")
            elif anchor and file.suffix == ".html" and unquote(anchor) not in _parse(file).ids:
                problems.append(f"broken anchor {where} (no id {anchor!r} in {file.relative_to(root)})")
    return problems


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _browser() -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        sys.exit("docs_browser needs Chromium and its driver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def check_pages(root: Path, pages: list[Path], base: str) -> tuple[list[str], dict[str, int]]:
    """Open each page in Chromium: unrendered math and console errors; formulas rendered per site."""
    browser: object = _browser()
    problems: list[str] = []
    formulas: dict[str, int] = defaultdict(int)
    try:
        for page in pages:
            name = page.relative_to(root).as_posix()
            browser.get(f"{base}/{name}")  # type: ignore[attr-defined]
            for _ in range(100):
                if browser.execute_script("return document.readyState") == "complete":  # type: ignore[attr-defined]
                    break
                time.sleep(0.05)
            math = browser.execute_script(_MATH_PROBE)  # type: ignore[attr-defined]
            formulas[name.split("/", 1)[0]] += int(math["formulas"])
            problems += [f"unrendered math {name}: {text!r}" for text in math["raw"]]
            if math["arithmatex"]:
                problems.append(f"unrendered math {name}: {math['arithmatex']} arithmatex element(s) left")
            problems += [f"math without a size {name}: {text!r}" for text in math["empty"]]
            problems += [f"raw TeX command in math {name}: {text!r}" for text in math["commands"]]
            problems += [
                f"doctest rendered as nested quotes {name} (a docstring's `Example:` section; griffe reads "
                f"`Examples:` as code): {text!r}"
                for text in math["doctests"]
            ]
            for entry in browser.get_log("browser"):  # type: ignore[attr-defined]
                if entry["level"] in ("SEVERE", "ERROR"):
                    problems.append(f"console error {name}: {entry['message'][:200]}")
    finally:
        browser.quit()  # type: ignore[attr-defined]
    return problems, dict(formulas)


def main(root: Path) -> int:
    """Check every page under ``root``; print the problems and a summary; return the exit status."""
    pages = sorted(p for p in root.rglob("*.html") if p.name != "404.html")
    if not pages:
        print(f"no pages under {root}: build the sites first (nox -s docs_browser does)")
        return 1
    server, base = _serve(root)
    try:
        problems = check_links(root, pages, base)
        browser_problems, formulas = check_pages(root, pages, base)
        problems += browser_problems
    finally:
        server.shutdown()
    sites = defaultdict(int)
    for page in pages:
        sites[page.relative_to(root).parts[0]] += 1
    for site, count in sorted(sites.items()):
        print(f"{site}: {count} pages, {formulas.get(site, 0)} formulas rendered as MathML")
    for problem in problems:
        print(problem)
    print(f"{len(pages)} pages in {len(sites)} sites: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()))
