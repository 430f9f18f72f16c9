r"""Compiles a config's train step and sampling forward ahead of time for N devices and
prints their per-device memory and FLOPs; nothing is allocated (abstract inputs).

  python -m pflow_jax.aot --config=configs/pyramid_flow_sd3.py:768p --devices=8 \
      [--config.mesh.fsdp=8 --config.model.remat=full] [--json=aot.json]

Without accelerators --devices=N makes N host (CPU) devices; it must be given on
the command line (it is read before JAX starts). The train step is the real one
(AdamW, EMA, the pyramid loss) on pre-extracted latents and the config's text
inputs, sharded by the config's mesh and rules; `sample` is the sampler's largest
DiT program with classifier-free guidance (2 x batch): the whole clip at full
resolution, or for autoregressive configs the last frame at full resolution on a
full history window (the VAE decode is not included). Memory is XLA's buffer assignment
(`compiled.memory_analysis()`): arguments, outputs, temporaries, and the peak
estimate arguments + temporaries + outputs - aliased; a CPU compile approximates
an accelerator's (fusion and layouts differ).
"""

import os
import sys


def _host_devices_from_argv() -> None:
  """--devices=N as XLA's host device count: it must be set before jax is imported."""
  for arg in sys.argv[1:]:
    if arg.startswith('--devices='):
      flag = f'--xla_force_host_platform_device_count={int(arg.split("=", 1)[1])}'
      os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {flag}'.strip()


_host_devices_from_argv()

import json  # noqa: E402  (after the device count is set)

from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from pflow_jax import cli, config as config_lib  # noqa: E402
from pflow_jax.models import latent_codec  # noqa: E402
from pflow_jax.parallel import mesh as mesh_lib, rules  # noqa: E402
from pflow_jax.training import flops, state as state_lib, step as step_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'DiT config.', lock_config=True)
_DEVICES = flags.DEFINE_integer('devices', None, 'Host devices to compile for (no '
                                'accelerator); the mesh is the config\'s over them.')
_WHAT = flags.DEFINE_list('what', ['train', 'sample'], 'Programs: train, sample.')
_JSON = flags.DEFINE_string('json', None, 'Also write the results here.')
flags.mark_flags_as_required(['config'])

GIB = 2 ** 30


def abstract_batch(config: ml_collections.ConfigDict, batch: int, latent_channels: int,
                   sharding) -> dict[str, jax.ShapeDtypeStruct]:
  """The training batch's shapes: latents and the text inputs the config reads."""
  t, h, w = config_lib.latent_size(config)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype,  # noqa: E731
                                                   sharding=sharding(len(shape)))
  out = {'latents': spec((batch, t, h, w, latent_channels), jnp.float32)}
  length = config.text.max_length
  if config.text.encoder == 'toy':
    out['tokens'] = spec((batch, length), jnp.int32)
    return out
  for prefix in ('text_', 'null_text_'):
    out[prefix + 'seq'] = spec((batch, length, config.model.joint_attention_dim), jnp.float32)
    out[prefix + 'mask'] = spec((batch, length), jnp.bool_)
    out[prefix + 'pooled'] = spec((batch, config.model.pooled_projection_dim), jnp.float32)
  return out


def memory_row(compiled) -> dict[str, float]:
  m = compiled.memory_analysis()
  row = {name: getattr(m, f'{name}_size_in_bytes') / GIB
         for name in ('argument', 'output', 'temp', 'alias', 'generated_code')}
  row['peak'] = row['argument'] + row['output'] + row['temp'] - row['alias']
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  row['xla_tflops'] = float(cost.get('flops', 0.0)) / 1e12
  return row


def compile_train(config: ml_collections.ConfigDict, mesh) -> dict[str, float]:
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract, shardings)
  codec = latent_codec.SpaceToDepthCodec()  # unused: the batch holds latents
  channels = config.latent.channels
  batch = abstract_batch(config, config.data.global_batch_size, channels,
                         lambda ndim: step_lib.batch_sharding(mesh, config, ndim))
  jitted = step_lib.sharded_train_step(step_lib.make_train_step(config, graphdef, tx), mesh,
                                       config, shardings, batch, codec)
  units = step_lib.units_for_step(config, 0) if config.temporal.autoregressive else None
  with jax.set_mesh(mesh):
    compiled = jitted.lower(state, batch, codec, units).compile()
  row = memory_row(compiled)
  row['analytic_tflops'] = flops.train_step_flops(config) / 1e12 / mesh.size
  return row


def compile_sample(config: ml_collections.ConfigDict, mesh) -> dict[str, float]:
  """The sampler's largest DiT program with CFG (2 x batch): the whole clip at full
  resolution, or for autoregressive configs the last frame's full-resolution unit on a
  full history window (the sampler's `unit_velocity`, history recomputed)."""
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract.params, shardings.params)
  batch = 2 * max(1, mesh.shape['data'] * mesh.shape['fsdp'])
  sharding = lambda ndim: step_lib.batch_sharding(mesh, config, ndim)  # noqa: E731
  inputs = abstract_batch(config, batch, config.latent.channels, sharding)
  t, h, w = config_lib.latent_size(config)
  stages, c = config.pyramid.stages, config.latent.channels
  if config.temporal.autoregressive:
    window = config_lib.history_window(config, t)
    plan = step_lib.history_plans(config, window)[-1]
    inputs['latents'] = jax.ShapeDtypeStruct((batch, 1, h, w, c), jnp.float32,
                                             sharding=sharding(5))
    bank = [jax.ShapeDtypeStruct((batch, window, h >> (stages - 1 - level),
                                  w >> (stages - 1 - level), c), jnp.float32,
                                 sharding=sharding(5)) for level in plan.levels]
  else:
    bank, window, plan = [], 0, None

  def forward(params, inputs, bank):
    model = nnx.merge(graphdef, params)
    with rules.use_rules(config.rules):
      text = model.encode_text(inputs)
      t = jnp.full((inputs['latents'].shape[0],), 500.0)
      if plan is None:
        return model.velocity(inputs['latents'], t, text)
      return model.unit_velocity(inputs['latents'], bank, jnp.int32(window), plan, t, text)

  with jax.set_mesh(mesh):
    compiled = jax.jit(forward).lower(params, inputs, bank).compile()
  row = memory_row(compiled)
  row['batch'] = batch
  tokens = flops.stage_video_tokens(config)[-1] // (t if plan is not None else 1)
  if plan is not None:
    tokens += plan.tokens(window)
  row['video_tokens'] = tokens
  row['analytic_tflops'] = batch * flops.dit_forward_flops(
      config.model, tokens, flops.dit_text_tokens(config)) / 1e12 / mesh.size
  return row


def main(argv):
  del argv
  config = _CONFIG.value
  config_lib.validate(config)
  if _DEVICES.value is not None and jax.device_count() != _DEVICES.value:
    raise ValueError(f'--devices={_DEVICES.value} but JAX sees {jax.device_count()} devices '
                     f'({jax.devices()[0].platform}); give --devices only on a CPU host')
  mesh = mesh_lib.make_mesh(dict(config.mesh))
  mesh_lib.check_global_batch(config.data.global_batch_size, mesh)
  unknown = set(_WHAT.value) - {'train', 'sample'}
  if unknown:
    raise ValueError(f'--what: unknown {sorted(unknown)}; use train, sample')
  results = {'devices': mesh.size, 'mesh': dict(mesh.shape), 'remat': config.model.remat,
             'family': config.model.family, 'dtype': config.dtype}
  for what, fn in (('train', compile_train), ('sample', compile_sample)):
    if what in _WHAT.value:
      results[what] = fn(config, mesh)
      row = results[what]
      if config.model.scan_blocks:  # cost_analysis() counts a scan's body once
        row['xla_tflops'] = None
      xla = 'n/a (scanned blocks)' if row['xla_tflops'] is None else f"{row['xla_tflops']:.4g}"
      print(f"{what}: per device {row['peak']:.2f} GiB peak (arguments "
            f"{row['argument']:.2f}, temporaries {row['temp']:.2f}, outputs "
            f"{row['output']:.2f}, aliased {row['alias']:.2f}); XLA {xla} "
            f"TFLOP, analytic {row['analytic_tflops']:.4g} TFLOP per device", flush=True)
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  cli.run(main)
