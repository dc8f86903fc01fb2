"""Time the per-epoch clustering step (Jaccard distance + DBSCAN) against the exact kNN search alone.

    python benchmarks/bench_cluster.py [--n 12936 32621] [--d 2048] [--ivf] [--json]
    python benchmarks/bench_cluster.py --n 32621 --camera-aware     # plain and CA-Jaccard, same features

Each size runs in its own subprocess so its peak resident memory (ru_maxrss) is clean.
Features are synthetic clustered unit rows (identities around shared "appearance" groups).
With --ivf every size also runs with the approximate IVF search and reports the ARI of its
labels against the exact ones where both run (--ivf-only skips the exact run, e.g. N=200,000).
With --camera-aware every size also runs the camera-aware Jaccard (docs/ca-jaccard.md) on the same
features, which then carry --cameras camera ids and a per-camera offset (--cam-bias), and reports
its total time over the plain one's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_features(n: int, d: int, seed: int = 0, noise: float = 1.6, group: float = 1.2, cameras: int = 0,
                  cam_bias: float = 0.0) -> tuple:
    """Clustered unit rows: ~n/17 identities of uneven size, grouped in ~n/170 look-alike groups.

    With ``cameras`` > 0 every image also gets one of that many cameras (uneven sizes) whose own offset,
    ``cam_bias`` times a random unit direction, is added before normalising: (x, ids, cams).
    """
    rng = np.random.default_rng(seed)
    num_ids = max(2, n // 17)
    num_groups = max(1, num_ids // 10)
    groups = rng.standard_normal((num_groups, d)).astype(np.float32)
    own = rng.standard_normal((num_ids, d)).astype(np.float32)   # (was named noise, shadowing the spread)
    centres = groups[rng.integers(0, num_groups, num_ids)] * group + own
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ids = rng.choice(num_ids, size=n, p=rng.dirichlet(np.full(num_ids, 3.0)))
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 8192):  # chunked to keep the generator's own peak small
        e = min(n, s + 8192)
        x[s:e] = centres[ids[s:e]] + noise * rng.standard_normal((e - s, d)).astype(np.float32) / np.sqrt(d)
    cams = None
    if cameras > 0:
        cam_rng = np.random.default_rng(seed + 1)   # a separate stream: the same x without cameras
        cams = cam_rng.choice(cameras, size=n, p=cam_rng.dirichlet(np.full(cameras, 4.0)))
        offsets = cam_rng.standard_normal((cameras, d)).astype(np.float32)
        offsets *= cam_bias / np.linalg.norm(offsets, axis=1, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x += offsets[cams]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, ids, cams


def run_camera_aware(x: np.ndarray, cams: np.ndarray, eps: float, k2: int, result: dict) -> tuple:
    """The camera-aware distance's stages: its two-list search alone, then search + encode, join, DBSCAN."""
    from dsgl_cli.clustering import camera_aware, jaccard
    from dsgl_cli.clustering.dbscan import dbscan

    t = time.perf_counter()
    camera_aware.camera_ranked_lists(x, cams, 6, 21)
    result["knn_s"] = time.perf_counter() - t
    stages = {}
    t0 = time.perf_counter()
    v = camera_aware.encode_camera_aware(x, cams, 5, 20, 2, 4, k2)
    stages["search_s"] = stages["search_encode_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    jac = jaccard.jaccard_from_encoding(v, max_distance=0.95)
    stages["join_s"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = dbscan(jac, eps)
    stages["dbscan_s"] = time.perf_counter() - t
    result["total_s"] = time.perf_counter() - t0
    stages["encode_s"] = 0.0   # inside search_encode_s
    result.update(stages)
    return v, jac, labels


def run_one(n: int, d: int, mode: str, eps: float, k1: int, k2: int, labels_out: str,
            noise: float = 1.6, group: float = 1.2, cameras: int = 0, cam_bias: float = 0.0) -> dict:
    """One size in this process: kNN alone, then Jaccard + DBSCAN, with stage timings."""
    import torch

    from dsgl_cli.clustering import jaccard
    from dsgl_cli.clustering.dbscan import dbscan
    from dsgl_cli.clustering.neighbours import knn_search

    torch.set_num_threads(os.cpu_count() or 1)
    x, ids, cams = make_features(n, d, noise=noise, group=group, cameras=cameras, cam_bias=cam_bias)
    exact = mode != "ivf"
    result = {"n": n, "d": d, "noise": noise, "group": group, "mode": mode, "eps": eps, "k1": k1, "k2": k2,
              "cameras": cameras, "cam_bias": cam_bias, "cpu_count": os.cpu_count()}
    if mode == "camera-aware":
        v, jac, labels = run_camera_aware(x, cams, eps, k2, result)
        return _finish(result, n, v, jac, labels, ids, labels_out)

    t = time.perf_counter()
    jaccard.neighbour_lists(x, k1, lambda f, k: knn_search(f, k, exact=exact))
    result["knn_s"] = time.perf_counter() - t

    stages = {}
    search_fn = lambda f, k: knn_search(f, k, exact=exact)  # noqa: E731
    t0 = time.perf_counter()
    sims, idx = jaccard.neighbour_lists(x, k1, search_fn)
    stages["search_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    v = jaccard.encode_neighbourhoods(x, sims, idx, k1, k2)
    stages["encode_s"] = time.perf_counter() - t
    t = time.perf_counter()
    jac = jaccard.jaccard_from_encoding(v, max_distance=0.95)
    stages["join_s"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = dbscan(jac, eps)
    stages["dbscan_s"] = time.perf_counter() - t
    result["total_s"] = time.perf_counter() - t0
    result.update(stages)
    return _finish(result, n, v, jac, labels, ids, labels_out)


def _finish(result: dict, n: int, v, jac, labels: np.ndarray, ids: np.ndarray, labels_out: str) -> dict:
    from dsgl_cli.clustering.quality import label_quality

    stages = {k: result[k] for k in ("search_s",)}
    result["ratio_total_over_knn"] = result["total_s"] / result["knn_s"]
    result["post_search_s"] = result["total_s"] - stages["search_s"]
    # the shared CPU makes two timings of the same search differ; this ratio uses one run only
    result["ratio_total_over_search_in_run"] = result["total_s"] / stages["search_s"]
    result["v_nnz_per_row"] = v.nnz / n
    result["jaccard_nnz_per_row"] = jac.nnz / n
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    quality = label_quality(labels, ids).to_dict()
    keys = ("num_clusters", "num_outliers", "precision", "recall", "f_score", "ari")
    result["quality"] = {k: quality[k] for k in keys}
    if labels_out:
        np.save(labels_out, labels)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[12936, 32621])
    p.add_argument("--d", type=int, default=2048)
    p.add_argument("--eps", type=float, default=0.6)
    p.add_argument("--k1", type=int, default=30)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--noise", type=float, default=1.6, help="within-identity spread (harder when larger)")
    p.add_argument("--group", type=float, default=1.2, help="look-alike pull between identities of one group")
    p.add_argument("--ivf", action="store_true", help="also run the approximate IVF search")
    p.add_argument("--ivf-only", action="store_true", help="run only the IVF search (huge N)")
    p.add_argument("--camera-aware", action="store_true",
                   help="also run the camera-aware Jaccard (k1 5/20, k2 2/4) on the same features")
    p.add_argument("--cameras", type=int, default=15, help="with --camera-aware: cameras (MSMT17 has 15)")
    p.add_argument("--cam-bias", type=float, default=0.5, help="with --camera-aware: per-camera offset length")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._child:
        mode, labels_out = args._child
        cameras = args.cameras if args.camera_aware else 0
        print(json.dumps(run_one(args.n[0], args.d, mode, args.eps, args.k1, args.k2, labels_out,
                                 args.noise, args.group, cameras, args.cam_bias)))
        return

    import tempfile

    from sklearn.metrics import adjusted_rand_score

    modes = ["ivf"] if args.ivf_only else (["exact", "ivf"] if args.ivf else ["exact"])
    modes += ["camera-aware"] if args.camera_aware else []
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            labels = {}
            for mode in modes:
                out = os.path.join(tmp, f"{mode}_{n}.npy")
                cmd = [sys.executable, __file__, "--n", str(n), "--d", str(args.d), "--eps", str(args.eps),
                       "--k1", str(args.k1), "--k2", str(args.k2), "--noise", str(args.noise),
                       "--group", str(args.group), "--cameras", str(args.cameras), "--cam-bias", str(args.cam_bias),
                       *(["--camera-aware"] if args.camera_aware else []), "--_child", mode, out]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stderr, file=sys.stderr)
                    raise SystemExit(f"size {n} ({mode}) failed")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                labels[mode] = np.load(out)
                results.append(res)
                if not args.json:
                    print(f"N={n:>7} {mode:5} knn {res['knn_s']:7.2f}s  total {res['total_s']:7.2f}s "
                          f"(search {res['search_s']:.2f} encode {res['encode_s']:.2f} join {res['join_s']:.2f} "
                          f"dbscan {res['dbscan_s']:.2f})  ratio {res['ratio_total_over_knn']:.3f} "
                          f"(in-run {res['ratio_total_over_search_in_run']:.3f})  "
                          f"peak {res['peak_rss_gb']:.2f} GB  clusters {res['quality']['num_clusters']} "
                          f"ARI(true) {res['quality']['ari']:.3f}", flush=True)
            if "camera-aware" in labels and "exact" in labels:
                ratio = results[-1]["total_s"] / results[-2 if len(labels) == 2 else -3]["total_s"]
                results[-1]["ratio_total_over_plain"] = ratio
                if not args.json:
                    print(f"N={n:>7} camera-aware total / plain total: {ratio:.3f}")
            if "ivf" in labels and "exact" in labels:
                ari = float(adjusted_rand_score(labels["exact"], labels["ivf"]))
                results[-1]["ari_ivf_vs_exact"] = ari
                if not args.json:
                    print(f"N={n:>7} ARI of IVF labels vs exact: {ari:.4f}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
