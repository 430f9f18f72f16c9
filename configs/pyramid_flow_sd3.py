"""The paper's models: pyramid-flow-sd3 at 384p (640x384, 5 s) and 768p (1280x768, 10 s).

  python -m pflow_jax.train --config=configs/pyramid_flow_sd3.py:384p --workdir=gs://... \
      --config.data.latent_dir=gs://.../latents_384p --config.latent.vae_workdir=... \
      --config.text.embeddings=.../text_384p.npz [--config.train.init_from=<converted>]

The SD3-medium-sized MM-DiT (24 layers, 24 heads x 64, 2,028,334,144 parameters,
the same network at both resolutions) trained on pre-extracted latents of the
8x8x8 causal VAE (`python -m pflow_jax.encode`) with precomputed SD3 text
embeddings of the captions (T5-XXL sequence 4096, CLIP-L+G pooled 2048;
`python -m pflow_jax.embed_text`). The released weights convert with
`python -m pflow_jax.convert` (README).
Hyper-parameters follow the official scripts/train_pyramid_flow.sh: AdamW
lr 5e-5, betas (0.9, 0.95), weight decay 1e-4, clip 1.0, 1000 warm-up steps,
bf16 compute with fp32 masters, FSDP over all devices, rematerialised blocks run as
one lax.scan (`model.scan_blocks`: one block compiled; the parameters keep their names).
Latent frames: 16 at 384p (121 pixel frames), 31 at 768p (241).
Official weights cannot be downloaded in this environment: these configs are
validated, their parameter counts and key maps tested, and their steps compiled
(`python -m pflow_jax.aot`), not trained here.
"""

from pflow_jax import config as config_lib

# (height, width, latent frames) per variant.
_SIZES = {'384p': (384, 640, 16), '768p': (768, 1280, 31)}


def get_config(arg: str = '384p'):
  if not config_lib.variants(arg, tuple(_SIZES), 'configs/pyramid_flow_sd3.py',
                             combinable=False):
    raise ValueError(f'configs/pyramid_flow_sd3.py needs a size: one of {sorted(_SIZES)}')
  height, width, latent_frames = _SIZES[arg]
  c = config_lib.base_config()
  c.data.update(name='latents', latent_dir=f'data/latents_{arg}', image_size=height,
                image_width=width, num_frames=1 + 8 * (latent_frames - 1),
                global_batch_size=96)
  c.latent.update(kind='vae', factor=8, temporal_factor=8, pixel_channels=3, channels=16,
                  vae_workdir='checkpoints/causal_video_vae')
  c.model.update(sample_size=128, pos_embed_max_size=192, patch_size=2, num_layers=24, num_attention_heads=24,
                 attention_head_dim=64, joint_attention_dim=4096,
                 caption_projection_dim=1536, pooled_projection_dim=2048,
                 rope_axes_dim=(64,), remat='full', scan_blocks=True)
  c.text.update(encoder='precomputed', max_length=128)
  c.optim.update(lr=5e-5, warmup_steps=1000, b1=0.9, b2=0.95, weight_decay=1e-4,
                 clip_grad=1.0, ema_decay=0.9999)
  c.train.update(num_steps=40_000, log_every=40, checkpoint_every=2000, sample_every=2000)
  # The released models generate frame by frame on the temporal pyramid (official
  # train_pyramid_flow.sh: --use_temporal_pyramid, --video_sync_group 8); their history
  # is modulated by the target's timestep, so its keys/values are recomputed per step.
  c.temporal.update(autoregressive=True, video_sync_group=8)
  c.sample.update(steps_per_stage=(20, 20, 20), guidance_scale=9.0,
                  video_steps_per_stage=(10, 10, 10), video_guidance_scale=5.0,
                  cache_history=False,
                  prompts=('A movie trailer featuring the adventures of the 30 year old space '
                           'man wearing a red wool knitted motorcycle helmet',))
  c.mesh.update(data=1, fsdp=-1)
  c.dtype = 'bfloat16'
  return c
