"""Device mesh from the config: named axes, one size may be -1 (the rest)."""

from __future__ import annotations

from collections.abc import Mapping
import math

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ('data', 'fsdp', 'sequence', 'tensor')


def resolve_axis_sizes(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills one -1 entry so the product equals the device count; checks the rest."""
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'unknown mesh axes {sorted(unknown)}; known: {MESH_AXES}')
  resolved = {a: int(sizes.get(a, 1)) for a in MESH_AXES}
  free = [a for a, s in resolved.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got {free}')
  fixed = math.prod(s for s in resolved.values() if s != -1)
  if any(s == 0 or s < -1 for s in resolved.values()):
    raise ValueError(f'mesh axis sizes must be positive or -1, got {dict(sizes)}')
  if free:
    if num_devices % fixed:
      raise ValueError(f'{num_devices} devices cannot fill mesh {dict(sizes)}')
    resolved[free[0]] = num_devices // fixed
  if math.prod(resolved.values()) != num_devices:
    raise ValueError(f'mesh {resolved} needs {math.prod(resolved.values())} '
                     f'devices, have {num_devices}')
  return resolved


def make_mesh(sizes: Mapping[str, int], devices=None) -> Mesh:
  """A mesh over all (or the given) devices with axes ('data','fsdp','sequence','tensor').

  Axes are `Auto`: shardings given at the jit boundary and by `constrain`
  propagate through the program as in classic GSPMD.
  """
  devices = jax.devices() if devices is None else list(devices)
  resolved = resolve_axis_sizes(sizes, len(devices))
  shape = tuple(resolved[a] for a in MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless the global batch splits evenly over the mesh's batch axes
  (data x fsdp), before anything runs rather than at the first step."""
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if global_batch_size % shards:
    raise ValueError(f'data.global_batch_size {global_batch_size} is not divisible by the '
                     f'{shards} batch shards of mesh {dict(mesh.shape)} (data x fsdp)')
