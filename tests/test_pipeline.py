"""grain pipeline: batches, epochs, determinism, resumable state, per-process shards, global arrays."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import portpicker
import pytest
from jax.sharding import PartitionSpec as P

from pflow_jax import config as config_lib
from pflow_jax.data import moving_digits as md
from pflow_jax.data import pipeline
from pflow_jax.parallel import mesh as mesh_lib
from tests import xla_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def records(n):
  return [{'id': np.int32(i), 'x': np.full((2, 3), i, np.float32)} for i in range(n)]


def ids(batches):
  return [b['id'].tolist() for b in batches]


def test_batches_cover_each_epoch_once_in_a_new_order():
  it = pipeline.make_iterator(records(12), global_batch_size=4, seed=0, num_epochs=2,
                              process_index=0, process_count=1)
  batches = list(it)
  assert len(batches) == 6
  assert batches[0]['x'].shape == (4, 2, 3) and batches[0]['x'].dtype == np.float32
  np.testing.assert_array_equal(batches[0]['x'][:, 0, 0], batches[0]['id'])
  first = sum(ids(batches[:3]), [])
  second = sum(ids(batches[3:]), [])
  assert sorted(first) == sorted(second) == list(range(12))
  assert first != second and first != list(range(12))


def test_unshuffled_repeats_forever_in_order():
  it = pipeline.make_iterator(records(6), global_batch_size=4, seed=0, shuffle=False,
                              process_index=0, process_count=1)
  assert ids(next(it) for _ in range(3)) == [[0, 1, 2, 3], [4, 5, 0, 1], [2, 3, 4, 5]]


def test_same_seed_same_batches_other_seed_other_batches():
  def first_batches(seed):
    it = pipeline.make_iterator(records(32), global_batch_size=4, seed=seed,
                                process_index=0, process_count=1)
    return ids(next(it) for _ in range(8))
  assert first_batches(3) == first_batches(3)
  assert first_batches(3) != first_batches(4)


@pytest.mark.parametrize('num_threads', [0, 2])
def test_state_round_trips_through_json_and_resumes_at_the_same_batch(num_threads):
  kwargs = dict(global_batch_size=4, seed=5, process_index=0, process_count=1,
                num_threads=num_threads)
  it = pipeline.make_iterator(records(10), **kwargs)
  for _ in range(4):  # into the second epoch
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = ids(next(it) for _ in range(5))
  resumed = pipeline.make_iterator(records(10), **kwargs)
  resumed.set_state(state)
  assert ids(next(resumed) for _ in range(5)) == expected


@pytest.mark.parametrize('change', [dict(seed=6), dict(global_batch_size=2),
                                    dict(process_count=2), dict(shuffle=False)])
def test_state_from_a_different_pipeline_is_rejected(change):
  base = dict(global_batch_size=4, seed=5, process_index=0, process_count=1)
  it = pipeline.make_iterator(records(10), **base)
  next(it)
  other = pipeline.make_iterator(records(10), **{**base, **change})
  with pytest.raises(ValueError, match=next(iter(change))):
    other.set_state(it.get_state())


@pytest.mark.parametrize('shuffle', [True, False])
def test_processes_read_slices_of_the_single_process_global_batches(shuffle):
  """Global batches do not depend on the process count: process p reads the p-th
  slice of each, so the slices are disjoint and together are the global batch."""
  kwargs = dict(global_batch_size=6, seed=0, shuffle=shuffle, num_epochs=2)
  single = ids(pipeline.make_iterator(records(20), process_index=0, process_count=1, **kwargs))
  assert len(single) == 6  # 40 records over two epochs: 6 full global batches
  slices = [ids(pipeline.make_iterator(records(20), process_index=p, process_count=3,
                                       **kwargs)) for p in range(3)]
  assert all(len(b) == 2 for per_process in slices for b in per_process)
  assert [sum((slices[p][i] for p in range(3)), []) for i in range(6)] == single


def test_transform_is_applied_per_record():
  it = pipeline.make_iterator(records(8), global_batch_size=4, seed=0,
                              transform=lambda r: {'id2': r['id'] * 2},
                              process_index=0, process_count=1)
  batch = next(it)
  assert set(batch) == {'id2'} and all(v % 2 == 0 for v in batch['id2'])


@pytest.mark.parametrize('source, kwargs, match', [
    (records(8), dict(global_batch_size=5, process_count=2), 'multiple of the process count'),
    (records(8), dict(global_batch_size=4, process_index=2, process_count=2), 'process_index'),
    (records(0), dict(global_batch_size=4), 'empty'),
    (records(3), dict(global_batch_size=4, process_count=2), 'no full batch'),
    (records(5), dict(global_batch_size=6, process_count=3), 'fewer than the global batch'),
    (records(8), dict(global_batch_size=4, num_epochs=0), 'num_epochs'),
])
def test_bad_arguments_raise(source, kwargs, match):
  kwargs = {'process_index': 0, 'process_count': 1, **kwargs}
  with pytest.raises(ValueError, match=match):
    pipeline.make_iterator(source, seed=0, **kwargs)


def test_load_source_errors_name_the_dataset(tmp_path):
  missing = str(tmp_path / 'nothing' / '1.0.0')
  with pytest.raises(FileNotFoundError, match=missing):
    pipeline.load_source(missing, 'train')
  cfg = md.MovingDigitsConfig(image_size=32, num_frames=2, train_size=4, test_size=2)
  path = md.build_moving_digits(str(tmp_path), cfg)
  with pytest.raises(ValueError, match="no split 'validation'.*'test', 'train'"):
    pipeline.load_source(path, 'validation')


def test_iterates_a_built_moving_digits_split(tmp_path):
  cfg = md.MovingDigitsConfig(image_size=32, num_frames=2, train_size=16, test_size=2)
  md.build_moving_digits(str(tmp_path), cfg)
  source = md.load_moving_digits(str(tmp_path), cfg, 'train')
  transform = lambda r: {'video': pipeline.video_to_float(r['video']), 'digits': r['digits']}
  it = pipeline.make_iterator(source, global_batch_size=8, seed=0, num_epochs=1,
                              transform=transform, process_index=0, process_count=1)
  batches = list(it)
  assert len(batches) == 2 and batches[0]['video'].shape == (8, 2, 32, 32, 1)
  videos = np.concatenate([b['video'] for b in batches])
  expected = np.stack([md.generate_example(i, cfg, 'train')['video'] for i in range(16)])
  expected = expected.astype(np.float32) / 127.5 - 1
  # each example exactly once, as float in [-1, 1]
  found = sorted(int(np.flatnonzero((expected == v).all(axis=(1, 2, 3, 4)))[0])
                 for v in videos)
  assert found == list(range(16))


def test_video_to_float_maps_uint8_to_unit_interval():
  video = np.array([0, 51, 255], np.uint8)
  out = pipeline.video_to_float(video)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [-1.0, 51 / 127.5 - 1, 1.0], rtol=0, atol=1e-7)
  np.testing.assert_allclose(pipeline.video_to_float(jax.numpy.asarray(video)), out)


def test_global_batch_is_sharded_like_the_train_step():
  mesh = mesh_lib.make_mesh({'data': 4, 'fsdp': 2})
  local = {'video': np.arange(8 * 3, dtype=np.uint8).reshape(8, 3),
           'tokens': np.arange(8 * 5, dtype=np.int32).reshape(8, 5)}
  batch = pipeline.to_global_batch(local, mesh, config_lib.DIT_RULES)
  for k, v in local.items():
    np.testing.assert_array_equal(np.asarray(batch[k]), v)
    assert batch[k].sharding.spec == P(('data', 'fsdp'), None)
    assert batch[k].addressable_shards[0].data.shape == (1, v.shape[1])
  by_fn = pipeline.to_global_batch(local, mesh, lambda a: P('data'))
  assert by_fn['video'].sharding.spec == P('data')
  assert by_fn['video'].addressable_shards[0].data.shape == (2, 3)


def test_global_batch_rejects_strings():
  mesh = mesh_lib.make_mesh({'data': 8})
  with pytest.raises(ValueError, match='caption'):
    pipeline.to_global_batch({'caption': np.array([b'a 1'] * 8)}, mesh, config_lib.DIT_RULES)


_TWO_PROCESS_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax
    import numpy as np
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2,
                               process_id=pid, initialization_timeout=60)
    from jax.experimental import multihost_utils
    from pflow_jax import config as config_lib
    from pflow_jax.data import pipeline
    from pflow_jax.parallel import mesh as mesh_lib
    source = [{'id': np.int32(i)} for i in range(20)]
    it = pipeline.make_iterator(source, global_batch_size=8, seed=0, num_epochs=1)
    mesh = mesh_lib.make_mesh({'data': -1})
    out = []
    for local in it:
      batch = pipeline.to_global_batch(local, mesh, config_lib.DIT_RULES)
      assert batch['id'].shape == (8,), batch['id'].shape
      out.append(multihost_utils.process_allgather(batch['id'], tiled=True).tolist())
    print('RESULT', json.dumps(out))
    jax.distributed.shutdown()
''')


def test_two_processes_assemble_disjoint_global_batches(tmp_path):
  script = tmp_path / 'worker.py'
  script.write_text(_TWO_PROCESS_SCRIPT)
  port = portpicker.pick_unused_port()
  env = {**os.environ, 'XLA_FLAGS': xla_env.xla_flags(2),
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO}
  procs = [subprocess.Popen([sys.executable, str(script), str(p), str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for p in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  results = [json.loads(o.split('RESULT ')[1].splitlines()[0]) for o in outs]
  single = ids(pipeline.make_iterator([{'id': np.int32(i)} for i in range(20)],
                                      global_batch_size=8, seed=0, num_epochs=1,
                                      process_index=0, process_count=1))
  assert results[0] == results[1] == single  # 2 global batches of 8 distinct records
  assert len(set(sum(results[0], []))) == 16
