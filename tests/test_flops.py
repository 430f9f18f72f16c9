"""training/flops.py against XLA's own count of the compiled DiT forward."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs import moving_digits
from pflow_jax.models import dit
from pflow_jax.training import flops


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
