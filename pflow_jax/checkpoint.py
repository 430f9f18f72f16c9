"""Orbax checkpoints: train state + resolved config + data-iterator state.

Each step directory holds three items: `state` (the sharded pytree), `config`
(JSON) and `data` (the input iterator's JSON state), so a rerun of the same
command resumes at exactly the next batch. Only committed steps are ever
listed by orbax; an interrupted save is invisible and the previous step is
used. A listed step that cannot be restored raises `CheckpointError`: we never
silently start again from scratch.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from pflow_jax import storage


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the current run."""


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs carrying the shardings the restored arrays must have."""

  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)

  return jax.tree.map(one, tree)


def _pytree_restore(target: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
  abstract = _abstract(target)
  return ocp.args.PyTreeRestore(
      item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=partial)


class Checkpointer:
  """Saves and restores (state, data state, config) under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               compress: bool = True):
    """compress=False writes the arrays uncompressed: orbax then needs no second copy of
    the state in host memory while it writes (the converter's 2B-parameter saves)."""
    self.directory = storage.path(workdir) / 'checkpoints'
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_names=('state', 'data', 'config'),
        item_handlers={'state': ocp.PyTreeCheckpointHandler(use_compression=compress),
                       'data': ocp.JsonCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, config: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)), force=True)

  def restore(self, step: int, target: Any) -> tuple[Any, dict, dict]:
    """Restores step `step` into the shapes, dtypes and shardings of `target`.

    `target` is a pytree of arrays or ShapeDtypeStructs (with shardings); the
    checkpoint may come from another mesh. Any missing or extra key, or a shape
    mismatch, raises CheckpointError naming the step directory.
    """
    path = self.directory / str(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=_pytree_restore(target),
          data=ocp.args.JsonRestore(),
          config=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types; all mean "cannot resume".
      raise CheckpointError(
          f'cannot restore checkpoint {path} into this run ({type(e).__name__}: {e}). '
          'It is corrupt or was written by an incompatible config; use another '
          '--workdir or delete that step directory to fall back to an earlier one.') from e
    _check_same_structure(target, restored.state, path)
    return restored.state, dict(restored.data), dict(restored.config)

  def restore_subtree(self, step: int, target: dict) -> dict:
    """Restores only the top-level state fields in `target` (e.g. {'ema_params': ...}),
    reading nothing else: sampling needs no optimizer state."""
    path = self.directory / str(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=_pytree_restore(target, partial=True)))
    except Exception as e:  # orbax raises many types; all mean "cannot restore".
      raise CheckpointError(f'cannot restore {sorted(target)} from checkpoint {path} '
                            f'({type(e).__name__}: {e})') from e
    _check_same_structure(target, restored.state, path)
    return restored.state

  def restore_config(self, step: int) -> dict:
    """The config saved with checkpoint `step` (JSON, as config.json)."""
    path = self.directory / str(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types; all mean "cannot read".
      raise CheckpointError(f'cannot read the config of checkpoint {path} '
                            f'({type(e).__name__}: {e})') from e
    return dict(restored.config)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _check_same_structure(target: Any, restored: Any, path: Any) -> None:
  want = jax.tree.structure(target)
  got = jax.tree.structure(restored)
  if want != got:
    raise CheckpointError(f'checkpoint {path} has a different state structure than this '
                          f'config:\n  expected {want}\n  found    {got}')
  for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(restored)):
    if a.shape != b.shape or a.dtype != b.dtype:
      raise CheckpointError(f'checkpoint {path}: array {b.shape} {b.dtype} where this '
                            f'config expects {a.shape} {a.dtype}')


def restore_ema_params(workdir: str, abstract: Any, shardings: Any,
                       step: int | None = None) -> tuple[Any, int]:
  """(EMA parameters, step) of a workdir's latest (or given) checkpoint, nothing else read.

  abstract / shardings: the state's `ema_params` shapes and their NamedShardings.
  """
  ckpt = Checkpointer(workdir)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None or step not in ckpt.all_steps():
      raise FileNotFoundError(f'no checkpoint {"" if step is None else step} in '
                              f'{ckpt.directory} (have {ckpt.all_steps()})')
    target = {'ema_params': jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)}
    return ckpt.restore_subtree(step, target)['ema_params'], step
  finally:
    ckpt.close()


def load_workdir_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The resolved config saved with a workdir's checkpoint `step` (default: the latest).

  A run resumed with changed overrides saves its new config with its later
  checkpoints, so this is the config those weights were trained with; a
  workdir with no checkpoint yet falls back to the config.json written when
  training started.
  """
  saved = None
  if (storage.path(workdir) / 'checkpoints').is_dir():
    ckpt = Checkpointer(workdir)
    try:
      step = ckpt.latest_step() if step is None else step
      if step is not None and step in ckpt.all_steps():
        saved = ckpt.restore_config(step)
    finally:
      ckpt.close()
  if saved is None:
    path = storage.path(workdir) / 'config.json'
    if not path.exists():
      raise FileNotFoundError(f'{path} not found: is {workdir} a training workdir?')
    saved = json.loads(path.read_text())
  config = ml_collections.ConfigDict(saved)
  # JSON turns the rules' tuples into lists; rules tables are tuples of pairs.
  config.rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                       for name, axes in config.rules)
  return config


def config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def write_config_json(workdir: str, config: dict) -> None:
  """Writes workdir/config.json on process 0 (temp file + rename), keeping another run's.

  An identical config.json (a fresh run restarted before its first
  checkpoint) is left as it is.
  """
  path = storage.path(workdir) / 'config.json'
  if path.exists():
    if json.loads(path.read_text()) == config:
      return
    raise FileExistsError(f'{path} holds the config of another run and {workdir} has no '
                          'checkpoint to resume: use a new --workdir, or delete config.json '
                          'to start this config there')
  if jax.process_index() == 0:
    storage.write_text_atomic(path, json.dumps(config, indent=2))


def checkpoint_steps(workdir: str) -> list[int]:
  """Committed checkpoint steps of a workdir (orbax's step folders), read without orbax."""
  directory = storage.path(workdir) / 'checkpoints'
  if not directory.is_dir():
    return []
  return sorted(int(d.name) for d in directory.iterdir() if d.name.isdigit())
