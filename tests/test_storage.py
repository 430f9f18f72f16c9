"""Workdirs on object storage: every workdir file goes through etils.epath, so a
gs:// workdir is written to the bucket, never to a local ./gs:/ directory.

An in-memory fsspec filesystem stands in for GCS (epath's fsspec backend asks
fsspec for 'gcs'; TensorFlow is not installed, so epath uses that backend).
"""

import json
import os

import fsspec
from fsspec.implementations import memory
import numpy as np
import pytest

from configs import moving_digits
from pflow_jax import checkpoint, storage
from pflow_jax.eval import study
from pflow_jax.models import vae_load
from pflow_jax.training import loop, metrics as metrics_lib, vae_loop

WORKDIR = 'gs://bucket/runs/digits'


class _InMemoryGcs(memory.MemoryFileSystem):
  """Keys 'bucket/path' without the scheme, as gcsfs returns them (epath adds it back)."""
  protocol = ('gs', 'gcs')

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    del finalize_on_close  # a gcsfs option epath passes
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = os.fspath(path)
    for scheme in ('gs://', 'gcs://'):
      path = path.removeprefix(scheme)
    return path.rstrip('/')


class _Bucket:
  """The in-memory store by gs:// URL: bucket[url] is a file's bytes."""

  def __getitem__(self, url: str) -> bytes:
    return _InMemoryGcs.store[url.removeprefix('gs://')].getvalue()

  def __iter__(self):
    return iter(f'gs://{key}' for key in _InMemoryGcs.store)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """A fresh in-memory gs:// store; the test runs in an empty local directory so any
  file that escapes to local disk is seen."""
  fsspec.register_implementation('gcs', _InMemoryGcs, clobber=True)
  _InMemoryGcs.store.clear()
  _InMemoryGcs.pseudo_dirs.clear()
  _InMemoryGcs.pseudo_dirs.append('')
  monkeypatch.chdir(tmp_path)
  yield _Bucket()
  assert os.listdir(tmp_path) == [], 'a gs:// path was written to local disk'


def test_local_paths_become_absolute_and_urls_stay_as_given(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(storage.path('runs/x')) == os.path.join(str(tmp_path), 'runs', 'x')
  assert os.fspath(storage.path(WORKDIR)) == WORKDIR
  assert storage.is_remote(WORKDIR) and not storage.is_remote('runs/x')


def test_config_json_is_written_read_and_protected_in_the_bucket(bucket):
  config = moving_digits.get_config('tiny')
  saved = checkpoint.config_json(config)
  checkpoint.write_config_json(WORKDIR, saved)
  assert json.loads(bucket[f'{WORKDIR}/config.json']) == saved
  assert checkpoint.load_workdir_config(WORKDIR).to_dict()['seed'] == config.seed
  checkpoint.write_config_json(WORKDIR, saved)  # the same config again: kept
  other = dict(saved, seed=saved['seed'] + 1)
  with pytest.raises(FileExistsError, match='another run'):
    checkpoint.write_config_json(WORKDIR, other)
  assert not [k for k in bucket if '.tmp' in k], 'a temporary file was left behind'


def test_checkpoint_steps_are_read_from_the_bucket_and_orbax_gets_the_url(bucket, monkeypatch):
  for name in ('3', '12', 'tmp_garbage'):
    storage.path(f'{WORKDIR}/checkpoints/{name}/_CHECKPOINT_METADATA').write_text('{}')
  assert checkpoint.checkpoint_steps(WORKDIR) == [3, 12]
  assert checkpoint.checkpoint_steps('gs://bucket/elsewhere') == []
  # orbax itself talks to GCS through google-cloud-storage and tensorstore, which
  # this machine cannot reach: check what it is handed.
  given = []
  monkeypatch.setattr(checkpoint.ocp, 'CheckpointManager',
                      lambda directory, **kwargs: given.append(directory))
  checkpoint.Checkpointer(WORKDIR)
  assert [os.fspath(d) for d in given] == [f'{WORKDIR}/checkpoints']


def test_metrics_samples_and_latent_stats_land_in_the_bucket(bucket):
  writer = metrics_lib.MetricWriter(WORKDIR)
  writer.scalars(1, {'loss': 0.5})
  writer.scalars(2, {'loss': 0.25})
  writer.close()
  resumed = metrics_lib.MetricWriter(WORKDIR)  # a resumed run appends
  resumed.scalars(3, {'loss': 0.125})
  resumed.close()
  lines = bucket[f'{WORKDIR}/metrics.jsonl'].decode().splitlines()
  assert [json.loads(x) for x in lines] == [{'step': 1, 'loss': 0.5}, {'step': 2, 'loss': 0.25},
                                            {'step': 3, 'loss': 0.125}]
  events = [k for k in bucket if k.startswith(f'{WORKDIR}/tb/events.out.tfevents')]
  assert len(events) == 2 and all(len(bucket[k]) > 0 for k in events)

  videos = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32, 1), np.uint8)
  grid = loop.write_samples(WORKDIR, 7, videos, fps=4)
  assert grid == f'{WORKDIR}/samples/step_0000007.png'
  for suffix in ('png', 'mp4', 'gif'):
    assert len(bucket[f'{WORKDIR}/samples/step_0000007.{suffix}']) > 100

  vae_loop.write_latent_stats(WORKDIR, 5, {'video_mean': 0.5, 'video_std': 2.0})
  stats = json.loads(bucket[f'{WORKDIR}/{vae_load.STATS_FILE}'])
  assert stats == {'step': 5, 'video_shift': 0.5, 'video_scale': 0.5}


def test_a_sweep_in_the_bucket_is_aggregated(bucket):
  run = f'{WORKDIR}/sweep/seed0'
  storage.path(f'{run}/config.json').write_text(json.dumps({'seed': 0, 'pyramid': {'stages': 3}}))
  storage.path(f'{run}/metrics.jsonl').write_text(
      '{"step": 10, "steps_per_sec": 2.0}\n{"step": 20, "steps_per_sec": 5.0}\n')
  generated = {m: 0.5 for m in study.METRICS}
  report = {'step': 20, 'task': 't2v', 'num_samples': 8, 'compute': {'train_flops': 1.0},
            'sample': {'steps_per_stage': [2, 2, 2], 'guidance_scale': 4.0},
            'rows': {'generated': generated, 'real_test_clips': {'frechet_distance': 7.0}}}
  storage.path(f'{run}/eval/20.json').write_text(json.dumps(report))
  [record] = study.load_reports(f'{WORKDIR}/sweep')
  assert record['run'] == 'seed0' and record['stages'] == 3
  assert record['train_seconds'] == pytest.approx(10 / 2.0 + 10 / 5.0)
