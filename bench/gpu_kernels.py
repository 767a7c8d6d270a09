"""The GPU decode kernels (`kerasllm_widget.kernels.gpu`) against XLA's products, per shape.

For each weight of a Llama-3.2-1B-shaped decode step (q/k/v fused, attention output, gate/up
fused, down, the tied output projection) at 1 and 8 rows: XLA's product in the plain path's
layout and in the transposed one, then the Pallas kernel at its default tiling and at the
tilings of a small sweep. Each is checked against a float32 product of the same inputs
(relative error), and timed as a CUDA graph over enough weight copies to spill the L2 cache;
the table gives microseconds per product and the fraction of the HBM bound.

    python bench/gpu_kernels.py                  # default tilings and the sweep
    python bench/gpu_kernels.py --no-sweep
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name, outputs N, inputs K, kernel ("matvec" or "gate_up")
SHAPES = [
    ("qkv", 3072, 2048, "matvec"),
    ("attention out", 2048, 2048, "matvec"),
    ("gate/up+silu", 16384, 2048, "gate_up"),
    ("down", 2048, 8192, "matvec"),
    ("output projection", 128256, 2048, "matvec"),
]
HBM = 4.8e12  # H200 (an H100 SXM has 3.35e12)
SPILL_BYTES = 400e6  # weight copies per timed program: several times the 50-60 MB L2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--budget-s", type=float, default=200.0, help="time for the sweep")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from kerasllm_widget.generation.compilation import decode_compiler_options
    from kerasllm_widget.kernels import gpu

    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    rng = np.random.default_rng(0)
    options = decode_compiler_options("gpu")
    per_product_s = args.budget_s / (len(SHAPES) * len(args.rows.split(",")))

    def timed(fn, weights, x):
        """Microseconds per product: ``fn`` over every copy in one graph-replayed program."""
        program = jax.jit(lambda x, ws: [fn(x, w) for w in ws], compiler_options=options)
        out = program(x, weights)
        jax.block_until_ready(out)
        times = []
        for _ in range(7):
            start = time.perf_counter()
            jax.block_until_ready(program(x, weights))
            times.append(time.perf_counter() - start)
        return np.median(times) / len(weights) * 1e6, out[0]

    print(f"{'product':<18} {'rows':>4} {'variant':<34} {'us':>8} {'of HBM':>7} {'rel err':>8}")
    for (name, n, k, kind), rows in itertools.product(SHAPES, map(int, args.rows.split(","))):
        nbytes = n * k * 2
        copies = max(1, int(SPILL_BYTES // nbytes))
        weights = [
            jnp.asarray(rng.standard_normal((n, k), np.float32) * 0.02, jnp.bfloat16)
            for _ in range(copies)
        ]
        x = jnp.asarray(rng.standard_normal((rows, k), np.float32), jnp.bfloat16)
        exact = np.asarray(x, np.float32) @ np.asarray(weights[0], np.float32).T
        if kind == "gate_up":
            gate, up = exact[:, : n // 2], exact[:, n // 2 :]
            exact = gate / (1 + np.exp(-gate)) * up

        def report(label, micros, y, _nbytes=nbytes, _exact=exact, _name=name, _rows=rows):
            y = np.asarray(y, np.float32)
            err = np.linalg.norm(y - _exact) / np.linalg.norm(_exact)
            print(
                f"{_name:<18} {_rows:>4} {label:<34} {micros:>8.1f} "
                f"{_nbytes / HBM / (micros * 1e-6):>6.0%} {err:>8.1e}",
                flush=True,
            )

        def plain_t(x, w, _kind=kind):
            y = jnp.einsum("mk,nk->mn", x, w)
            if _kind == "gate_up":
                g, u = jnp.split(y, 2, axis=-1)
                y = jax.nn.silu(g) * u
            return y

        weights_kn = [w.T.copy() for w in weights]  # the plain path's [in, out] layout

        def plain(x, w, _kind=kind):
            y = x @ w
            if _kind == "gate_up":
                g, u = jnp.split(y, 2, axis=-1)
                y = jax.nn.silu(g) * u
            return y

        report("XLA [in, out]", *timed(plain, weights_kn, x))
        del weights_kn
        report("XLA [out, in]", *timed(plain_t, weights, x))
        call = gpu.gate_up_silu if kind == "gate_up" else gpu.matvec
        width = n // 2 if kind == "gate_up" else n
        default = gpu.tiling(rows, width, k)
        report(f"pallas {tuple(default)}", *timed(call, weights, x))
        if args.no_sweep:
            continue
        tiles = [
            gpu.Tiling(*t)
            for t in itertools.product(
                (4, 8, 16, 32, 64) if rows == 1 else (16, 32, 64),
                (256, 512, 1024, 2048),
                (4, 8),
                (2, 3, 4),
            )
        ]
        # Not too many registers, not too little in flight, no idle threads; then a random
        # order, so that the time budget samples the whole space.
        tiles = [
            t
            for t in tiles
            if 4096 <= t.block_n * t.block_k <= 32768
            and t.num_warps * 32 * 8 <= t.block_n * t.block_k
            and not width % t.block_n
            and not k % t.block_k
            and t != default
        ]
        deadline = time.monotonic() + per_product_s
        for index in rng.permutation(len(tiles)):
            tile = tiles[index]
            if time.monotonic() > deadline:
                break
            try:
                report(
                    f"pallas {tuple(tile)}",
                    *timed(functools.partial(call, tile=tile), weights, x),
                )
            except Exception as error:  # a tiling Triton cannot lower: say so and go on
                print(f"{name:<18} {rows:>4} pallas {tuple(tile)} failed: {str(error)[:80]}")


if __name__ == "__main__":
    main()
