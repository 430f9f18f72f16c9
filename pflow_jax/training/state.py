"""Train state, optimizer, and their shardings over a mesh."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pflow_jax.models.flow_model import FlowModel
from pflow_jax.parallel import rules


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes; checkpointed as one pytree."""
  step: jax.Array          # int32 scalar: number of completed steps
  params: nnx.State        # fp32 master weights
  opt_state: Any
  ema_params: nnx.State


def make_optimizer(optim: ml_collections.ConfigDict,
                   num_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warm-up and global-norm clipping, for a run of num_steps.

  Weight decay applies to matrices and kernels only: biases, norm scales and
  other parameters of fewer than 2 dimensions are exempt (official recipe).
  After warm-up the rate stays constant (official recipe; `decay_steps=0`),
  follows a cosine to zero over `decay_steps` steps, or with `decay_steps=-1` a
  cosine over the run's steps after warm-up, `num_steps - warmup_steps` (short
  runs, e.g. the CPU VAE).
  """
  warmup = optim.warmup_steps
  if warmup < 0:
    raise ValueError(f'optim.warmup_steps must be >= 0, got {warmup}')
  decay = max(num_steps - warmup, 1) if optim.decay_steps == -1 else optim.decay_steps
  if decay < 0:
    raise ValueError(f'optim.decay_steps must be 0 (constant), -1 (to zero at the last step) '
                     f'or a step count, got {optim.decay_steps}')
  after = (optax.cosine_decay_schedule(optim.lr, decay) if decay > 0
           else optax.constant_schedule(optim.lr))
  lr = (optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), after], [warmup])
        if warmup > 0 else after)  # no warm-up: the first step at the full rate
  return optax.chain(
      optax.clip_by_global_norm(optim.clip_grad),
      optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                  weight_decay=optim.weight_decay, mask=_decayed))


def _decayed(params: Any) -> Any:
  """True for the parameters weight decay applies to (2 or more dimensions)."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def abstract_model(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, nnx.State]:
  """Graph definition and abstract (shape-only) parameters; nothing is allocated."""
  model = nnx.eval_shape(lambda: FlowModel(config, rngs=nnx.Rngs(config.seed)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError(f'FlowModel holds non-parameter state, which the trainer does not '
                     f'handle: {rest}')
  return graphdef, params


def optimizer_shardings(tx: optax.GradientTransformation, params: Any, param_shardings: Any,
                        mesh: Mesh) -> tuple[Any, Any]:
  """(abstract optimizer state, its NamedShardings): moments follow their parameters,
  scalars (step counts) are replicated."""
  opt_abstract = jax.eval_shape(tx.init, params)
  opt_sh = optax.tree_map_params(
      tx, lambda _, sharding: sharding, opt_abstract, param_shardings,
      transform_non_params=lambda _: NamedSharding(mesh, P()),
      is_leaf=lambda x: isinstance(x, NamedSharding))
  return opt_abstract, opt_sh


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  """The exponential moving average of the parameters after one step, in their dtype."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def state_shardings(config: ml_collections.ConfigDict, mesh: Mesh,
                    tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """(graphdef, abstract TrainState, TrainState of NamedShardings) for `mesh`.

  Parameter shardings come from the logical axis names on each parameter and
  the config's rules table; optimizer moments follow their parameters; scalars
  (step, counts) are replicated.
  """
  graphdef, params = abstract_model(config)
  param_sh = rules.state_shardings(params, mesh, config.rules)
  replicated = NamedSharding(mesh, P())
  opt_abstract, opt_sh = optimizer_shardings(tx, params, param_sh, mesh)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=opt_abstract, ema_params=params)
  shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                         ema_params=param_sh)
  return graphdef, abstract, shardings


def init_state(config: ml_collections.ConfigDict, mesh: Mesh,
               tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
  """Initialises parameters directly into their shardings (no host copy)."""

  def init():
    model = FlowModel(config, rngs=nnx.Rngs(config.seed))
    params = nnx.state(model, nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params))

  with jax.set_mesh(mesh):
    return jax.jit(init, out_shardings=shardings)()
