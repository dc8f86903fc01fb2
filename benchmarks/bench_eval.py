"""Time evaluate_rank against one np.argsort of the same matrix and a per-query sklearn loop.

    python benchmarks/bench_eval.py [--q 3368] [--g 15913] [--loop-queries 300] [--repeat 3]
                                    [--rerank-dim 0]

The matrix is random float32 with Market-1501-like ids (751 identities, 6 cameras). The plain
loop (sklearn AP per query) is timed on the first --loop-queries queries and extrapolated to
all of them; its numbers on that subset are checked against evaluate_rank. With
--rerank-dim D > 0 it also times rerank_features on q + g random unit features of dimension D.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dsgl_cli.evaluation.metrics import evaluate_rank  # noqa: E402
from dsgl_cli.evaluation.reranking import rerank_features  # noqa: E402


def load_reference():
    """Import tests/reference_metrics.py (the per-query sklearn loop) by path."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference_metrics.py")
    spec = importlib.util.spec_from_file_location("reference_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--q", type=int, default=3368, help="number of queries")
    parser.add_argument("--g", type=int, default=15913, help="gallery size")
    parser.add_argument("--loop-queries", type=int, default=300, help="queries timed in the sklearn loop")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rerank-dim", type=int, default=0, help="also time rerank_features at this feature dim"
    )
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    dist = rng.random((args.q, args.g), dtype=np.float32)
    qp, gp = rng.integers(1, 752, args.q), rng.integers(0, 752, args.g)
    qc, gc = rng.integers(0, 6, args.q), rng.integers(0, 6, args.g)
    threads, cpus = torch.get_num_threads(), os.cpu_count()
    print(f"matrix {args.q} x {args.g} float32, torch threads {threads}, cpus {cpus}")

    t_sort, t_eval = [], []
    for _ in range(args.repeat):
        t_sort.append(timed(lambda: np.argsort(dist, axis=1))[0])
        t, result = timed(lambda: evaluate_rank(dist, qp, gp, qc, gc))
        t_eval.append(t)
    sort_s, eval_s = statistics.median(t_sort), statistics.median(t_eval)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    eval1_s = timed(lambda: evaluate_rank(dist, qp, gp, qc, gc))[0]
    torch.set_num_threads(threads)

    n_loop = min(args.loop_queries, args.q)
    loop_evaluate = load_reference().loop_evaluate
    t_loop, ref = timed(lambda: loop_evaluate(dist[:n_loop], qp[:n_loop], gp, qc[:n_loop], gc))
    loop_s = t_loop * args.q / n_loop
    sub = evaluate_rank(dist[:n_loop], qp[:n_loop], gp, qc[:n_loop], gc)
    diff = max(abs(sub.mAP - ref[0]), float(np.abs(sub.cmc - ref[1]).max()), abs(sub.mINP - ref[2]))

    print(f"np.argsort(axis=1)      {sort_s:8.3f} s   (runs: {', '.join(f'{t:.2f}' for t in t_sort)})")
    print(f"evaluate_rank           {eval_s:8.3f} s   (runs: {', '.join(f'{t:.2f}' for t in t_eval)})")
    print(f"evaluate_rank, 1 thread {eval1_s:8.3f} s   (torch.set_num_threads(1): no chunk threads)")
    extrap = "" if n_loop == args.q else f", extrapolated from {n_loop} queries ({t_loop:.2f} s)"
    print(f"per-query sklearn loop  {loop_s:8.3f} s{extrap}")
    print(f"evaluate_rank / argsort     {eval_s / sort_s:6.2f}x  (target <= 1.5x)")
    print(f"same, 1 thread / argsort    {eval1_s / sort_s:6.2f}x")
    print(f"loop / evaluate_rank        {loop_s / eval_s:6.1f}x")
    print(f"max |difference| to the loop on its {n_loop} queries: {diff:.2e}")
    print(f"result: {result.to_dict()}")

    if args.rerank_dim > 0:
        feats = rng.normal(size=(args.q + args.g, args.rerank_dim)).astype(np.float32)
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        t_rr, _ = timed(lambda: rerank_features(feats[: args.q], feats[args.q :]))
        print(f"rerank_features (k1=20, k2=6), dim {args.rerank_dim}: {t_rr:.2f} s")


if __name__ == "__main__":
    main()
