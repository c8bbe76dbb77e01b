"""The package's modules import one way: no import cycles (function-level and annotation-only
imports included, so a cycle cannot hide behind a lazy import) and no private name taken from
another module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "glore_jax"


def _modules() -> dict[str, Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
  """The package modules `name` imports anywhere in its body (module or function level)."""
  tree = ast.parse(path.read_text())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("glore_jax"):
      subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
      found.update(subs if len(subs) == len(node.names) else [node.module, *subs])
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name in modules)
  # A submodule importing its own package (or the root) is Python's normal import order.
  return {m for m in found if m != name and not name.startswith(m + ".") and m != "glore_jax"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle through each strongly connected group of modules (Tarjan), as a path."""
  index, low, stack, on_stack, groups = {}, {}, [], set(), []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        groups.append(sorted(group))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return groups


def test_no_import_cycles_even_through_lazy_or_annotation_imports():
  modules = _modules()
  graph = {name: _imports(name, path, modules) for name, path in modules.items()}
  assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_lazy_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(graph) == [["a", "b", "c"]]


def test_no_private_names_imported_across_modules():
  modules = _modules()
  offenders = []
  for name, path in modules.items():
    tree = ast.parse(path.read_text())
    aliases = {}  # local name -> package module, for `module._private` attribute reads
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("glore_jax"):
        for a in node.names:
          if a.name.startswith("_") and not a.name.startswith("__"):
            offenders.append(f"{name}: from {node.module} import {a.name}")
          if f"{node.module}.{a.name}" in modules:
            aliases[a.asname or a.name] = f"{node.module}.{a.name}"
      elif isinstance(node, ast.Import):
        for a in node.names:
          if a.name in modules and a.asname:
            aliases[a.asname] = a.name
    for node in ast.walk(tree):
      if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and aliases[node.value.id] != name
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
      ):
        offenders.append(f"{name}: {node.value.id}.{node.attr}")
  assert offenders == []
