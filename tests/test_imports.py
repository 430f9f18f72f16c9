"""The package's import graph: layers point one way and no module imports itself back.

Every import counts, including the ones inside functions: a lazy import hides a
circle from Python, not from a reader.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'pflow_jax'

# Lowest first; a module may import its own layer or a lower one. Entries are
# module names or package prefixes (a package's modules share its layer).
LAYERS = (
    ('pflow_jax', 'pflow_jax.config', 'pflow_jax.storage', 'pflow_jax.checkpoint',
     'pflow_jax.logs', 'pflow_jax.cli', 'pflow_jax.distributed', 'pflow_jax.parallel'),
    ('pflow_jax.pyramid',),
    ('pflow_jax.models',),
    ('pflow_jax.data',),
    ('pflow_jax.training',),
    ('pflow_jax.inference', 'pflow_jax.restore'),
    ('pflow_jax.eval',),
    ('pflow_jax.train', 'pflow_jax.train_vae', 'pflow_jax.sample', 'pflow_jax.evaluate',
     'pflow_jax.encode', 'pflow_jax.embed_text', 'pflow_jax.convert', 'pflow_jax.aot'),
)


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def all_modules() -> set[str]:
  return {module_name(p) for p in PACKAGE.rglob('*.py')}


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The package modules that `path` imports anywhere in its body."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      # `from a import b` is module a.b when that is a module, else a name in a.
      names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules
               else node.module for a in node.names]
    else:
      continue
    found.update(n for n in names if n in modules)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = all_modules()
  return {module_name(p): imports_of(p, modules) - {module_name(p)}
          for p in PACKAGE.rglob('*.py')}


def layer_of(module: str) -> int:
  best = None
  for rank, entries in enumerate(LAYERS):
    for entry in entries:
      if module == entry or module.startswith(entry + '.'):
        if best is None or len(entry) > best[1]:
          best = (rank, len(entry))
  if best is None:
    raise KeyError(module)
  return best[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle as a list of modules (first == last), or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_every_module_has_a_layer():
  unplaced = []
  for module in sorted(all_modules()):
    try:
      layer_of(module)
    except KeyError:
      unplaced.append(module)
  assert not unplaced, f'place these modules in LAYERS: {unplaced}'


def test_no_import_from_a_higher_layer():
  upward = [f'{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})'
            for m, deps in sorted(import_graph().items()) for d in sorted(deps)
            if layer_of(d) > layer_of(m)]
  assert not upward, '\n'.join(upward)


def test_no_import_circle():
  cycle = find_cycle(import_graph())
  assert cycle is None, ' -> '.join(cycle)


@pytest.mark.parametrize('graph, has_cycle', [
    ({'a': {'b'}, 'b': {'c'}, 'c': set()}, False),
    ({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}, True),
    ({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}, False),
])
def test_find_cycle_on_known_graphs(graph, has_cycle):
  assert (find_cycle(graph) is not None) == has_cycle


def test_a_lazy_upward_import_is_seen(tmp_path):
  module = tmp_path / 'm.py'
  module.write_text('def f():\n  from pflow_jax.training import loop\n  return loop\n')
  assert imports_of(module, all_modules()) == {'pflow_jax.training.loop'}
