"""Every public name is documented: the API reference (mkdocs, `make docs`) is built from these
docstrings, so a name without one is a name a researcher cannot look up.

The standard, checked here for every name in `circuits.__all__` and in the `__all__` of the public
subpackages (what the reference pages list):

- every public class, function and module has a docstring of its own (a dataclass's generated
  signature does not count); every public method and property of a public class has one too;
- a public constant or type alias has an attribute docstring: a string literal right after its
  assignment in the module that defines it (what mkdocstrings shows);
- every public function shows an example (a ``>>>`` line, or a code block: a fenced block or a
  block indented past the text after a blank line) and says what it raises (a ``Raises:`` section,
  or "raises ..." in the text; a function that raises nothing of its own says so).

Shapes are written as ``[batch, pos, d_model]`` in the text and as jaxtyping annotations in the
signature; that part is left to review.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

PUBLIC = [
    "circuits",
    "circuits.capture",
    "circuits.hooks",
    "circuits.features",
    "circuits.metrics",
    "circuits.probes",
    "circuits.patching",
    "circuits.attribution",
    "circuits.graph",
    "circuits.faithfulness",
    "circuits.dictionaries",
    "circuits.featuregraph",
    "circuits.manifolds",
    "circuits.sweep",
    "circuits.toy",
    "circuits.zoo",
]

# Names whose docstrings miss the standard, in files other work owns right now. Each entry is
# (where the name is defined, the check it fails). The lead empties this list as those files are
# finished; an entry that passes is reported as stale, so the list only shrinks.
ALLOWED: set[tuple[str, str]] = set()


def _listed(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        raise AssertionError(f"{module.__name__} has no __all__")
    return [n for n in names if not (n.startswith("__") and n.endswith("__"))]


def kind_of(obj: Any) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    return "value"


def public_names() -> dict[str, tuple[str, str, Any]]:
    """{qualified name where defined: (kind, module that lists it, object)}."""
    found: dict[str, tuple[str, str, Any]] = {}
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        for name in _listed(module):
            obj = getattr(module, name)
            kind = kind_of(obj)
            if kind == "module":
                where = obj.__name__
            elif kind == "value":
                where = f"{defined_in(module_name, name)}.{name}"
            else:
                where = f"{obj.__module__}.{obj.__qualname__}"
            found.setdefault(where, (kind, module_name, obj))
    return found


def own_doc(obj: Any) -> str:
    """The object's own docstring, cleaned; "" for none (or a dataclass's generated one)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    if inspect.isclass(obj) and re.match(re.escape(obj.__name__) + r"\(", doc):
        return ""  # dataclasses write "Name(field: type, ...)" when the class has none
    return inspect.cleandoc(doc)


def _tree(module_name: str) -> ast.Module:
    return ast.parse(textwrap.dedent(inspect.getsource(importlib.import_module(module_name))))


def defined_in(module_name: str, name: str) -> str:
    """The module that assigns `name`, following `from X import name` from `module_name`."""
    for node in _tree(module_name).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return defined_in(node.module, alias.name)
    return module_name


def value_doc(where: str) -> str:
    """The attribute docstring of the constant or alias `where` ("module.NAME"), or ""."""
    module_name, name = where.rsplit(".", 1)
    body = _tree(module_name).body
    for node, after in zip(body, [*body[1:], None], strict=True):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                return inspect.cleandoc(after.value.value)
            return ""
    return ""


def has_example(doc: str) -> bool:
    if ">>>" in doc or "```" in doc:
        return True
    lines = doc.splitlines()
    return any(
        line.startswith("    ") and line.strip() and not lines[i - 1].strip()
        for i, line in enumerate(lines)
        if i > 0
    )


def says_what_it_raises(doc: str) -> bool:
    return re.search(r"\braises?\b", doc, re.IGNORECASE) is not None


def _methods(cls: type) -> Iterator[tuple[str, Any]]:
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        if inspect.isfunction(fn):
            yield name, fn


def failures() -> dict[tuple[str, str], str]:
    """{(name, check): what is missing} over every public name."""
    out: dict[tuple[str, str], str] = {}
    for where, (kind, listed_in, obj) in public_names().items():
        doc = value_doc(where) if kind == "value" else own_doc(obj)
        if not doc:
            out[(where, "docstring")] = f"{kind} listed in {listed_in}.__all__ has no docstring"
            continue
        if kind == "function":
            if not has_example(doc):
                out[(where, "example")] = "no example (>>> or a code block)"
            if not says_what_it_raises(doc):
                out[(where, "raises")] = "does not say what it raises (Raises: or 'raises ...')"
        if kind == "class" and obj.__module__.startswith("circuits"):
            for name, fn in _methods(obj):
                if not own_doc(fn):
                    out[(f"{where}.{name}", "docstring")] = "public method has no docstring"
    return out


@pytest.fixture(scope="module")
def found() -> dict[tuple[str, str], str]:
    return failures()


def _report(found: dict[tuple[str, str], str], check: str) -> list[str]:
    return sorted(
        f"{name}: {why}"
        for (name, c), why in found.items()
        if c == check and (name, c) not in ALLOWED
    )


def test_the_walk_sees_the_public_api() -> None:
    names = public_names()
    assert "circuits.capture.activations.capture" in names
    assert "circuits.errors.CircuitsError" in names
    assert "circuits.options.Ablation" in names  # a type alias, re-exported by circuits.patching
    assert len(names) > 100


@pytest.mark.parametrize("check", ["docstring", "example", "raises"])
def test_public_names_meet_the_docstring_standard(found: dict, check: str) -> None:
    missing = _report(found, check)
    assert not missing, f"{len(missing)} public names miss the standard:\n" + "\n".join(missing)


def test_the_allowlist_only_names_real_failures(found: dict) -> None:
    stale = sorted(f"{name} ({check})" for name, check in ALLOWED if (name, check) not in found)
    assert not stale, "these now meet the standard; remove them from ALLOWED:\n" + "\n".join(stale)


def test_the_checks_tell_documented_from_undocumented() -> None:
    assert has_example("Do it.\n\n    x = f(1)\n") and has_example("Do it.\n\n>>> f(1)\n")
    assert not has_example("Do it.\n    continued line of the text\n")
    assert says_what_it_raises("Raises:\n    ConfigError: when ...")
    assert says_what_it_raises("Raises SchemaError if the file is not a graph.")
    assert not says_what_it_raises("Returns the graph.")
    assert value_doc("circuits.metrics.MetricFn").startswith("A metric")
    assert value_doc("circuits.ids.METRIC") == ""  # a trailing comment is not a docstring
