r"""A prepared check of one GPU: numerics of its fast paths, then the training step's MFU.

  python -m benchmarks.gpu_check [--json=bench_results/gpu_check.json]   # one CUDA GPU
  python -m benchmarks.gpu_check --smoke [--json=...]                     # CPU, tiny sizes

Checks, in order, each a row of the printed table and of the JSON:

1. attention_parity: the DiT's forward (velocity) and its gradients (parameters
   and input latents) with model.attention 'cudnn' (flash attention through
   jax.nn.dot_product_attention) against 'xla', both bf16, the same perturbed
   weights and inputs: 2 blocks at the 384p width (24 heads x 64), 2 clips of
   2 latent frames at 384p (1,920 video + 128 text tokens, padded text,
   block-causal over frames). Max-abs errors, relative to the largest XLA
   value, must stay below the tolerances; XLA bf16 against fp32 is reported
   beside them as the bf16 noise floor. Without a GPU: 'skipped (no GPU)'.
2. bf16_vs_fp32: two training steps (the first at warm-up learning rate 0 only
   fills Adam's moments) of configs/moving_digits.py:tiny from perturbed
   weights, compute dtype bfloat16 against float32 (fp32 matmuls at 'highest'
   precision, not TF32): per-step losses and gradient norms within a relative
   bound, and the parameter updates within a relative L2 bound (--smoke: 1 block).
3. mfu: the jitted training step (AdamW, EMA, the temporal pyramid loss) of a
   DiT at configs/pyramid_flow_sd3.py:384p's token counts (960 / 1,320 / 2,940
   video tokens per stage column + 128 text), narrowed to --num_layers blocks
   of --num_heads x 64 so one GPU holds it, at --batch clips per step, for each
   --attention x --remat. Median of --steps timed steps after a warm-up step;
   MFU = training/flops.train_step_flops (the trainer's analytic 3x forward) /
   step time / the device's peak (training/flops.py's table, or
   --peak_tflops). Each variant is compiled first: one whose compiled peak
   memory exceeds the device's limit is recorded as an OOM without running;
   any error is recorded with its message. Variants left when --max_minutes
   have passed are recorded as skipped.

Exit status 1 when a correctness check that ran failed (MFU rows never fail).
--smoke runs the same code on CPU at tiny sizes (1-block DiTs, 32 video tokens
per latent frame, remat 'full' only, 2 timed steps) in well under a minute,
with XLA's cheaper backend optimisation: its timings check the path, not the
speed. MFU needs a peak: n/a on CPU unless --peak_tflops is given.
"""

import os
import sys


def _environment_from_argv() -> None:
  """Read before jax starts: smoke compiles cheaply; a GPU run may use 95% of the
  memory rather than XLA's 75% default preallocation (MFU batches fill the device)."""
  if any(a.lower() in ('--smoke', '--smoke=true', '--smoke=1') for a in sys.argv[1:]):
    flags_ = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {flags_}'.strip()
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.95')


_environment_from_argv()

import copy  # noqa: E402  (after the environment is set)
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import moving_digits, pyramid_flow_sd3  # noqa: E402
from pflow_jax import cli, config as config_lib  # noqa: E402
from pflow_jax.data.synthetic import random_text_embeddings, synthetic_batch  # noqa: E402
from pflow_jax.models import dit, latent_codec, layers, text as text_lib  # noqa: E402
from pflow_jax.models.flow_model import FlowModel  # noqa: E402
from pflow_jax.parallel import mesh as mesh_lib, rules  # noqa: E402
from pflow_jax.training import flops, state as state_lib, step as step_lib  # noqa: E402

_SMOKE = flags.DEFINE_bool('smoke', False, 'CPU smoke run: the same checks at tiny sizes.')
_JSON = flags.DEFINE_string('json', None, 'JSON output path (default '
                            'bench_results/gpu_check.json, with --smoke gpu_check_smoke.json).')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s of the device for MFU; 0: '
                           "training/flops.py's table by device kind (none for CPUs).")
_NUM_LAYERS = flags.DEFINE_integer('num_layers', None, 'MFU DiT blocks (default 4; smoke 1).')
_NUM_HEADS = flags.DEFINE_integer('num_heads', None, 'MFU DiT heads of 64 (default 24, the '
                                  'released width; smoke 2 heads of 32).')
_BATCH = flags.DEFINE_integer('batch', None, 'MFU clips per step, a multiple of 3 (one pyramid '
                              'stage column each third; default 48, smoke 3).')
_STEPS = flags.DEFINE_integer('steps', None, 'MFU timed steps per variant (default 5, smoke 2).')
_ATTENTION = flags.DEFINE_list('attention', ['xla', 'cudnn'], 'MFU attention implementations.')
_REMAT = flags.DEFINE_list('remat', None, 'MFU remat policies (default none,dots,full,offload; '
                           'smoke full).')
_MAX_MINUTES = flags.DEFINE_float('max_minutes', 7.0, 'Time after which the remaining MFU '
                                  'variants are skipped (the correctness checks always run).')

# Relative max-abs error bounds (to the reference's largest magnitude). bf16 keeps 8 bits of
# mantissa (0.4% per rounding); two implementations round the attention differently.
ATTENTION_TOLERANCE = {'forward': 2e-2, 'grad_params': 5e-2, 'grad_latents': 5e-2}
# bf16 against fp32 after two steps: per-step loss and gradient norm (relative), and the
# parameter update (relative L2: Adam's near-sign steps flip on tiny gradients).
BF16_BOUNDS = {'loss': 2e-2, 'grad_norm': 5e-2, 'update': 0.15}
GIB = 2 ** 30


# --- shared helpers ---------------------------------------------------------------------

def perturb(params: Any, seed: int, scale: float = 0.05) -> Any:
  """Parameters plus Gaussian noise, on the host: adaLN-Zero and the zero-initialised output
  layer then take part (at init the velocity is 0 and most gradients vanish)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: np.asarray(x) + scale * rng.standard_normal(x.shape).astype(x.dtype), params)


def max_abs_error(a: Any, b: Any) -> tuple[float, float]:
  """(largest |a - b| over all leaves, largest |b|): a tree's error and its scale."""
  err = max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  scale = max(float(np.max(np.abs(np.asarray(y, np.float32)))) for y in jax.tree.leaves(b))
  return err, scale


def within(errors: dict[str, float], bounds: dict[str, float]) -> bool:
  """True when every error is finite and at most its bound (NaN fails)."""
  return all(errors[k] <= bound for k, bound in bounds.items())


def initial_params(config: ml_collections.ConfigDict) -> Any:
  """The model's initial parameters (as init_state makes them), perturbed, on the host."""
  init = jax.jit(lambda: nnx.state(FlowModel(config, rngs=nnx.Rngs(config.seed)), nnx.Param))
  return perturb(jax.device_get(init()), seed=1)  # jitted: eager init compiles every op


def one_device_mesh() -> jax.sharding.Mesh:
  return mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])


def text_inputs(config: ml_collections.ConfigDict, n: int,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
  """The batch's text arrays the config reads: tokens (toy encoder) or embeddings with
  randomly padded masks (precomputed)."""
  if config.text.encoder == 'toy':
    return {'tokens': text_lib.tokenize(['a 3 moving left'] * n, config.text.max_length)}
  return random_text_embeddings(config, n, rng)


# --- 1. attention parity ----------------------------------------------------------------

def attention_parity(config: ml_collections.ConfigDict,
                     impls: tuple[str, str] = ('cudnn', 'xla'), batch: int = 2,
                     frames: int = 2) -> dict:
  """Errors of the DiT's forward and gradients with attention impls[0] against impls[1]
  (both bf16), and of impls[1] in bf16 against fp32 (the noise floor)."""
  base = copy.deepcopy(config)
  base.dtype = 'bfloat16'
  params = initial_params(base)
  rng = np.random.default_rng(2)
  _, h, w = config_lib.latent_size(base)
  latents = rng.standard_normal((batch, frames, h, w, base.latent.channels)).astype(np.float32)
  text = text_inputs(base, batch, rng)

  def run(impl: str, dtype: str):
    c = copy.deepcopy(base)
    c.model.attention, c.dtype = impl, dtype
    graphdef, _ = state_lib.abstract_model(c)

    def velocity(params, latents, text):
      model = nnx.merge(graphdef, params)
      with rules.use_rules(c.rules):
        cond = model.encode_text(text)
        t = jnp.full((latents.shape[0],), 500.0)
        return model.velocity(latents, t, cond).astype(jnp.float32)

    @jax.jit
    def forward_and_grads(params, latents, text):
      out, vjp = jax.vjp(lambda p, x: velocity(p, x, text), params, latents)
      cotangent = jax.random.normal(jax.random.key(3), out.shape, jnp.float32)
      return out, vjp(cotangent)

    precision = 'highest' if dtype == 'float32' else 'default'
    with jax.set_mesh(one_device_mesh()), jax.default_matmul_precision(precision):
      out, (g_params, g_latents) = jax.device_get(forward_and_grads(params, latents, text))
    return {'forward': out, 'grad_params': g_params, 'grad_latents': g_latents}

  test, ref = run(impls[0], 'bfloat16'), run(impls[1], 'bfloat16')
  fp32 = run(impls[1], 'float32')
  result = {'impls': list(impls), 'batch': batch, 'frames': frames,
            'tokens': frames * (h // base.model.patch_size) * (w // base.model.patch_size)
            + flops.dit_text_tokens(base), 'tolerance': ATTENTION_TOLERANCE}
  errors = {}
  for name in ATTENTION_TOLERANCE:
    err, scale = max_abs_error(test[name], ref[name])
    floor, _ = max_abs_error(ref[name], fp32[name])
    errors[name] = err / scale
    result[name] = {'max_abs_error': err, 'reference_max_abs': scale,
                    'relative_error': err / scale,
                    f'{impls[1]}_bf16_vs_fp32_relative_error': floor / scale}
  result['passed'] = within(errors, ATTENTION_TOLERANCE)
  return result


# --- 2. bf16 against fp32 ---------------------------------------------------------------

def train_steps(config: ml_collections.ConfigDict, params: Any, batch: dict, steps: int,
                precision: str) -> tuple[list[dict[str, float]], Any]:
  """Per-step loss and gradient norm of `steps` training steps from `params`, and the
  parameters after them."""
  mesh = one_device_mesh()
  codec = latent_codec.make_codec(config.latent)
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  graphdef, _, shardings = state_lib.state_shardings(config, mesh, tx)
  # init_state's state at `params` (its own init would compile the model's initialisers)
  state = jax.jit(lambda p: state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
      ema_params=jax.tree.map(jnp.copy, p)), out_shardings=shardings)(params)
  step = step_lib.jit_train_step(step_lib.make_train_step(config, graphdef, tx), mesh, config,
                                 shardings, batch, codec)
  metrics = []
  with jax.set_mesh(mesh), jax.default_matmul_precision(precision):
    for i in range(steps):
      state, m = step(state, batch, i)
      metrics.append({k: float(m[k]) for k in ('loss', 'grad_norm')})
  return metrics, jax.device_get(state.params)


def bf16_fp32_errors(metrics_bf16: list[dict[str, float]], metrics_fp32: list[dict[str, float]],
                     params0: Any, params_bf16: Any, params_fp32: Any) -> dict[str, float]:
  """Relative errors of a bf16 run against its fp32 reference: the largest per-step loss and
  gradient-norm errors, and ||update_bf16 - update_fp32|| / ||update_fp32||."""
  errors = {}
  for k in ('loss', 'grad_norm'):
    errors[k] = max(abs(b[k] - f[k]) / max(abs(f[k]), 1e-12)
                    for b, f in zip(metrics_bf16, metrics_fp32, strict=True))
  sq = lambda t: sum(float(np.sum(np.square(np.asarray(x, np.float64))))  # noqa: E731
                     for x in jax.tree.leaves(t))
  diff = jax.tree.map(lambda b, f: np.asarray(b, np.float64) - f, params_bf16, params_fp32)
  update = jax.tree.map(lambda f, p: np.asarray(f, np.float64) - p, params_fp32, params0)
  errors['update'] = math.sqrt(sq(diff)) / max(math.sqrt(sq(update)), 1e-30)
  return errors


def bf16_vs_fp32(config: ml_collections.ConfigDict, steps: int = 2) -> dict:
  """Two training steps in bf16 and fp32 from the same perturbed weights and batch."""
  params0 = initial_params(config)
  batch = synthetic_batch(config, np.random.default_rng(0))
  runs = {}
  for dtype, precision in (('bfloat16', 'default'), ('float32', 'highest')):
    c = copy.deepcopy(config)
    c.dtype = dtype
    runs[dtype] = train_steps(c, params0, batch, steps, precision)
  errors = bf16_fp32_errors(runs['bfloat16'][0], runs['float32'][0], params0,
                            runs['bfloat16'][1], runs['float32'][1])
  return {'steps': steps, 'num_layers': config.model.num_layers,
          'metrics': {k: v[0] for k, v in runs.items()}, 'errors': errors,
          'bounds': BF16_BOUNDS, 'passed': within(errors, BF16_BOUNDS)}


# --- 3. MFU -----------------------------------------------------------------------------

def mfu_config(smoke: bool, num_layers: int, num_heads: int, batch: int, attention: str,
               remat: str) -> ml_collections.ConfigDict:
  """configs/pyramid_flow_sd3.py:384p (its tokens, text and temporal pyramid) narrowed to
  num_layers x num_heads; --smoke shrinks frames, pixels, text and width instead."""
  c = pyramid_flow_sd3.get_config('384p')
  head_dim = 64
  if smoke:  # 4 latent frames of 8x16 (32 tokens per frame), 16 text tokens of width 64
    head_dim = 32
    c.data.update(image_size=64, image_width=128, num_frames=1 + 8 * 3)
    c.temporal.video_sync_group = -1
    c.text.max_length = 16
    c.model.update(joint_attention_dim=64, pooled_projection_dim=64)
  width = num_heads * head_dim
  c.model.update(num_layers=num_layers, num_attention_heads=num_heads,
                 attention_head_dim=head_dim, caption_projection_dim=width,
                 rope_axes_dim=(head_dim,), attention=attention, remat=remat)
  c.data.global_batch_size = batch
  c.mesh.update(data=1, fsdp=1)
  config_lib.validate(c)
  return c


def latents_batch(config: ml_collections.ConfigDict, rng: np.random.Generator) -> dict:
  """A training batch of pre-extracted latents and the config's text inputs."""
  t, h, w = config_lib.latent_size(config)
  b = config.data.global_batch_size
  latents = rng.standard_normal((b, t, h, w, config.latent.channels)).astype(np.float32)
  return {'latents': latents, **text_inputs(config, b, rng)}


def memory_limit() -> int | None:
  """Bytes one device may allocate (None where the backend does not say, e.g. CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('bytes_limit')


def time_train_step(config: ml_collections.ConfigDict, steps: int, peak: float | None,
                    row: dict[str, Any]) -> None:
  """Compile, check the compiled peak memory, then time the step (median of `steps`);
  fills `row` as it goes, so a variant that fails keeps what it measured."""
  mesh = one_device_mesh()
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx)
  codec = latent_codec.SpaceToDepthCodec()  # unused: the batch holds latents
  host_batch = latents_batch(config, np.random.default_rng(0))
  jitted = step_lib.sharded_train_step(step_lib.make_train_step(config, graphdef, tx), mesh,
                                       config, shardings, host_batch, codec)
  autoregressive = config.temporal.autoregressive
  units = lambda i: step_lib.units_for_step(config, i) if autoregressive else None  # noqa: E731
  row.update(train_tflops_per_step=flops.train_step_flops(config) / 1e12,
             video_tokens_per_step=flops.train_step_tokens(config))
  with jax.set_mesh(mesh):
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                                    sharding=s),
                                  abstract, shardings)
    start = time.perf_counter()
    compiled = jitted.lower(abstract_state, host_batch, codec, units(0)).compile()
    row['compile_s'] = time.perf_counter() - start
    m = compiled.memory_analysis()
    if m is not None:
      peak_bytes = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                    - m.alias_size_in_bytes)
      row['compiled_peak_gib'] = peak_bytes / GIB
      limit = memory_limit()
      if limit and peak_bytes > limit:
        raise MemoryError(f'OOM: compiled peak {peak_bytes / GIB:.1f} GiB > device limit '
                          f'{limit / GIB:.1f} GiB (not run)')
    state = state_lib.init_state(config, mesh, tx, shardings)
    batch = {k: jax.device_put(v, step_lib.batch_sharding(mesh, config, v.ndim))
             for k, v in host_batch.items()}
    state, metrics = jax.block_until_ready(compiled(state, batch, codec, units(0)))  # warm-up
    times = []
    for i in range(1, steps + 1):
      start = time.perf_counter()
      state, metrics = jax.block_until_ready(compiled(state, batch, codec, units(i)))
      times.append(time.perf_counter() - start)
    row['loss'] = float(metrics['loss'])
  step_s = statistics.median(times)
  row.update(step_s=step_s, step_times_s=times,
             tflops_per_s=row['train_tflops_per_step'] / step_s,
             tokens_per_s=row['video_tokens_per_step'] / step_s,
             mfu=row['train_tflops_per_step'] / step_s / peak if peak else None)
  if not math.isfinite(row['loss']):
    raise FloatingPointError(f'non-finite loss {row["loss"]}')


def mfu_settings(smoke: bool) -> dict[str, Any]:
  """The MFU sweep from the flags and the mode's defaults, checked before anything runs."""
  settings = dict(num_layers=_NUM_LAYERS.value or (1 if smoke else 4),
                  num_heads=_NUM_HEADS.value or (2 if smoke else 24),
                  batch=_BATCH.value or (3 if smoke else 48),
                  steps=_STEPS.value or (2 if smoke else 5),
                  attention=list(_ATTENTION.value),
                  remat=_REMAT.value or (['full'] if smoke
                                         else ['none', 'dots', 'full', 'offload']))
  unknown = ([a for a in settings['attention'] if a not in layers.ATTENTION_IMPLS]
             + [r for r in settings['remat'] if r not in dit.REMAT_POLICIES])
  if unknown:
    raise ValueError(f'unknown --attention/--remat {unknown}; known: {layers.ATTENTION_IMPLS}, '
                     f'{tuple(dit.REMAT_POLICIES)}')
  if settings['steps'] < 1:
    raise ValueError(f'--steps must be >= 1, got {settings["steps"]}')
  mfu_config(smoke, settings['num_layers'], settings['num_heads'], settings['batch'], 'xla',
             'none')  # validates the batch and the width
  return settings


def mfu_rows(smoke: bool, settings: dict[str, Any], has_gpu: bool, peak: float | None,
             deadline: float, rows: list[dict], save=lambda: None) -> None:
  """Appends one row per attention x remat variant to `rows`, calling save() after each
  (a run killed by a time limit keeps the rows it finished)."""
  num_layers, num_heads = settings['num_layers'], settings['num_heads']
  batch, steps = settings['batch'], settings['steps']
  for attention in settings['attention']:
    for remat in settings['remat']:
      row = {'attention': attention, 'remat': remat, 'num_layers': num_layers,
             'num_heads': num_heads, 'batch': batch, 'steps': steps}
      config = mfu_config(smoke, num_layers, num_heads, batch, attention, remat)
      row['video_tokens_per_stage'] = flops.train_video_tokens(config)
      row['text_tokens'] = flops.dit_text_tokens(config)
      if attention == 'cudnn' and not has_gpu:
        row['status'] = 'skipped (no GPU)'
      elif time.perf_counter() > deadline:
        row['status'] = 'skipped (time budget)'
      else:
        try:
          time_train_step(config, steps, peak, row)
          row['status'] = 'ok'
        except Exception as e:  # noqa: BLE001  (OOM, unsupported: recorded, not fatal)
          row['status'] = 'error'
          row['error'] = f'{type(e).__name__}: {e}'[:2000]
        gc.collect()
      rows.append(row)
      save()
      print(f"mfu {attention}/{remat}: {row['status']}"
            + (f" {row['step_s']:.4f} s/step" if 'step_s' in row else '')
            + (f" ({row['error'].splitlines()[0][:120]})" if 'error' in row else ''),
            flush=True)


# --- report -----------------------------------------------------------------------------

def _status(passed: bool) -> str:
  return 'pass' if passed else 'FAIL'


def table(report: dict) -> list[tuple[str, str, str, str]]:
  """(check, setting, value, result) rows of the whole report."""
  out = []
  a = report['checks']['attention_parity']
  if 'impls' in a:
    setting = f"{a['impls'][0]} vs {a['impls'][1]} bf16, {a['tokens']} tokens x {a['batch']}"
    value = ', '.join(f"{k} {a[k]['relative_error']:.1e} (tol {a['tolerance'][k]:.2g}, "
                      f"bf16 floor {a[k][a['impls'][1] + '_bf16_vs_fp32_relative_error']:.1e})"
                      for k in ATTENTION_TOLERANCE)
    out.append(('attention_parity', setting, value, _status(a['passed'])))
  else:
    out.append(('attention_parity', 'cudnn vs xla bf16', a.get('error', '-'), a['status']))
  b = report['checks']['bf16_vs_fp32']
  if 'errors' in b:
    value = ', '.join(f"{k} {v:.1e} (<= {b['bounds'][k]:.2g})" for k, v in b['errors'].items())
    out.append(('bf16_vs_fp32', f"moving_digits tiny L={b['num_layers']}, {b['steps']} steps",
                value,
                _status(b['passed'])))
  else:
    out.append(('bf16_vs_fp32', 'moving_digits tiny', b.get('error', '-'), b['status']))
  for r in report['mfu']:
    setting = (f"{r['attention']} remat={r['remat']} L={r['num_layers']} H={r['num_heads']} "
               f"B={r['batch']}")
    if r['status'] == 'ok':
      value = (f"{r['step_s']:.4f} s/step, {r['tflops_per_s']:.3g} TFLOP/s, "
               f"{r['tokens_per_s']:.3g} tok/s, {r.get('compiled_peak_gib', math.nan):.3g} GiB")
      result = 'n/a' if r['mfu'] is None else f"MFU {100 * r['mfu']:.1f}%"
    else:
      value = r.get('error', '').splitlines()[0][:100] if r.get('error') else '-'
      result = r['status']
    out.append(('mfu', setting, value, result))
  return out


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
  widths = [max(len(r[i]) for r in rows + [('check', 'setting', 'value', 'result')])
            for i in range(4)]
  line = lambda r: '  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
  print(line(('check', 'setting', 'value', 'result')))
  print('-' * len(line(('check', 'setting', 'value', 'result'))))
  for r in rows:
    print(line(r))


def _guarded(name: str, fn) -> dict:
  """A correctness check's result, or its error (a failed check) instead of a crash."""
  try:
    result = fn()
    result['status'] = 'pass' if result['passed'] else 'fail'
  except Exception as e:  # noqa: BLE001
    traceback.print_exc()
    result = {'status': 'error', 'passed': False, 'error': f'{type(e).__name__}: {e}'[:2000]}
  print(f"{name}: {result['status']}", flush=True)
  return result


def write_json(report: dict, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(report, f, indent=2, default=float)


def main(argv) -> int:
  del argv
  smoke = _SMOKE.value
  out_path = _JSON.value or ('bench_results/gpu_check_smoke.json' if smoke
                             else 'bench_results/gpu_check.json')
  backend = jax.default_backend()
  has_gpu = backend in ('gpu', 'cuda')
  devices = jax.devices()
  kind = devices[0].device_kind
  peak = flops.peak_tflops(kind, _PEAK.value)
  settings = mfu_settings(smoke)
  print(f'backend {backend}; {len(devices)} device(s): {[str(d) for d in devices]} '
        f'({kind}); peak {peak if peak else "n/a"} TFLOP/s per device', flush=True)
  start = time.perf_counter()
  checks = {}
  report = {'backend': backend, 'devices': [str(d) for d in devices], 'device_kind': kind,
            'smoke': smoke, 'peak_tflops': peak, 'checks': checks, 'mfu': []}
  if has_gpu:
    parity_config = mfu_config(False, 2, _NUM_HEADS.value or 24, 3, 'xla', 'none')
    checks['attention_parity'] = _guarded('attention_parity',
                                          lambda: attention_parity(parity_config))
  else:
    checks['attention_parity'] = {'status': 'skipped (no GPU)'}
  bf16_config = moving_digits.get_config('tiny')
  if smoke:  # one block: half the compile time of the two programs
    bf16_config.model.num_layers = 1
  checks['bf16_vs_fp32'] = _guarded('bf16_vs_fp32', lambda: bf16_vs_fp32(bf16_config))
  ran = [c for c in checks.values() if not c['status'].startswith('skipped')]
  report['passed'] = all(c['passed'] for c in ran)
  write_json(report, out_path)  # partial results survive a run killed during the MFU rows
  mfu_rows(smoke, settings, has_gpu, peak, start + 60 * _MAX_MINUTES.value, report['mfu'],
           save=lambda: write_json(report, out_path))
  report['total_s'] = time.perf_counter() - start
  print()
  print_table(table(report))
  write_json(report, out_path)
  print(f'wrote {out_path}')
  return 0 if report['passed'] else 1


if __name__ == '__main__':
  cli.run(main)
