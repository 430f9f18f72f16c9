r"""Per-device memory of one MM-DiT block at the paper's token counts, with the tokens
sharded S ways, with and without Ulysses attention; and the step time it costs.

  python -m benchmarks.sequence_parallel [--out=bench_results/sequence_parallel.json]

Memory: one SD3 block at the released width (24 heads x 64, bf16 compute), forward and
backward of one clip, compiled for S = 1, 2, 4, 8 host devices on a `sequence` mesh
axis; nothing is allocated. The token counts are the largest training unit of
configs/pyramid_flow_sd3.py (the full-resolution target and its compressed history,
plus 128 text tokens): 3,068 at 384p and 15,488 at 768p. 'none' lets XLA place the
attention of sequence-sharded tokens (GSPMD); 'ulysses' is parallel/sequence.py.
Memory is XLA's buffer assignment (arguments + outputs + temporaries - aliased).
Time: the same block at 8 heads x 64 and the 384p token count, run on this host's
fake devices (they share its cores, so this is the overhead of the exchanges, not a
speed-up). Prints a table and writes JSON.
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8').strip()

import dataclasses  # noqa: E402  (after the device count is set)
import json  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from configs import pyramid_flow_sd3  # noqa: E402
from pflow_jax import config as config_lib  # noqa: E402
from pflow_jax.models import dit  # noqa: E402
from pflow_jax.parallel import mesh as mesh_lib, rules  # noqa: E402
from pflow_jax.training import flops  # noqa: E402

_OUT = flags.DEFINE_string('out', 'bench_results/sequence_parallel.json', 'JSON output path.')

GIB = 2 ** 30
SHARDS = (1, 2, 4, 8)


def unit_tokens(variant: str) -> int:
  """Text plus the largest training unit's video tokens of the paper config."""
  config = pyramid_flow_sd3.get_config(variant)
  return max(flops.train_video_tokens(config)) + flops.dit_text_tokens(config)


def block_step(cfg: dit.DiTConfig, text_tokens: int):
  """Loss and gradients of one joint block on (video, text) tokens, and its abstract state."""
  block = nnx.eval_shape(lambda: dit.JointTransformerBlock(
      cfg, context_pre_only=False, dtype=jnp.bfloat16, param_dtype=jnp.float32,
      rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(block)

  def loss(state, x, context, temb):
    with rules.use_rules(config_lib.DIT_RULES):
      x = rules.constrain(x, ('batch', 'length', 'embed'))
      out, ctx = nnx.merge(graphdef, state)(x, context, [(0, x.shape[1], temb)], temb,
                                            None, None)
    return jnp.mean(jnp.square(out.astype(jnp.float32))) + jnp.mean(ctx.astype(jnp.float32))

  return jax.jit(jax.grad(loss, argnums=(0, 1))), state


def inputs(cfg: dit.DiTConfig, tokens: int, text_tokens: int, abstract: bool):
  width = cfg.hidden_size
  shapes = ((1, tokens - text_tokens, width), (1, text_tokens, width), (1, width))
  if abstract:
    return [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in shapes]
  keys = jax.random.split(jax.random.key(0), 3)
  return [jax.random.normal(k, s, jnp.bfloat16) for k, s in zip(keys, shapes)]


def peak_gib(compiled) -> float:
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes) / GIB


def measure(cfg: dit.DiTConfig, tokens: int, shards: int, mode: str, text_tokens: int,
            timed: bool) -> dict:
  cfg = dataclasses.replace(cfg, sequence_parallel=mode)
  step, state = block_step(cfg, text_tokens)
  mesh = mesh_lib.make_mesh({'sequence': shards}, devices=jax.devices()[:shards])
  with jax.set_mesh(mesh):
    if not timed:
      args = [state, *inputs(cfg, tokens, text_tokens, abstract=True)]
      return {'peak_gib': peak_gib(step.lower(*args).compile())}
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype) + 0.01, state)
    args = [params, *inputs(cfg, tokens, text_tokens, abstract=False)]
    jax.block_until_ready(step(*args))
    start = time.perf_counter()
    for _ in range(3):
      jax.block_until_ready(step(*args))
    return {'seconds': (time.perf_counter() - start) / 3}


def main(argv):
  del argv
  paper = dit.DiTConfig(**pyramid_flow_sd3.get_config('384p').model)
  small = dataclasses.replace(paper, num_attention_heads=8, caption_projection_dim=512)
  results = {'memory': [], 'time': []}
  print('| tokens | S | attention | peak GiB per device | vs S = 1 |')
  print('|---|---|---|---|---|')
  for variant in ('384p', '768p'):
    tokens = unit_tokens(variant)
    base = None
    for shards in SHARDS:
      for mode in (('none',) if shards == 1 else ('none', 'ulysses')):
        row = measure(paper, tokens, shards, mode, 128, timed=False)
        base = base or row['peak_gib']
        row.update(variant=variant, tokens=tokens, shards=shards, attention=mode,
                   ratio=row['peak_gib'] / base)
        results['memory'].append(row)
        print(f"| {tokens:,} ({variant}) | {shards} | {mode} | {row['peak_gib']:.2f} | "
              f"{row['ratio']:.3f} |", flush=True)
  tokens = unit_tokens('384p')
  print(f'\n| block of 8 x 64 heads, {tokens:,} tokens | S | attention | s per step |')
  print('|---|---|---|---|')
  for shards, mode in ((1, 'none'), (4, 'none'), (4, 'ulysses'), (8, 'ulysses')):
    row = measure(small, tokens, shards, mode, 128, timed=True)
    row.update(tokens=tokens, shards=shards, attention=mode)
    results['time'].append(row)
    print(f"| | {shards} | {mode} | {row['seconds']:.3f} |", flush=True)
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(results, f, indent=1)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
