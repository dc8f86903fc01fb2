"""The step's four prototype products through torch.mm and through dsgl_cli.method.gemm.mm, interleaved.

    python benchmarks/bench_gemm.py [--c 718] [--d 2048] [--b 64] [--reps 60] [--json]

f.[H;P]^T and f_hat.P^T (forward, tall form) and [g_P; g_Phat] @ P, g_H @ H (backward) at Market-1501
size, in the layout `losses.py` uses. Both versions alternate call by call, so a drifting shared
machine affects them alike; the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dsgl_cli.method import gemm


def products(product, bank: torch.Tensor, f: torch.Tensor, f_hat: torch.Tensor, g_py: torch.Tensor,
             g_h: torch.Tensor) -> None:
    C = bank.shape[0] // 2
    product(bank, f.t())
    product(bank[C:], f_hat.t())
    product(g_py, bank[C:])
    product(g_h, bank[:C])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--c", type=int, default=718, help="clusters")
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--b", type=int, default=64)
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(2 * args.c, args.d, generator=g)
    f, f_hat = torch.randn(args.b, args.d, generator=g), torch.randn(args.b, args.d, generator=g)
    g_py, g_h = torch.randn(2 * args.b, args.c, generator=g), torch.randn(args.b, args.c, generator=g)
    versions = {"torch.mm": torch.mm, "engine": gemm.mm}
    times: dict[str, list[float]] = {k: [] for k in versions}
    with torch.no_grad():
        for _ in range(3):
            for product in versions.values():
                products(product, bank, f, f_hat, g_py, g_h)
        for _ in range(args.reps):
            for name, product in versions.items():
                t0 = time.perf_counter()
                products(product, bank, f, f_hat, g_py, g_h)
                times[name].append(time.perf_counter() - t0)
    ms = {k: 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()}
    result = {"torch_mm_ms": round(ms["torch.mm"], 3), "engine_ms": round(ms["engine"], 3),
              "speedup": round(ms["torch.mm"] / ms["engine"], 2), "onednn": gemm.onednn_enabled(),
              "c": args.c, "d": args.d, "b": args.b, "threads": args.threads}
    if args.json:
        print(json.dumps(result))
        return
    print(f"C={args.c} d={args.d} B={args.b}, four products per step, median of {args.reps}")
    print(f"torch.mm: {ms['torch.mm']:.2f} ms   engine ({'oneDNN' if result['onednn'] else 'torch.mm'}): "
          f"{ms['engine']:.2f} ms   speedup {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
