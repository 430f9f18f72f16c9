"""Does XLA's CPU compile show what rematerialisation saves? (Why docs/scale.md's CPU
memory figures are upper bounds for remat policies.)

  python -m benchmarks.remat_cpu

Sixteen 4-layer tanh-MLP blocks (4,096 x 512 activations, fp32), gradient compiled with
and without `jax.checkpoint` per block, once as an unrolled Python loop (as the DiT's
blocks are) and once under `lax.scan`. Prints the compiled temporaries. Without remat
every block keeps 4 activations (16 x 4 x 8 MiB = 512 MiB); with it, only its input
(16 x 8 MiB) plus one block's recomputation.
"""

import jax
import jax.numpy as jnp

BLOCKS, ROWS, WIDTH = 16, 4096, 512
MIB = 2 ** 20


def _block(x: jax.Array, w: jax.Array) -> jax.Array:
  for _ in range(4):
    x = jnp.tanh(x @ w)
  return x


def _loss(ws: jax.Array, x: jax.Array, remat: bool, scan: bool) -> jax.Array:
  block = jax.checkpoint(_block) if remat else _block
  if scan:
    x, _ = jax.lax.scan(lambda h, w: (block(h, w), None), x, ws)
  else:
    for i in range(BLOCKS):
      x = block(x, ws[i])
  return jnp.sum(x ** 2)


def temporaries_mib(remat: bool, scan: bool) -> float:
  ws = jax.ShapeDtypeStruct((BLOCKS, WIDTH, WIDTH), jnp.float32)
  x = jax.ShapeDtypeStruct((ROWS, WIDTH), jnp.float32)
  grad = jax.jit(jax.grad(lambda w, h: _loss(w, h, remat, scan)))
  return grad.lower(ws, x).compile().memory_analysis().temp_size_in_bytes / MIB


def main() -> None:
  print(f'backend {jax.default_backend()}: compiled temporaries of the gradient, MiB')
  print(f'{"blocks":10s} {"no remat":>10s} {"remat":>10s}')
  for scan in (False, True):
    print(f'{"scan" if scan else "unrolled":10s} {temporaries_mib(False, scan):10.0f} '
          f'{temporaries_mib(True, scan):10.0f}')


if __name__ == '__main__':
  main()
