"""Ulysses sequence parallelism: attention over tokens sharded on a mesh axis.

Outside attention every device holds L/S of the tokens (the rules map the
logical 'length' axis to the `sequence` mesh axis of size S), so activations
cost 1/S per device. Attention needs every key for each query: one all-to-all
per q, k and v trades "L/S tokens of all heads" for "all L tokens of H/S heads",
each device attends on its heads with any local kernel, and one all-to-all
trades back (DeepSpeed-Ulysses, Jacobs et al. 2023). The mask is small next to
the tokens and is kept whole on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pflow_jax.parallel import rules

Array = jax.Array
Attend = Callable[[Array, Array, Array, Array | None], Array]

QKV_AXES = ('batch', 'length', 'heads', 'kv')


def _pad_length(x: Array, multiple: int) -> Array:
  extra = -x.shape[1] % multiple
  return jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2)) if extra else x


def _padded_mask(mask: Array | None, lq: int, lk: int, multiple: int) -> Array | None:
  """The mask over lengths padded to `multiple`; padded keys are never attended."""
  if mask is None:
    if lk % multiple == 0:
      return None
    mask = jnp.ones((1, 1, lk), bool)
  pad_q = -lq % multiple if mask.shape[1] > 1 else 0
  return jnp.pad(mask, [(0, 0), (0, pad_q), (0, -lk % multiple)])


def ulysses_attention(attend: Attend, q: Array, k: Array, v: Array,
                      mask: Array | None) -> Array:
  """attend(q, k, v, mask) with q [B, Lq, H, D], k/v [B, Lk, H, D] sharded over tokens.

  The sequence axis is the one the active rules give the logical 'length' axis;
  without rules, a mesh or such an axis this is attend itself. Lengths that do
  not divide the axis are padded with masked keys; heads (after any tensor
  split) must divide it. The mask is bool [B|1, Lq|1, Lk].
  """
  spec = rules.active_spec(QKV_AXES)
  if spec is None or spec[1] is None:
    return attend(q, k, v, mask)
  batch_axes, seq_axes, head_axes = spec[0], spec[1], spec[2]
  mesh = jax.sharding.get_abstract_mesh()

  def size(axes) -> int:
    names = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in names)

  s = size(seq_axes)
  local_heads = q.shape[2] // size(head_axes)
  if local_heads % s:
    raise ValueError(f'Ulysses attention splits the {local_heads} heads of each device over '
                     f'the {s}-way sequence axis {seq_axes}: they must divide evenly')
  if q.shape[0] % size(batch_axes):
    batch_axes = None  # a batch smaller than its shards (sampling one clip): replicated
  lq, lk = q.shape[1], k.shape[1]
  mask = _padded_mask(mask, lq, lk, s)
  q, k, v = _pad_length(q, s), _pad_length(k, s), _pad_length(v, s)
  qkv_spec = P(batch_axes, seq_axes, head_axes, None)
  specs = [qkv_spec] * 3
  args = [q, k, v]
  if mask is not None:
    specs.append(P(batch_axes if mask.shape[0] > 1 else None, None, None))
    args.append(mask)

  def local(q, k, v, mask=None):
    # [b, L/S, h, D] -> [b, L, h/S, D]: every token, a slice of the heads.
    q, k, v = (jax.lax.all_to_all(a, seq_axes, split_axis=2, concat_axis=1, tiled=True)
               for a in (q, k, v))
    out = attend(q, k, v, mask)
    return jax.lax.all_to_all(out, seq_axes, split_axis=1, concat_axis=2, tiled=True)

  out = jax.shard_map(local, in_specs=tuple(specs), out_specs=qkv_spec)(*args)
  return out[:, :lq]
