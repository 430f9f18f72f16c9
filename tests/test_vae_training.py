"""VAE training (loss terms, GAN, loop, resume), latent pre-extraction, and DiT training on it."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import moving_digits, vae_moving_digits
from pflow_jax import checkpoint, config as config_lib
from pflow_jax.data import latent_encoding as encode_lib
from pflow_jax.data import datasets, latent_dataset, moving_digits as md
from pflow_jax.models import discriminator as disc_lib
from pflow_jax.models import latent_codec, vae as vae_lib, vae_load
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import state as state_lib, step as step_lib, vae_loop, vae_step


def test_loss_terms_follow_their_formulas():
  x = jnp.array([[0.0, 0.5, -1.0, 1.0]]).reshape(1, 1, 1, 4, 1)
  y = jnp.array([[0.5, 0.5, 0.0, 1.0]]).reshape(1, 1, 1, 4, 1)
  np.testing.assert_allclose(vae_step.reconstruction_error(x, y, 'l1'), [(0.5 + 1.0) / 4])
  np.testing.assert_allclose(vae_step.reconstruction_error(x, y, 'l2'), [(0.25 + 1.0) / 4])
  # PSNR on the [0, 1] scale: MSE of (x - y) / 2.
  mse = ((0.25 + 1.0) / 4) / 4
  np.testing.assert_allclose(vae_step.psnr(x, y), [-10 * np.log10(mse)], rtol=1e-6)
  # Per frame: the MSE of each frame alone; frame 1 is reconstructed exactly (floor 1e-12).
  clip = jnp.concatenate([x, x], axis=1)
  np.testing.assert_allclose(vae_step.frame_psnr(clip, jnp.concatenate([y, x], axis=1)),
                             [[-10 * np.log10(mse), 120.0]], rtol=1e-6)
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
  np.testing.assert_allclose(vae_step.hinge_d_loss(real, fake), 0.5 * (0.25 + 0.5))
  z = jnp.arange(2 * 3 * 1 * 1 * 2, dtype=jnp.float32).reshape(2, 3, 1, 1, 2)
  m = vae_lib.latent_moments(z)
  first, rest = np.asarray(z[:, :1]), np.asarray(z[:, 1:])
  np.testing.assert_allclose(m[0], [first.size, first.sum(), (first ** 2).sum()])
  np.testing.assert_allclose(m[1], [rest.size, rest.sum(), (rest ** 2).sum()])
  stats = vae_lib.latent_group_stats(2 * np.asarray(m))   # two equal batches summed
  np.testing.assert_allclose(stats['first_frame'], (first.mean(), first.std()), rtol=1e-6)
  np.testing.assert_allclose(stats['video'], (rest.mean(), rest.std()), rtol=1e-6)


@pytest.mark.slow
def test_discriminator_shapes_and_instance_norm():
  disc = disc_lib.PatchDiscriminator(1, width=8, num_layers=2, rngs=nnx.Rngs(0))
  logits = disc(jnp.zeros((2, 3, 32, 32, 1)))
  # 32 -> 16 -> 8 (stride 2), then two stride-1 4x4 convs with padding 1: 7, 6.
  assert logits.shape == (2, 3, 6, 6)
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3)) * 3 + 1
  y = np.asarray(disc_lib.instance_norm(x))
  np.testing.assert_allclose(y.mean(axis=(1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(1, 2)), 1, atol=1e-3)


def _single_mesh():
  return mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])


def _tiny_state(config, mesh):
  tx, disc_tx = vae_step.make_optimizers(config)
  vae_gd, disc_gd, _, shardings = vae_step.state_shardings(config, mesh, tx, disc_tx)
  state = vae_step.init_state(config, mesh, tx, disc_tx, shardings)
  return state, vae_step.make_train_step(config, vae_gd, disc_gd, tx, disc_tx)


def _video(config, seed):
  rng = np.random.default_rng(seed)
  s, t = config.data.image_size, config.data.num_frames
  return {'video': rng.integers(0, 256, (config.data.global_batch_size, t, s, s, 1), np.uint8)}


@pytest.mark.slow
def test_adversarial_step_weights_the_generator_loss_adaptively():
  config = vae_moving_digits.get_config('tiny')
  mesh = _single_mesh()
  state, step = _tiny_state(config, mesh)
  batch = _video(config, 0)
  with jax.set_mesh(mesh):
    plain_state, plain = jax.jit(lambda s, b: step(s, b, adversarial=False))(state, batch)
    adv_state, adv = jax.jit(lambda s, b: step(s, b, adversarial=True))(state, batch)
  for key in ('g_loss', 'd_weight', 'd_loss'):
    assert key in adv and key not in plain
  assert float(adv['d_weight']) > 0
  # Same reconstruction and KL terms; the total adds d_weight * g_loss.
  np.testing.assert_allclose(adv['rec_loss'], plain['rec_loss'], rtol=1e-6)
  expected = (plain['loss'] + adv['d_weight'] * adv['g_loss'])
  np.testing.assert_allclose(adv['loss'], expected, rtol=1e-5)
  # Only the adversarial step trains the discriminator (from the second step: the
  # warm-up's learning rate is 0 at step 0).
  with jax.set_mesh(mesh):
    plain_state, _ = jax.jit(lambda s, b: step(s, b, adversarial=False))(plain_state, batch)
    adv_state, _ = jax.jit(lambda s, b: step(s, b, adversarial=True))(adv_state, batch)
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), plain_state.disc_params,
                      state.disc_params)
  assert all(jax.tree.leaves(same))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), adv_state.disc_params,
                       state.disc_params)
  assert any(jax.tree.leaves(moved))


@pytest.mark.slow
def test_training_steps_reduce_the_reconstruction_error():
  config = vae_moving_digits.get_config('tiny')
  config.optim.warmup_steps = 1
  config.train.crop_size = 0   # the same frames every step
  mesh = _single_mesh()
  state, step = _tiny_state(config, mesh)
  digits = datasets.moving_digits_config(config.data)
  batch = {'video': np.stack([md.generate_example(i, digits, 'train')['video']
                              for i in range(config.data.global_batch_size)])}
  jitted = jax.jit(lambda s, b: step(s, b, adversarial=False))
  with jax.set_mesh(mesh):
    losses = []
    for _ in range(12):
      state, metrics = jitted(state, batch)
      losses.append(float(metrics['rec_loss']))
  assert losses[-1] < 0.7 * losses[0], losses


def test_the_last_whole_frame_steps_train_on_whole_frames_after_the_gan_starts():
  config = vae_moving_digits.get_config('tiny')
  config.train.update(num_steps=6, whole_frame_steps=2)
  config.loss.disc_start = 3
  assert [vae_loop.step_variant(config, s) for s in range(6)] == [
      (False, False), (False, False), (False, False), (True, False), (True, True), (True, True)]
  config.train.crop_size = 0  # every step is on whole frames: one compiled variant
  assert [vae_loop.step_variant(config, s)[1] for s in range(6)] == [False] * 6
  config.train.whole_frame_steps = 7
  with pytest.raises(ValueError, match='whole_frame_steps'):
    config_lib.validate_vae(config)


@pytest.mark.slow
def test_a_whole_frame_step_equals_the_step_of_an_uncropped_config():
  config = vae_moving_digits.get_config('tiny')
  assert config.train.crop_size < config.data.image_size
  uncropped = config.copy_and_resolve_references()
  uncropped.train.crop_size = 0
  mesh = _single_mesh()
  state, step = _tiny_state(config, mesh)
  _, uncropped_step = _tiny_state(uncropped, mesh)
  batch = _video(config, 0)
  with jax.set_mesh(mesh):
    whole = jax.jit(lambda s, b: step(s, b, whole_frames=True))(state, batch)[1]
    reference = jax.jit(uncropped_step)(state, batch)[1]
    cropped = jax.jit(step)(state, batch)[1]
  np.testing.assert_allclose(whole['loss'], reference['loss'], rtol=1e-6)
  np.testing.assert_allclose(whole['grad_norm'], reference['grad_norm'], rtol=1e-5)
  assert abs(float(cropped['loss']) - float(whole['loss'])) > 1e-4


@pytest.fixture(scope='module')
def vae_run(tmp_path_factory):
  """A tiny VAE trained for 4 steps on tiny moving digits, the last on whole frames, batch
  sharded over the 8 test devices (without the GAN, whose step compiles slowly: see the
  adversarial test)."""
  workdir = str(tmp_path_factory.mktemp('vae'))
  config = vae_moving_digits.get_config('tiny')
  config.data.data_dir = str(tmp_path_factory.mktemp('data'))
  config.data.global_batch_size = 8
  config.loss.disc_start = -1
  config.train.whole_frame_steps = 1
  metrics = vae_loop.train_vae(config, workdir)
  return workdir, config, metrics


@pytest.mark.slow  # the resume compiles the VAE step again: about 2 minutes on 2 cores
def test_vae_loop_checkpoints_evaluates_and_resumes(vae_run, tmp_path):
  workdir, config, metrics = vae_run
  assert np.isfinite(metrics['eval_psnr']) and 'd_loss' not in metrics  # no GAN
  assert 0 <= metrics['eval_informative_channels'] <= config.vae.latent_channels
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_0000004.png'))
  with open(os.path.join(workdir, vae_load.STATS_FILE)) as f:
    stats = json.load(f)
  assert stats['step'] == 4 and stats['first_frame_scale'] > 0
  # Resuming for two more steps continues from step 4.
  config = config_lib.ml_collections.ConfigDict(config.to_dict())
  config.train.num_steps = 6
  more = vae_loop.train_vae(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4', '6']
  assert np.isfinite(more['loss'])


def _ssim_by_definition(a, b, size=11, sigma=1.5, k1=0.01, k2=0.03):
  # Wang et al. 2004: local Gaussian-weighted statistics at every valid window position.
  g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
  w = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = k1 ** 2, k2 ** 2
  values = []
  for i in range(a.shape[0] - size + 1):
    for j in range(a.shape[1] - size + 1):
      pa, pb = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
      ma, mb = (w * pa).sum(), (w * pb).sum()
      va, vb = (w * pa * pa).sum() - ma ** 2, (w * pb * pb).sum() - mb ** 2
      cov = (w * pa * pb).sum() - ma * mb
      values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
  return np.mean(values)


def test_frame_ssim_follows_its_definition_per_frame():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (1, 2, 16, 16, 1)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1.2, 1.2).astype(np.float32)
  got = np.asarray(vae_step.frame_ssim(jnp.asarray(x), jnp.asarray(y)))
  # On the [0, 1] scale, the reconstruction clipped first (as PSNR).
  want = [_ssim_by_definition((x[0, t, ..., 0] + 1) / 2, (np.clip(y[0, t, ..., 0], -1, 1) + 1) / 2)
          for t in range(2)]
  np.testing.assert_allclose(got, [want], rtol=1e-4)
  np.testing.assert_allclose(vae_step.frame_ssim(jnp.asarray(x), jnp.asarray(x)), [[1, 1]],
                             rtol=1e-5)
  assert 0.5 < want[0] < 0.99  # a real difference, not the identity


def test_evaluation_counts_informative_channels_and_averages_psnr_per_clip_and_frame():
  # Latents with known per-channel spread over the clips (std 1, 0, 0.2, 0.03;
  # channel 1 a constant offset) and posterior noise variance (0.5, 0, 0.09,
  # 1e-4): channel 0 is informative (variance 1 > 0.5), channel 1 carries
  # nothing, channel 2 is below its noise (0.04 < 0.09), channel 3 above (9e-4 > 1e-4).
  rng = np.random.default_rng(0)
  clips = [{'video': np.full((3, 4, 4, 1), i, np.uint8)} for i in range(10)]
  stds = np.array([1.0, 0.0, 0.2, 0.03])
  noise = np.array([0.5, 0.0, 0.09, 1e-4])
  latents = rng.normal(size=(10, 2, 2, 2, 4)) * stds + np.array([0.0, 5.0, 0.0, 0.0])

  # Per-frame PSNRs with a known mean over the clips: frame t of clip i scores i + 10 t;
  # clip i scores 2 i: mean 9, sample std 2 * 3.0277 (of 0..9), standard error that / sqrt(10).
  frame_scores = np.arange(10)[:, None] + 10.0 * np.arange(3)
  clip_scores = 2.0 * np.arange(10)

  def reconstruct(params, video):
    clip = video[:, 0, 0, 0, 0]
    z = jnp.asarray(latents[clip], jnp.float32)
    x = jnp.asarray(video, jnp.float32) / 127.5 - 1
    noise_variance = jnp.broadcast_to(jnp.asarray(noise, jnp.float32), z.shape)
    return (x, jnp.asarray(clip_scores[clip]), jnp.asarray(frame_scores[clip]),
            jnp.asarray(frame_scores[clip]) / 100.0,
            vae_lib.latent_moments(z), vae_step.channel_moments(z, noise_variance))

  metrics, _, _ = vae_loop.evaluate(reconstruct, None, clips, num_examples=10, batch_size=3)
  sample_variance = latents.reshape(-1, 4).var(axis=0)
  np.testing.assert_array_equal(sample_variance > noise, [True, False, False, True])
  assert metrics['eval_informative_channels'] == 2
  np.testing.assert_allclose(metrics['video_mean'], latents[:, 1:].mean(), rtol=1e-5)
  np.testing.assert_allclose([metrics[f'eval_psnr_frame{t}'] for t in range(3)],
                             [4.5, 14.5, 24.5])
  np.testing.assert_allclose(metrics['eval_psnr'], 9.0)
  np.testing.assert_allclose(metrics['eval_ssim'], 0.145, rtol=1e-6)  # mean of the frames'
  np.testing.assert_allclose(metrics['eval_psnr_stderr'], 2 * 3.0276504 / np.sqrt(10), rtol=1e-6)


def test_evaluating_a_checkpoint_matches_the_trainers_own_evaluation(vae_run):
  # The trainer scored its step-4 EMA weights on the 8-device mesh; the restored
  # checkpoint, scored on one device, must give the same numbers.
  workdir, config, metrics = vae_run
  again = vae_loop.evaluate_workdir(workdir, config.train.eval_examples, step=4)
  assert again['step'] == 4 and again['eval_clips'] == config.train.eval_examples
  for key in ('eval_psnr', 'eval_psnr_stderr', 'eval_psnr_frame0', 'eval_psnr_frame4'):
    np.testing.assert_allclose(again[key], metrics[key], rtol=1e-4, err_msg=key)
  assert again['eval_informative_channels'] == metrics['eval_informative_channels']


def test_loaded_codec_uses_the_measured_normalisation(vae_run):
  workdir, _, _ = vae_run
  vae_config, _, _, step = vae_load.load_vae(workdir)
  with open(os.path.join(workdir, vae_load.STATS_FILE)) as f:
    stats = json.load(f)
  assert vae_config.first_frame_shift == stats['first_frame_shift']
  assert vae_config.video_scale == stats['video_scale']
  config = moving_digits.get_config('tiny')
  config.latent.update(kind='vae', vae_workdir=workdir, temporal_factor=4, channels=8)
  with pytest.raises(ValueError, match='latent.channels is 8, the VAE has 4'):
    latent_codec.make_codec(config.latent)


def _dit_config_on(vae_run, data_dir):
  """The tiny DiT config reading 5-frame videos through the tiny VAE."""
  workdir, vae_config, _ = vae_run
  config = moving_digits.get_config('tiny')
  config.data.update(num_frames=5, data_dir=data_dir)
  config.latent.update(kind='vae', vae_workdir=workdir, temporal_factor=4, channels=4)
  config_lib.validate(config)
  return config


def test_encode_writes_the_in_loop_latents_and_resumes(vae_run, tmp_path):
  data_dir = vae_run[1].data.data_dir
  config = _dit_config_on(vae_run, data_dir)
  out = str(tmp_path / 'latents')
  info = encode_lib.encode_dataset(config, out, ['train', 'test'], part_size=24, batch_size=5)
  assert info['splits'] == {'train': 64, 'test': 16}
  codec = latent_codec.make_codec(config.latent)
  videos = datasets.source(config, 'train')
  stored = latent_dataset.load(out, 'train')
  idx = [0, 30, 63]
  want = jax.jit(lambda c, v: c.encode(v))(
      codec, np.stack([videos[i]['video'] for i in idx]).astype(np.float32) / 127.5 - 1)
  got = np.stack([stored[i]['latents'] for i in idx])
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert [stored[i]['caption'] for i in idx] == [videos[i]['caption'] for i in idx]

  # An interrupted run (a missing part, no metadata) is completed identically.
  part = latent_dataset.part_path(out, 'train', 1, 3)
  with open(part, 'rb') as f:
    before = f.read()
  os.remove(part)
  os.remove(os.path.join(out, latent_dataset.INFO_FILE))
  encode_lib.encode_dataset(config, out, ['train', 'test'], part_size=24, batch_size=5)
  with open(part, 'rb') as f:
    assert f.read() == before


def test_resumed_encode_refuses_parts_of_another_vae_checkpoint(vae_run, tmp_path):
  vae_copy = str(tmp_path / 'vae')
  shutil.copytree(vae_run[0], vae_copy)
  config = _dit_config_on(vae_run, vae_run[1].data.data_dir)
  config.latent.vae_workdir = vae_copy
  out = str(tmp_path / 'latents')
  encode_lib.encode_dataset(config, out, ['test'], part_size=8, batch_size=8)
  part = latent_dataset.part_path(out, 'test', 1, 2)
  os.remove(part)  # interrupted before its last part
  os.remove(os.path.join(out, latent_dataset.INFO_FILE))
  # The VAE trains on: its latest checkpoint is no longer the one the parts came from.
  checkpoints = os.path.join(vae_copy, 'checkpoints')
  latest = checkpoint.checkpoint_steps(vae_copy)[-1]
  newer = os.path.join(checkpoints, str(latest + 2))
  shutil.copytree(os.path.join(checkpoints, str(latest)), newer)
  with pytest.raises(ValueError, match=f'another encoding.*vae_step: parts have {latest}, '
                                       f'this run {latest + 2}'):
    encode_lib.encode_dataset(config, out, ['test'], part_size=8, batch_size=8)
  assert not os.path.exists(part)
  shutil.rmtree(newer)
  encode_lib.encode_dataset(config, out, ['test'], part_size=8, batch_size=8)  # same VAE again
  assert os.path.exists(part)


@pytest.mark.slow
def test_dit_step_on_stored_latents_equals_step_on_videos(vae_run, tmp_path):
  data_dir = vae_run[1].data.data_dir
  config = _dit_config_on(vae_run, data_dir)
  out = str(tmp_path / 'latents')
  encode_lib.encode_dataset(config, out, ['train'], part_size=64, batch_size=6)
  codec = latent_codec.make_codec(config.latent)
  mesh = _single_mesh()
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  graphdef, _, shardings = state_lib.state_shardings(config, mesh, tx)
  loss_fn = jax.jit(step_lib.make_loss_fn(config, graphdef))
  params = state_lib.init_state(config, mesh, tx, shardings).params
  videos, stored = datasets.source(config, 'train'), latent_dataset.load(out, 'train')
  from pflow_jax.models import text as text_lib
  tokens = text_lib.tokenize([videos[i]['caption'].decode() for i in range(6)], 40)
  on_video = {'video': np.stack([videos[i]['video'] for i in range(6)]), 'tokens': tokens}
  on_latents = {'latents': np.stack([stored[i]['latents'] for i in range(6)]), 'tokens': tokens}
  rng = jax.random.key(3)
  with jax.set_mesh(mesh):
    a, _ = loss_fn(params, on_video, rng, codec)
    b, _ = loss_fn(params, on_latents, rng, codec)
  np.testing.assert_allclose(a, b, rtol=1e-4)


def test_latent_dataset_mismatch_is_an_error(vae_run, tmp_path):
  config = _dit_config_on(vae_run, vae_run[1].data.data_dir)
  out = str(tmp_path / 'latents')
  encode_lib.encode_dataset(config, out, ['test'], part_size=64, batch_size=8)
  with pytest.raises(ValueError, match='shape'):
    latent_dataset.check_compatible(out, (9, 8, 8, 4), None)
  norm = latent_codec.normalisation(latent_codec.make_codec(config.latent))
  latent_dataset.check_compatible(out, (2, 8, 8, 4), norm)
  with pytest.raises(ValueError, match='Re-encode'):
    latent_dataset.check_compatible(out, (2, 8, 8, 4), {**norm, 'video_scale': 3.0})


def test_a_latent_dataset_leads_back_to_the_videos_it_was_encoded_from(vae_run, tmp_path):
  """evaluate scores a model trained on stored latents against their source videos."""
  config = _dit_config_on(vae_run, vae_run[1].data.data_dir)
  out = str(tmp_path / 'latents')
  encode_lib.encode_dataset(config, out, ['test'], part_size=64, batch_size=8)
  on_latents = config_lib.ml_collections.ConfigDict(config.data.to_dict())
  on_latents.update(name='latents', latent_dir=out, global_batch_size=5)
  source = latent_dataset.source_videos_data(on_latents)
  assert source.name == 'moving_digits' and source.global_batch_size == 5
  assert latent_dataset.source_videos_data(config.data) is config.data
  videos, again = datasets.source(config, 'test'), datasets.source(
      config_lib.ml_collections.ConfigDict({**config.to_dict(), 'data': source.to_dict()}),
      'test')
  assert len(again) == len(videos) == 16
  for i in (0, 15):
    np.testing.assert_array_equal(again[i]['video'], videos[i]['video'])
    assert again[i]['caption'] == videos[i]['caption']


def test_learning_rate_decays_over_the_run_and_overrides_stay_independent():
  """decay_steps -1 is the cosine over the run's steps after warm-up, D = num_steps - warmup:
  the unit-gradient update (b1 = b2 = 0) is lr (1 + cos(pi s / D)) / 2; setting one field
  leaves the other."""
  config = vae_moving_digits.get_config('')
  assert config_lib.vae_base_config().optim.decay_steps == -1
  config.optim.update(b1=0.0, b2=0.0, eps=1e-12, weight_decay=0.0, warmup_steps=1,
                      decay_steps=-1)  # the digits VAE sets its own
  config.train.num_steps = 40
  tx, _ = vae_step.make_optimizers(config)
  params = jnp.zeros(())
  opt_state = tx.init(params)
  rates = []
  for _ in range(41):
    update, opt_state = tx.update(jnp.ones(()), opt_state, params)
    rates.append(-float(update))
  s = np.arange(41) - 1.0
  decay = 40 - 1
  expected = np.where(s < 0, 0.0, config.optim.lr * 0.5 * (1 + np.cos(np.pi * np.clip(s, 0, decay)
                                                                       / decay)))
  np.testing.assert_allclose(rates, expected, atol=1e-7)
  config.optim.decay_steps = 7
  assert config.train.num_steps == 40


def test_random_crops_are_windows_of_each_clip():
  video = jnp.arange(3 * 2 * 8 * 8 * 1, dtype=jnp.float32).reshape(3, 2, 8, 8, 1)
  crops = np.asarray(vae_step.random_crops(video, jax.random.key(0), 4))
  assert crops.shape == (3, 2, 4, 4, 1)
  for clip, crop in zip(np.asarray(video), crops):
    first = crop[0, 0, 0, 0]  # values are unique: they locate the window
    t, y, x, _ = np.argwhere(clip == first)[0]
    assert t == 0 and y <= 4 and x <= 4
    np.testing.assert_array_equal(crop, clip[:, y:y + 4, x:x + 4])
  assert vae_step.random_crops(video, jax.random.key(0), 0) is video
  with pytest.raises(ValueError, match='exceeds'):
    vae_step.random_crops(video[:, :, :4], jax.random.key(0), 6)
