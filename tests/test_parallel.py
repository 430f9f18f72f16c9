"""Mesh construction and logical-axis rules."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from pflow_jax.parallel import mesh as mesh_lib, rules

RULES = (('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'))


def test_resolve_fills_the_free_axis():
  assert mesh_lib.resolve_axis_sizes({'data': -1, 'fsdp': 2}, 8) == {
      'data': 4, 'fsdp': 2, 'sequence': 1, 'tensor': 1}


@pytest.mark.parametrize('sizes, message', [
    ({'data': -1, 'fsdp': -1}, 'at most one'),
    ({'data': 3}, 'needs 3 devices'),
    ({'data': -1, 'fsdp': 3}, 'cannot fill'),
    ({'model': 2}, 'unknown mesh axes'),
])
def test_resolve_rejects_bad_meshes(sizes, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.resolve_axis_sizes(sizes, 8)


def test_global_batch_must_split_over_the_batch_axes():
  mesh = mesh_lib.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  mesh_lib.check_global_batch(12, mesh)  # 4 batch shards; tensor does not split the batch
  with pytest.raises(ValueError, match='not divisible by the 4 batch shards'):
    mesh_lib.check_global_batch(6, mesh)


def test_logical_to_spec_uses_each_mesh_axis_once_and_drops_size_one_axes():
  mesh = mesh_lib.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  assert rules.logical_to_spec(('batch', 'embed'), RULES, mesh) == P(('data', 'fsdp'), None)
  assert rules.logical_to_spec(('embed', 'mlp'), RULES, mesh) == P('fsdp', 'tensor')
  single = mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])
  assert rules.logical_to_spec(('embed', 'mlp'), RULES, single) == P(None, None)
  assert rules.logical_to_spec(('unknown', None), RULES, mesh) == P(None, None)


def test_constrain_shards_activations_inside_jit():
  mesh = mesh_lib.make_mesh({'data': 4, 'fsdp': 2})

  def f(x):
    with rules.use_rules(RULES):
      return rules.constrain(x * 2, ('batch', 'embed'))

  with jax.set_mesh(mesh):
    y = jax.jit(f)(jax.numpy.ones((8, 4)))
  assert y.sharding.spec == P(('data', 'fsdp'))
  assert float(y.sum()) == 64.0
  assert rules.constrain(jax.numpy.ones(3), ('batch',)).shape == (3,)  # no mesh: no-op
