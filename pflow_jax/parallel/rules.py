"""Logical axis names -> mesh axes.

Parameters carry logical axis names as `out_sharding` metadata
(`nnx.Param(value, out_sharding=('embed', 'mlp'))`; flax's own modules get them
from `nnx.with_partitioning` initialisers) and activations are constrained with
`constrain(x, ('batch', 'length', 'embed'))`.
A rules table (one per config, a sequence of `(logical_name, mesh_axes)`)
decides where each logical axis lives, so the model code never names mesh axes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

# Current rules, set while tracing a model under `use_rules`.
_ACTIVE_RULES: list[Rules] = []


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules,
                    mesh: Mesh | None = None) -> P:
  """Maps logical axis names to a PartitionSpec.

  A logical name missing from the rules, or mapped to None, is replicated.
  A mesh axis is used at most once per array (first logical axis wins), and
  mesh axes of size 1 are dropped so specs stay readable.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name in logical_axes:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    keep = tuple(a for a in axes if a not in used
                 and (mesh is None or mesh.shape.get(a, 1) > 1))
    used.update(keep)
    spec.append(None if not keep else keep[0] if len(keep) == 1 else keep)
  return P(*spec)


def _logical_axes_of(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  return variable.get_metadata().get('out_sharding')


def state_shardings(state: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for an nnx.State (or abstract state) from its metadata."""

  def one(leaf):
    if isinstance(leaf, nnx.Variable):
      names = _logical_axes_of(leaf)
      spec = logical_to_spec(names, rules, mesh) if names else P()
      return leaf.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


@contextlib.contextmanager
def use_rules(rules: Rules) -> Iterator[None]:
  """Makes `constrain` active while tracing model code."""
  _ACTIVE_RULES.append(tuple(rules))
  try:
    yield
  finally:
    _ACTIVE_RULES.pop()


def active_spec(logical_axes: Sequence[str | None]) -> P | None:
  """The PartitionSpec of logical axes under the active rules and mesh; None outside them."""
  mesh = jax.sharding.get_abstract_mesh()
  if not _ACTIVE_RULES or mesh.empty:
    return None
  return logical_to_spec(logical_axes, _ACTIVE_RULES[-1], mesh)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside a mesh or rules."""
  spec = active_spec(logical_axes)
  if spec is None:
    return x
  if len(logical_axes) != x.ndim:
    raise ValueError(f'constrain: {len(logical_axes)} names for an array of '
                     f'rank {x.ndim} ({logical_axes}, shape {x.shape})')
  return jax.lax.with_sharding_constraint(x, spec)
