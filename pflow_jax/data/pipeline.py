"""Input pipeline: tfds ArrayRecord source -> grain -> local numpy batches -> global jax.Arrays.

The global order of the records (shuffled per epoch with the given seed,
epochs back to back) is cut into global batches; process p reads the p-th
slice of `global_batch_size // process_count` examples of each. So the global
batches are the same whatever the number of processes, and the processes'
slices of one batch are disjoint and cover it.
The iterator's state is a small JSON dict, checkpointed with the model, so a
restarted run continues at exactly the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from etils import epath
import grain
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pflow_jax.parallel import rules as rules_lib

Batch = dict[str, np.ndarray]


def load_source(dataset_dir: str, split: str):
  """Random-access source of one split of a tfds dataset directory (no TF needed).

  `dataset_dir` is the versioned directory holding dataset_info.json. Raises
  FileNotFoundError naming it when missing, ValueError for an unknown or empty split.
  """
  path = epath.Path(dataset_dir)
  if not (path / 'dataset_info.json').exists():
    raise FileNotFoundError(f'no dataset at {dataset_dir} (no dataset_info.json there)')
  builder = tfds.builder_from_directory(path)
  splits = sorted(builder.info.splits.keys())
  if split not in splits:
    raise ValueError(f'dataset {dataset_dir} has no split {split!r}; it has {splits}')
  source = builder.as_data_source(split)
  if len(source) == 0:
    raise ValueError(f'split {split!r} of dataset {dataset_dir} is empty')
  return source


def _describe(source) -> str:
  info = getattr(source, 'dataset_info', None)  # tfds sources know their directory
  if info is not None:
    return f'split {source.split!r} of dataset {info.data_dir}'
  return f'data source {type(source).__name__}'


def video_to_float(video):
  """uint8 video (numpy or jax) -> float32 in [-1, 1]."""
  return video.astype(np.float32) / 127.5 - 1.0


def video_to_uint8(video):
  """[-1, 1] float video (numpy or jax) -> uint8 pixels (clipped, rounded half up)."""
  xp = np if isinstance(video, np.ndarray) else jnp
  return xp.clip((video + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


class BatchIterator:
  """Iterator of local batches whose position can be saved and restored.

  The state records the parameters that decide the batch sequence; restoring a
  state made with different ones raises instead of silently yielding other data.
  """

  def __init__(self, dataset: grain.IterDataset, signature: dict[str, Any]):
    self._iterator = iter(dataset)
    self._signature = signature
    self._peeked: tuple[dict[str, Any], Batch] | None = None

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    if self._peeked is not None:
      batch, self._peeked = self._peeked[1], None
      return batch
    return next(self._iterator)

  def peek(self) -> Batch:
    """The next batch without consuming it (e.g. to compile a step for its shapes)."""
    if self._peeked is None:
      position = self._iterator.get_state()
      self._peeked = (position, next(self._iterator))
    return self._peeked[1]

  def get_state(self) -> dict[str, Any]:
    position = self._iterator.get_state() if self._peeked is None else self._peeked[0]
    return {'position': position, **self._signature}

  def set_state(self, state: Mapping[str, Any]) -> None:
    changed = {k: (state.get(k), v) for k, v in self._signature.items() if state.get(k) != v}
    if changed or 'position' not in state:
      details = ', '.join(f'{k}: saved {a!r}, now {b!r}' for k, (a, b) in changed.items())
      raise ValueError('data iterator state does not match this pipeline '
                       f'({details or "no position"}); resuming would read different data')
    self._peeked = None
    self._iterator.set_state(dict(state['position']))


def make_iterator(source, *, global_batch_size: int, seed: int, shuffle: bool = True,
                  num_epochs: int | None = None, process_index: int | None = None,
                  process_count: int | None = None,
                  transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                  num_threads: int = 2, prefetch_batches: int = 4) -> BatchIterator:
  """Local batches (dicts of numpy arrays): this process's slices of the global batches.

  Args:
    source: random-access source (`len`, `[i]`), e.g. from `load_source`.
    global_batch_size: examples per step over all processes.
    seed: shuffle seed; each epoch is shuffled differently, deterministically.
    shuffle: shuffle records (else read in order).
    num_epochs: passes over the records; None repeats forever. Batches may span
      epoch boundaries; only the final incomplete global batch is dropped.
    process_index, process_count: which slice of each global batch this process
      reads; default to jax's.
    transform: applied to each record before batching.
    num_threads: reader threads (0 reads in the calling thread).
    prefetch_batches: batches read ahead.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, process_count '
                     f'{process_count})')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size {global_batch_size} must be a positive multiple '
                     f'of the process count {process_count}')
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f'num_epochs must be >= 1 or None (forever), got {num_epochs}')
  local_batch_size = global_batch_size // process_count
  num_records = len(source)
  if num_records == 0:
    raise ValueError(f'{_describe(source)} is empty')
  if num_records < global_batch_size:
    raise ValueError(f'{_describe(source)} has {num_records} records, fewer than the global '
                     f'batch size {global_batch_size}, so no full batch can be formed')

  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)  # before repeat: every epoch gets its own order
  ds = ds.repeat(num_epochs)    # random access into the global order, all epochs
  steps = len(ds) // global_batch_size
  first = process_index * local_batch_size

  def global_record(k: int):
    """This process's k-th example: its slice of global batch k // local_batch_size."""
    step, j = divmod(k, local_batch_size)
    return ds[step * global_batch_size + first + j]

  local = grain.MapDataset.range(steps * local_batch_size).map(global_record)
  if transform is not None:
    local = local.map(transform)
  local = local.batch(local_batch_size, drop_remainder=True)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
  signature = dict(seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                   global_batch_size=global_batch_size, process_count=process_count,
                   num_records=num_records)
  return BatchIterator(local.to_iter_dataset(read), signature)


def to_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh,
                    spec: rules_lib.Rules | Callable[[np.ndarray], PartitionSpec]
                    ) -> dict[str, jax.Array]:
  """Assembles every process's local batch into global arrays sharded over `mesh`.

  `spec` is either a logical-axis rules table (the leading dimension is the
  logical 'batch' axis, the rest replicated, as the jitted train step expects)
  or a function from a local array to its PartitionSpec.
  """
  out = {}
  for name, value in local_batch.items():
    value = np.asarray(value)
    if value.dtype.kind not in 'biuf' or value.ndim == 0:
      raise ValueError(f'batch field {name!r} ({value.dtype}, shape {value.shape}) cannot be '
                       'a batch-sharded array; drop or encode it in the transform')
    if callable(spec):
      pspec = spec(value)
    else:
      pspec = rules_lib.logical_to_spec(('batch',) + (None,) * (value.ndim - 1), spec, mesh)
    out[name] = jax.make_array_from_process_local_data(NamedSharding(mesh, pspec), value)
  return out
