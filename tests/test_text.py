"""Text conditions: byte tokenizer, the toy encoder, stored embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pflow_jax.models import text as text_lib

WIDTH, SEQ_DIM, POOLED_DIM, MAX_LEN = 32, 24, 16, 16


def test_tokenize_is_utf8_bytes_plus_one_right_padded():
  tokens = text_lib.tokenize(['a 3', 'é', ''], max_length=4)
  assert tokens.dtype == np.int32 and tokens.shape == (3, 4)
  np.testing.assert_array_equal(tokens[0], [ord('a') + 1, ord(' ') + 1, ord('3') + 1, 0])
  np.testing.assert_array_equal(tokens[1], [0xC3 + 1, 0xA9 + 1, 0, 0])  # 'é' is 2 bytes
  np.testing.assert_array_equal(tokens[2], 0)
  assert text_lib.tokenize(['abcd'], max_length=4).min() > 0  # exactly max_length fits


def test_tokenize_rejects_long_captions_by_name():
  with pytest.raises(ValueError, match="'a 7 moving down'"):
    text_lib.tokenize(['ok', 'a 7 moving down'], max_length=8)


@pytest.fixture(scope='module')
def encoder():
  enc = text_lib.ToyTextEncoder(width=WIDTH, num_layers=2, num_heads=4, max_length=MAX_LEN,
                                seq_dim=SEQ_DIM, pooled_dim=POOLED_DIM, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(enc)
  return graphdef, state


def encode(encoder, captions):
  graphdef, state = encoder
  fn = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
  return fn(state, jnp.asarray(text_lib.tokenize(captions, MAX_LEN)))


def test_encoder_shapes_dtypes_and_mask(encoder):
  captions = ['a 3 moving left', 'a 0', '']
  out = encode(encoder, captions)
  assert out['seq'].shape == (3, MAX_LEN, SEQ_DIM) and out['seq'].dtype == jnp.float32
  assert out['pooled'].shape == (3, POOLED_DIM)
  assert out['mask'].dtype == jnp.bool_
  np.testing.assert_array_equal(out['mask'].sum(1), [len(c) for c in captions])
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in (out['seq'], out['pooled']))


def test_encoder_distinguishes_captions_and_the_empty_caption_is_fixed(encoder):
  out = encode(encoder, ['a 3 moving left', 'a 7 moving left', '', ''])
  assert float(jnp.abs(out['pooled'][0] - out['pooled'][1]).max()) > 1e-4
  assert float(jnp.abs(out['seq'][0, 2] - out['seq'][1, 2]).max()) > 1e-4
  # The unconditional condition: the empty caption, the same for every sample, not zero.
  np.testing.assert_allclose(out['pooled'][2], out['pooled'][3], atol=1e-6)
  assert float(jnp.abs(out['pooled'][2]).max()) > 1e-4
  assert not bool(out['mask'][2].any())


def test_encoder_runs_in_bfloat16_and_rejects_long_tokens():
  enc = text_lib.ToyTextEncoder(width=WIDTH, num_layers=1, num_heads=4, max_length=MAX_LEN,
                                seq_dim=SEQ_DIM, pooled_dim=POOLED_DIM, dtype=jnp.bfloat16,
                                rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(enc)
  run = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
  out = run(state, jnp.asarray(text_lib.tokenize(['a 1'], MAX_LEN)))
  assert out['seq'].dtype == jnp.bfloat16 and out['pooled'].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='tokens must be'):
    enc(jnp.zeros((1, MAX_LEN + 1), jnp.int32))


def test_encoder_trains_through_its_outputs(encoder):
  graphdef, state = encoder
  tokens = jnp.asarray(text_lib.tokenize(['a 5 up'], MAX_LEN))

  def loss(s):
    out = nnx.merge(graphdef, s)(tokens)
    return jnp.sum(out['seq'] ** 2) + jnp.sum(out['pooled'] ** 2)

  grads = jax.jit(jax.grad(loss))(state)
  token_grads = np.asarray(grads['token_embed']['embedding'][...])
  used = np.unique(np.asarray(tokens))
  assert np.abs(token_grads[used]).sum(1).min() > 0  # every used byte (and pad) learns
  assert np.abs(token_grads[np.setdiff1d(np.arange(257), used)]).max() == 0


def test_precomputed_text_reads_prefixed_keys():
  batch = {'text_seq': np.ones((2, 3, 8), np.float32), 'text_mask': np.array([[1, 1, 0]] * 2),
           'text_pooled': np.zeros((2, 4), np.float32),
           'null_text_seq': np.zeros((2, 3, 8), np.float32),
           'null_text_mask': np.zeros((2, 3), np.int32),
           'null_text_pooled': np.ones((2, 4), np.float32)}
  cond = text_lib.precomputed_text(batch)
  assert cond['mask'].dtype == bool and cond['mask'].tolist() == [[True, True, False]] * 2
  assert cond['seq'] is batch['text_seq'] and cond['pooled'] is batch['text_pooled']
  null = text_lib.precomputed_text(batch, prefix='null_text_')
  assert null['pooled'] is batch['null_text_pooled'] and not null['mask'].any()


def test_precomputed_text_errors_name_the_problem():
  with pytest.raises(ValueError, match='text_pooled'):
    text_lib.precomputed_text({'text_seq': np.ones((1, 2, 3)), 'text_mask': np.ones((1, 2))})
  with pytest.raises(ValueError, match='disagree'):
    text_lib.precomputed_text({'text_seq': np.ones((1, 2, 3)), 'text_mask': np.ones((1, 3)),
                               'text_pooled': np.ones((1, 4))})
