"""training/flops.py against XLA's own count of the compiled DiT forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import moving_digits
from pflow_jax import config as config_lib
from pflow_jax.data import synthetic
from pflow_jax.models import dit, latent_codec
from pflow_jax.training import flops, state as state_lib, step as step_lib


@pytest.mark.parametrize('variant', ['', 'flux'])
def test_analytic_forward_flops_match_xla_cost_analysis(variant):
  """Within 10% (the analytic count skips norms, activations and softmax)."""
  config = moving_digits.get_config(variant)
  config.model.update(num_attention_heads=4, caption_projection_dim=256)  # width 256
  cfg = dit.DiTConfig(**config.model)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: dit.PyramidDiT(cfg, rngs=nnx.Rngs(0))))
  batch, frames, text_len = 2, 4, 10
  side = cfg.sample_size
  args = (jax.ShapeDtypeStruct((batch, frames, side, side, cfg.in_channels), jnp.float32),
          jax.ShapeDtypeStruct((batch,), jnp.float32),
          {'seq': jax.ShapeDtypeStruct((batch, text_len, cfg.joint_attention_dim), jnp.float32),
           'mask': jax.ShapeDtypeStruct((batch, text_len), jnp.bool_),
           'pooled': jax.ShapeDtypeStruct((batch, cfg.pooled_projection_dim), jnp.float32)})
  forward = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a))
  cost = forward.lower(state, *args).compile().cost_analysis()
  xla = (cost if isinstance(cost, dict) else cost[0])['flops']
  tokens = frames * (side // cfg.patch_size) ** 2
  analytic = batch * flops.dit_forward_flops(config.model, tokens, text_len)
  assert abs(analytic / xla - 1) < 0.1, (analytic, xla)


@pytest.mark.parametrize('compress', [True, pytest.param(False, marks=pytest.mark.slow)])
def test_autoregressive_step_flops_count_the_history_the_step_computes(compress):
  """The training loss of an autoregressive config (precomputed text: no text encoder
  in the count) against XLA's count of it: one target frame plus its (compressed or
  full-resolution) history, not whole clips. Width 512: at the toy width the
  elementwise work the count skips is over 10%."""
  config = moving_digits.get_config('ar')
  config.model.update(num_attention_heads=8, caption_projection_dim=512)
  config.text.update(encoder='precomputed', max_length=8)
  config.temporal.compress_history = compress
  config.data.global_batch_size = 3
  graphdef, state = state_lib.abstract_model(config)
  loss_fn = step_lib.make_loss_fn(config, graphdef)
  batch = synthetic.synthetic_batch(config, np.random.default_rng(0))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  codec = latent_codec.make_codec(config.latent)
  units = jax.ShapeDtypeStruct((config.pyramid.stages,), jnp.int32)
  lowered = jax.jit(lambda p, b, u: loss_fn(p, b, jax.random.key(0), codec, u)).lower(
      state, batch, units)
  cost = lowered.compile().cost_analysis()
  xla = (cost if isinstance(cost, dict) else cost[0])['flops']
  analytic = flops.train_step_flops(config) / 3
  assert abs(analytic / xla - 1) < 0.1, (analytic, xla)
  whole_clips = 3 * sum(flops.dit_forward_flops(config.model, tokens, 8)
                        for tokens in flops.stage_video_tokens(config))
  if compress:  # the old count: right for a full-resolution history, far off for the pyramid
    assert whole_clips / 3 / xla > 1.5


def test_autoregressive_sampling_flops_count_each_frame_and_its_history():
  """Frame by frame: the first frame alone (image steps), each later one with its history
  padded to the window (video steps). A full-resolution history of W frames is W frames
  of the target's tokens; the temporal pyramid's is less."""
  config = moving_digits.get_config('ar')
  frames = config_lib.latent_size(config)[0]
  per_frame = [t // frames for t in flops.stage_video_tokens(config)]
  text = flops.dit_text_tokens(config)
  image_steps, video_steps = config.sample.steps_per_stage, config.sample.video_steps_per_stage
  forward = lambda tokens: flops.dit_forward_flops(config.model, tokens, text)  # noqa: E731

  def expected(history_frames):
    first = 2 * sum(n * forward(t) for n, t in zip(image_steps, per_frame))
    later = 2 * sum(n * forward(t * (1 + history_frames)) for n, t in zip(video_steps, per_frame))
    return 3 * (first + (frames - 1) * later)

  config.temporal.compress_history = False
  full = flops.sample_flops(config, image_steps, 3, guidance=True)
  assert full == pytest.approx(expected(frames - 1))
  config.sample.history_window = 0
  assert flops.sample_flops(config, image_steps, 3, guidance=True) == pytest.approx(expected(0))
  config.sample.history_window = -1
  config.temporal.compress_history = True
  compressed = flops.sample_flops(config, image_steps, 3, guidance=True)
  assert expected(0) < compressed < full / 1.5


def test_evaluate_counts_the_sampling_flops_of_the_frames_it_generates():
  """An autoregressive model sampled past its training length: each extra frame adds its
  steps on a history of the window's frames, and the training FLOPs stay the training's."""
  from pflow_jax.eval import reports
  config = moving_digits.get_config('ar')
  config.temporal.compress_history = False
  config.sample.history_window = 2
  trained = reports.compute_of(config, 10)
  longer = reports.compute_of(config, 10, num_frames=2 * config.data.num_frames)
  assert longer['train_flops'] == trained['train_flops']
  frames = config_lib.latent_size(config)[0]
  per_frame = [t // frames for t in flops.stage_video_tokens(config)]
  text = flops.dit_text_tokens(config)
  extra_frame = 2 * sum(n * flops.dit_forward_flops(config.model, 3 * t, text)
                        for n, t in zip(config.sample.video_steps_per_stage, per_frame))
  assert longer['sample_flops_per_clip'] - trained['sample_flops_per_clip'] == pytest.approx(
      config.data.num_frames * extra_frame)
