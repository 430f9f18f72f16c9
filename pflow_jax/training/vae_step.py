"""VAE training: reconstruction + KL, and the optional PatchGAN after `disc_start`.

Follows the official LPIPSWithDiscriminator (video_vae/modeling_loss.py) minus
LPIPS, whose VGG weights cannot be downloaded here:
  generator  = pixel_weight * rec + kl_weight * KL + d_weight * (-mean D(x_hat))
  d_weight   = disc_weight * ||grad_W rec|| / (||grad_W g|| + 1e-4), clamped to
               [0, 1e4] and not differentiated, with W the decoder's last conv
  disc       = hinge: (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) / 2
rec is the per-sample mean of |x - x_hat| ('l1') or (x - x_hat)^2 ('l2', the
official choice) averaged over the batch; KL is summed over latent elements
and averaged over the batch. The posterior is sampled, as in training the
official VAE. All loss arithmetic is float32.
"""

from __future__ import annotations

from typing import Any

import dm_pix
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pflow_jax.data import pipeline
from pflow_jax.models import discriminator as disc_lib
from pflow_jax.models import vae as vae_lib
from pflow_jax.parallel import rules
from pflow_jax.training import state as state_lib

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class VAETrainState:
  """VAE and discriminator parameters with their optimizer states; one checkpoint pytree."""
  step: jax.Array
  params: nnx.State
  opt_state: Any
  ema_params: nnx.State
  disc_params: nnx.State
  disc_opt_state: Any


def vae_config(config: ml_collections.ConfigDict) -> vae_lib.VAEConfig:
  return vae_lib.VAEConfig(**config.vae)


def _models(config: ml_collections.ConfigDict, rngs: nnx.Rngs):
  vae = vae_lib.CausalVAE(vae_config(config), dtype=jnp.dtype(config.dtype), rngs=rngs)
  disc = disc_lib.PatchDiscriminator(config.vae.in_channels, config.loss.disc_width,
                                     config.loss.disc_layers, rngs=rngs)
  return vae, disc


def abstract_models(config: ml_collections.ConfigDict):
  """(vae graphdef, disc graphdef, abstract vae params, abstract disc params)."""
  vae, disc = nnx.eval_shape(lambda: _models(config, nnx.Rngs(config.seed)))
  vae_gd, vae_params = nnx.split(vae)
  disc_gd, disc_params = nnx.split(disc)
  return vae_gd, disc_gd, vae_params, disc_params


def state_shardings(config: ml_collections.ConfigDict, mesh: Mesh,
                    tx: optax.GradientTransformation, disc_tx: optax.GradientTransformation):
  """(vae graphdef, disc graphdef, abstract VAETrainState, its NamedShardings)."""
  vae_gd, disc_gd, vae_params, disc_params = abstract_models(config)
  replicated = NamedSharding(mesh, P())

  def part(params, optimizer):
    sh = rules.state_shardings(params, mesh, config.rules)
    return sh, *state_lib.optimizer_shardings(optimizer, params, sh, mesh)

  vae_sh, opt_abstract, opt_sh = part(vae_params, tx)
  disc_sh, disc_opt_abstract, disc_opt_sh = part(disc_params, disc_tx)
  abstract = VAETrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=vae_params,
                           opt_state=opt_abstract, ema_params=vae_params,
                           disc_params=disc_params, disc_opt_state=disc_opt_abstract)
  shardings = VAETrainState(step=replicated, params=vae_sh, opt_state=opt_sh,
                            ema_params=vae_sh, disc_params=disc_sh, disc_opt_state=disc_opt_sh)
  return vae_gd, disc_gd, abstract, shardings


def init_state(config: ml_collections.ConfigDict, mesh: Mesh,
               tx: optax.GradientTransformation, disc_tx: optax.GradientTransformation,
               shardings: VAETrainState) -> VAETrainState:
  def init():
    vae, disc = _models(config, nnx.Rngs(config.seed))
    params, disc_params = nnx.state(vae), nnx.state(disc)
    return VAETrainState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params),
                         disc_params=disc_params, disc_opt_state=disc_tx.init(disc_params))

  with jax.set_mesh(mesh):
    return jax.jit(init, out_shardings=shardings)()


def make_optimizers(config: ml_collections.ConfigDict):
  """(VAE optimizer, discriminator optimizer): AdamW with warm-up and clipping (official)."""
  disc_optim = config.optim.copy_and_resolve_references()
  disc_optim.lr = config.loss.disc_lr
  num_steps = config.train.num_steps
  return (state_lib.make_optimizer(config.optim, num_steps),
          state_lib.make_optimizer(disc_optim, num_steps))


def video_batch(batch: Batch) -> jax.Array:
  """uint8 video [B, T, H, W, C] -> float32 in [-1, 1]."""
  return pipeline.video_to_float(batch['video'])


def random_crops(video: jax.Array, rng: jax.Array, size: int) -> jax.Array:
  """A size x size spatial crop at a uniform random offset per clip (size 0: the whole frames).

  The VAE is convolutional, so it trains on crops and runs on whole frames, as
  the official one (256 px crops); crops make a CPU step several times cheaper.
  """
  b, t, h, w, c = video.shape
  if not size or (size >= h and size >= w):
    return video
  if size > h or size > w:
    raise ValueError(f'crop size {size} exceeds the frames {h}x{w}')
  ys = jax.random.randint(rng, (b,), 0, h - size + 1)
  xs = jax.random.randint(jax.random.fold_in(rng, 1), (b,), 0, w - size + 1)
  crop = lambda v, y, x: jax.lax.dynamic_slice(v, (0, y, x, 0), (t, size, size, c))
  return jax.vmap(crop)(video, ys, xs)


def reconstruction_error(x: jax.Array, x_hat: jax.Array, kind: str) -> jax.Array:
  """Per-sample mean |x - x_hat| (l1) or (x - x_hat)^2 (l2), float32 [B]."""
  diff = x.astype(jnp.float32) - x_hat.astype(jnp.float32)
  err = jnp.abs(diff) if kind == 'l1' else jnp.square(diff)
  return err.reshape(err.shape[0], -1).mean(axis=1)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real))
                + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def psnr(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Per-sample PSNR in dB of videos in [-1, 1], measured on the [0, 1] scale after clipping."""
  return _psnr_over(x, x_hat, tuple(range(1, x.ndim)))


def frame_psnr(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """PSNR in dB of every frame of every video [B, T, H, W, C] in [-1, 1]: [B, T]."""
  return _psnr_over(x, x_hat, tuple(range(2, x.ndim)))


def frame_ssim(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """SSIM of every frame of every video [B, T, H, W, C] in [-1, 1]: [B, T].

  On the [0, 1] scale after clipping, as PSNR; dm-pix's standard SSIM (11x11
  Gaussian window of sigma 1.5, K1 0.01, K2 0.03, valid positions, channels
  averaged).
  """
  a = (x.astype(jnp.float32) + 1.0) / 2.0
  b = (jnp.clip(x_hat.astype(jnp.float32), -1.0, 1.0) + 1.0) / 2.0
  frames = (-1,) + x.shape[2:]
  return dm_pix.ssim(a.reshape(frames), b.reshape(frames), max_val=1.0).reshape(x.shape[:2])


def _psnr_over(x: jax.Array, x_hat: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  a = (x.astype(jnp.float32) + 1.0) / 2.0
  b = (jnp.clip(x_hat.astype(jnp.float32), -1.0, 1.0) + 1.0) / 2.0
  mse = jnp.square(a - b).mean(axis=axes)
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-12))


def _decode_parts(vae: vae_lib.CausalVAE, z: jax.Array):
  """(features before the last conv, last conv's graphdef and state)."""
  features = vae.decoder.features(vae.post_quant_conv(z))
  conv_gd, conv_state = nnx.split(vae.decoder.conv_out)
  return features, conv_gd, conv_state


def _with_kernel(conv_state, kernel):
  state = jax.tree.map(lambda x: x, conv_state)
  state['kernel'] = kernel
  return state


def make_train_step(config: ml_collections.ConfigDict, vae_gd: nnx.GraphDef,
                    disc_gd: nnx.GraphDef, tx: optax.GradientTransformation,
                    disc_tx: optax.GradientTransformation):
  """train_step(state, batch, adversarial, whole_frames) -> (state, metrics), not jitted.

  `adversarial` and `whole_frames` are static: add the PatchGAN term, and train on
  the whole frames instead of train.crop_size crops.
  """
  loss_cfg = config.loss
  base_key = jax.random.key(config.seed)
  ema_decay = config.optim.ema_decay

  def generator_loss(params, disc_params, x, rng, adversarial):
    vae = nnx.merge(vae_gd, params)
    posterior = vae.encode(x)
    z = posterior.sample(rng)
    features, conv_gd, conv_state = _decode_parts(vae, z)

    def reconstruct(kernel):
      return nnx.merge(conv_gd, _with_kernel(conv_state, kernel))(features).astype(jnp.float32)

    kernel = conv_state['kernel'][...]
    x_hat = reconstruct(kernel)
    rec = loss_cfg.pixel_weight * reconstruction_error(x, x_hat, loss_cfg.recon).mean()
    kl = posterior.kl().mean()
    loss = rec + loss_cfg.kl_weight * kl
    metrics = {'rec_loss': rec, 'kl_loss': kl}
    if adversarial:
      disc = nnx.merge(disc_gd, disc_params)
      g_loss = -jnp.mean(disc(x_hat))
      # The adaptive weight balances the two gradients at the last layer.
      rec_grad = jax.grad(lambda k: loss_cfg.pixel_weight * reconstruction_error(
          x, reconstruct(k), loss_cfg.recon).mean())(kernel)
      g_grad = jax.grad(lambda k: -jnp.mean(disc(reconstruct(k))))(kernel)
      d_weight = jnp.linalg.norm(rec_grad) / (jnp.linalg.norm(g_grad) + 1e-4)
      d_weight = jax.lax.stop_gradient(jnp.clip(d_weight, 0.0, 1e4) * loss_cfg.disc_weight)
      loss = loss + d_weight * g_loss
      metrics.update(g_loss=g_loss, d_weight=d_weight)
    metrics['psnr'] = psnr(x, x_hat).mean()
    return loss, (metrics, jax.lax.stop_gradient(x_hat))

  def train_step(state: VAETrainState, batch: Batch, adversarial: bool = False,
                 whole_frames: bool = False) -> tuple[VAETrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(base_key, state.step)
    crop_rng, rng = jax.random.split(rng)
    with rules.use_rules(config.rules):
      x = random_crops(video_batch(batch), crop_rng, 0 if whole_frames else config.train.crop_size)
      x = rules.constrain(x, ('batch', 'frames', 'height', 'width', 'channels'))
      (loss, (metrics, x_hat)), grads = jax.value_and_grad(generator_loss, has_aux=True)(
          state.params, state.disc_params, x, rng, adversarial)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state_lib.ema_update(state.ema_params, params, ema_decay)
    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if adversarial:
      def disc_loss(dp):
        disc = nnx.merge(disc_gd, dp)
        return hinge_d_loss(disc(x), disc(x_hat))

      d_loss, d_grads = jax.value_and_grad(disc_loss)(disc_params)
      d_updates, disc_opt_state = disc_tx.update(d_grads, disc_opt_state, disc_params)
      disc_params = optax.apply_updates(disc_params, d_updates)
      metrics['d_loss'] = d_loss
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads))
    return VAETrainState(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema, disc_params=disc_params,
                         disc_opt_state=disc_opt_state), metrics

  return train_step


def channel_moments(z: jax.Array, noise_variance: jax.Array) -> jax.Array:
  """float32 [4, C]: per latent channel, over clips, frames and pixels, (count, sum, sum of
  squares) of the posterior mean z and the sum of the posterior variance noise_variance."""
  axes = tuple(range(z.ndim - 1))
  noise = noise_variance.astype(jnp.float32).sum(axis=axes)
  return jnp.concatenate([vae_lib.moments(z, axes), noise[None]])


def make_reconstruct_fn(config: ml_collections.ConfigDict, vae_gd: nnx.GraphDef):
  """reconstruct(params, video uint8) -> (x_hat, psnr [B], frame psnr [B, T], frame SSIM
  [B, T], latent moments [2, 3], channel moments [4, C]), jitted.

  Uses the posterior mean; x_hat is float in [-1, 1] (unclipped).
  """

  @jax.jit
  def reconstruct(params: nnx.State, video: jax.Array):
    vae = nnx.merge(vae_gd, params)
    with rules.use_rules(config.rules):
      x = video_batch({'video': video})
      posterior = vae.encode(x)
      z = posterior.mode()
      x_hat = vae.decode(z)
    return (x_hat, psnr(x, x_hat), frame_psnr(x, x_hat), frame_ssim(x, x_hat),
            vae_lib.latent_moments(z),
            channel_moments(z, jnp.exp(posterior.logvar)))

  return reconstruct
