"""MkDocs hooks for the circuits site (mkdocs.yml names this file).

- The tutorial pages are notebooks that `make test` executed into docs/tutorials/; a build
  without them warns (and so fails under --strict) with the command that makes them.
- Their plotly figures are HTML that loads plotly.js from a CDN; the site serves the copy that
  the installed plotly ships instead, so the pages work offline and from the file system.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import plotly
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.circuits")
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
ASSET = "assets/plotly.min.js"
_CDN = re.compile(
    r'<script[^>]*src="https://(?:cdn\.plot\.ly|cdnjs\.cloudflare\.com/ajax/libs/mathjax)/'
    r'[^"]*"[^>]*>\s*</script>'
)


def on_files(files: Files, config: Any) -> Files:
    if not any(f.src_uri.startswith("tutorials/") and f.src_uri.endswith(".ipynb") for f in files):
        log.warning(
            "docs/tutorials/ holds no executed tutorials; build the site with `make docs`, "
            "which executes them first (or run `make notebooks`)"
        )
    files.append(File.generated(config, ASSET, abs_src_path=str(PLOTLY_JS)))
    return files


def on_post_page(output: str, page: Any, config: Any) -> str:
    if not page.file.src_uri.startswith("tutorials/"):
        return output
    depth = page.file.dest_uri.count("/")
    script = f'<script src="{"../" * depth}{ASSET}"></script>'
    return _CDN.sub("", output).replace("</head>", f"{script}\n</head>", 1)


# Every public name gets an entry in the API reference. mkdocstrings leaves out a name without a
# docstring, so a missing entry is a missing docstring (or a name the pages forgot): a warning,
# and under --strict a failed build. The names come from the walk tests/test_docstrings.py does,
# and its allowlist (names other work has yet to document) is honoured here too.
_anchors: set[str] = set()
_ANCHOR = re.compile(r'id="(circuits\.[\w.]+)"')


def on_pre_build(config: Any) -> None:
    _anchors.clear()


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    _anchors.update(_ANCHOR.findall(html))
    return html


def on_post_build(config: Any) -> None:
    import importlib
    import sys

    sys.path.insert(0, str(Path(config["config_file_path"]).parent))
    try:
        from tests.test_docstrings import ALLOWED, PUBLIC, defined_in, kind_of
    finally:
        sys.path.pop(0)
    allowed = {name for name, check in ALLOWED if check == "docstring"}
    tails = {anchor.rsplit(".", 1)[-1] for anchor in _anchors}
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            if name.startswith("__"):
                continue
            obj = getattr(module, name)
            kind = kind_of(obj)
            if kind == "value":
                where = f"{defined_in(module_name, name)}.{name}"
            elif kind == "module":
                where = obj.__name__
            else:
                where = f"{obj.__module__}.{obj.__qualname__}"
            if where in allowed:
                continue
            # circuits' own names are shown on their stage's page; the rest under their module
            found = (
                name in tails
                if module_name == "circuits"
                else (f"{module_name}.{name}" in _anchors or where in _anchors)
            )
            if not found:
                log.warning(
                    f"{module_name}.{name} has no entry in the API reference: give it a "
                    "docstring (mkdocstrings leaves out names without one) or add it to a page"
                )
