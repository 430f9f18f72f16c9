"""The official Pyramid Flow state dicts (PyTorch names and layouts) -> our parameters.

The DiTs:
Both families (models/dit.py): every parameter of ours has exactly one official
key, found by renaming its path; the layout transform follows the module type:
  Dense kernel [in, out]         <- Linear weight [out, in], transposed
  bias, RMSNorm scale            <- bias, weight, as they are
  SD3 patch projection [p*p*C, D] <- Conv2d weight [D, C, p, p], as (p, p, C) rows
The official SD3 sincos buffer (`pos_embed.pos_embed`) is recomputed from the
config, not read. `load_dit_params` checks everything before it returns: one
error lists every unmapped official key, every parameter left unfilled and
every shape mismatch. The causal VAE: its names and transposes come from
models/vae.py (`official_names`), checked and loaded the same way
(`check_vae_keys`, `load_vae_params`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import nnx

from pflow_jax.models import dit as dit_lib
from pflow_jax.models import vae as vae_lib

# Official keys that hold no parameter of ours (recomputed from the config).
SKIPPED_KEYS = ('pos_embed.pos_embed',)

# Renamed path segments: ours -> official.
_RENAMES = (('attn.to_out.', 'attn.to_out.0.'), ('ff.proj_in.', 'ff.net.0.proj.'),
            ('ff.proj_out.', 'ff.net.2.'), ('ff_context.proj_in.', 'ff_context.net.0.proj.'),
            ('ff_context.proj_out.', 'ff_context.net.2.'), ('x_embedder.proj.', 'x_embedder.'))


class ConversionError(ValueError):
  """The official state dict does not fit the configured model."""


def _official_name(path: str, family: str) -> str:
  name = path
  for ours, theirs in _RENAMES:
    name = name.replace(ours, theirs)
  if family == 'flux':  # FLUX names the text stream's q/k norms norm_added_{q,k}
    name = name.replace('attn.norm_add_', 'attn.norm_added_')
  if name.endswith('.kernel'):
    return name[:-len('kernel')] + 'weight'
  if name.endswith('.scale'):
    return name[:-len('scale')] + 'weight'
  return name


def _transform(path: str, cfg: dit_lib.DiTConfig) -> Callable[[np.ndarray], np.ndarray]:
  if path == 'pos_embed.proj.kernel':
    p, c = cfg.patch_size, cfg.in_channels
    return lambda w: np.transpose(w, (2, 3, 1, 0)).reshape(p * p * c, w.shape[0])
  if path.endswith('.kernel'):
    return lambda w: np.transpose(w)
  return lambda w: w


def dit_key_map(cfg: dit_lib.DiTConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
  """official key -> (our dotted parameter path, our shape), for every parameter of ours."""
  abstract = nnx.eval_shape(lambda: dit_lib.PyramidDiT(cfg, rngs=nnx.Rngs(0)))
  mapping = {}
  for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
    dotted = '.'.join(map(str, path))
    mapping[_official_name(dotted, cfg.family)] = (dotted, tuple(var.shape))
  return mapping


def _check(what: str, mapping: Mapping[str, tuple[str, tuple[int, ...]]],
           shapes: Mapping[str, tuple[int, ...]], convert_shape, skipped=()) -> None:
  """Raises ConversionError listing every unmapped official key, every parameter of ours
  without an official key and every shape that does not convert to ours."""
  unmapped = sorted(set(shapes) - set(mapping) - set(skipped))
  missing = sorted(mapping[k][0] for k in set(mapping) - set(shapes))
  mismatched = sorted(f'{key} {tuple(shapes[key])} -> {path} needs {shape}'
                      for key, (path, shape) in mapping.items()
                      if key in shapes and convert_shape(key, tuple(shapes[key])) != shape)
  problems = []
  if unmapped:
    problems.append(f'{len(unmapped)} official keys have no parameter here: {unmapped}')
  if missing:
    problems.append(f'{len(missing)} parameters are not in the official state dict: {missing}')
  if mismatched:
    problems.append(f'{len(mismatched)} shapes differ: {mismatched}')
  if problems:
    raise ConversionError(f'the official {what} does not fit this config: ' +
                          '; '.join(problems))


def check_dit_keys(cfg: dit_lib.DiTConfig,
                   shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[str, tuple[int, ...]]]:
  """dit_key_map(cfg), after checking it against an official state dict's {key: shape}."""
  mapping = dit_key_map(cfg)
  _check(f'DiT (model.family={cfg.family!r})', mapping, shapes,
         lambda key, shape: _transform(mapping[key][0], cfg)(np.broadcast_to(np.int8(0), shape)).shape,
         SKIPPED_KEYS)
  return mapping


class ConvertedParams(Mapping):
  """{our dotted path: fp32 array}, each read from the official state dict and converted
  when it is looked up (nothing is cached): a converter holds one tensor at a time."""

  def __init__(self, loaders: Mapping[str, Callable[[], np.ndarray]]):
    self._loaders = dict(loaders)

  def __getitem__(self, path: str) -> np.ndarray:
    return self._loaders[path]()

  def __iter__(self):
    return iter(self._loaders)

  def __len__(self) -> int:
    return len(self._loaders)


def load_dit_params(cfg: dit_lib.DiTConfig, official: Mapping[str, Callable[[], np.ndarray]],
                    shapes: Mapping[str, tuple[int, ...]]) -> ConvertedParams:
  """Our parameters {dotted path: fp32 array} from an official DiT state dict.

  official maps each official key to a loader of its array (so shards are read
  one tensor at a time, when looked up); shapes gives each key's shape, all
  checked (check_dit_keys) before anything is loaded.
  """
  mapping = check_dit_keys(cfg, shapes)

  def loader(key: str, path: str) -> Callable[[], np.ndarray]:
    return lambda: np.ascontiguousarray(_transform(path, cfg)(np.asarray(official[key]())),
                                        np.float32)

  return ConvertedParams({path: loader(key, path) for key, (path, _) in mapping.items()})


def filled(abstract: nnx.State, params: Mapping[str, np.ndarray], skip: int = 0) -> nnx.State:
  """An abstract parameter state with each leaf set to params[its dotted path], the path's
  first `skip` parts left out (e.g. 1 for a FlowModel's 'dit.').

  Each array moves to the device before the next is looked up, so with
  ConvertedParams the host holds the weights once, not twice.
  """
  for path, var in nnx.to_flat_state(abstract):
    var.set_value(jax.block_until_ready(jax.device_put(params['.'.join(map(str, path[skip:]))])))
  return abstract


def _vae_map(cfg: vae_lib.VAEConfig) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]]:
  """official key -> (our dotted path, our shape, axes that transpose the torch array)."""
  abstract = nnx.eval_shape(lambda: vae_lib.CausalVAE(cfg, rngs=nnx.Rngs(0)))
  shapes = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  return {key: ('.'.join(map(str, path)), tuple(shapes[path].shape), axes)
          for path, (key, axes) in vae_lib.official_names(abstract).items()}


def check_vae_keys(cfg: vae_lib.VAEConfig, shapes: Mapping[str, tuple[int, ...]]) -> dict:
  """The VAE's official key map, checked against an official state dict's {key: shape}."""
  mapping = _vae_map(cfg)
  _check('VAE', {k: (path, shape) for k, (path, shape, _) in mapping.items()}, shapes,
         lambda key, shape: tuple(shape[a] for a in mapping[key][2]))
  return mapping


def load_vae_params(cfg: vae_lib.VAEConfig, official: Mapping[str, Callable[[], np.ndarray]],
                    shapes: Mapping[str, tuple[int, ...]]) -> ConvertedParams:
  """Our VAE parameters {dotted path: fp32 array} from an official state dict (as
  load_dit_params)."""
  mapping = check_vae_keys(cfg, shapes)

  def loader(key: str, axes: tuple[int, ...]) -> Callable[[], np.ndarray]:
    return lambda: np.ascontiguousarray(np.transpose(np.asarray(official[key]()), axes),
                                        np.float32)

  return ConvertedParams({path: loader(key, axes) for key, (path, _, axes) in mapping.items()})
