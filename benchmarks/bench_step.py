"""Time one DSGL iteration's bookkeeping (losses + backward + memory update) against the loop reference.

    python benchmarks/bench_step.py --n 12936 --d 2048 [--iters 60] [--loop-iters 1] [--json] [--count-syncs]

--count-syncs also runs a few iterations under tests/dispatch_count.py and prints, per iteration, the
operations that would make the host wait for a GPU (with their source lines) and the operators
dispatched (a CPU stand-in for kernel launches).

Synthetic clustered features (C ~ N/18 clusters, 5% outliers, irrelevant labels drawn from each
cluster's nearest clusters), batches of 64 = 4 pseudo identities x 16 instances (method.md 3, 5).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dsgl_cli.method.gemm import mm
from dsgl_cli.method.memory import DSGLMemory
from dsgl_cli.runtime import resolve_device

ROOT = Path(__file__).resolve().parents[1]
_REF = ROOT / "tests" / "reference_step.py"
sys.path.insert(0, str(ROOT))   # tests/dispatch_count.py, for --count-syncs

from tests.dispatch_count import count_syncs, report  # noqa: E402


def load_reference():
    """Import tests/reference_step.py (the plain-loop version of method.md 5) by path."""
    spec = importlib.util.spec_from_file_location("reference_step", _REF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_epoch(n: int, d: int, seed: int = 0) -> dict:
    """Clustered unit features, labels (-1 outliers), centroids and top-2 irrelevant labels."""
    g = torch.Generator().manual_seed(seed)
    C = max(3, n // 18)
    centers = F.normalize(torch.randn(C, d, generator=g), dim=1)
    labels = torch.randint(0, C, (n,), generator=g)
    labels[torch.randperm(n, generator=g)[: n // 20]] = -1
    feats = F.normalize(centers[labels.clamp(min=0)] + 1.2 * torch.randn(n, d, generator=g) / d ** 0.5, dim=1)
    present = torch.unique(labels[labels >= 0])
    remap = torch.full((C,), -1, dtype=torch.long)
    remap[present] = torch.arange(present.numel())
    labels = torch.where(labels >= 0, remap[labels.clamp(min=0)], labels)
    C = present.numel()
    centroids = torch.zeros(C, d).index_add_(0, labels[labels >= 0], feats[labels >= 0])
    centroids /= torch.bincount(labels[labels >= 0], minlength=C).view(-1, 1)
    # each cluster's 4 nearest clusters; an image's two irrelevant labels are two of them
    sim = F.normalize(centroids, dim=1) @ F.normalize(centroids, dim=1).t()
    sim.fill_diagonal_(-2)
    near = sim.topk(4, dim=1).indices
    pick = torch.rand(n, 4, generator=g).argsort(dim=1)[:, :2]
    irre = near[labels.clamp(min=0)].gather(1, pick)
    irre[labels < 0] = -1
    return {"features": feats, "labels": labels, "irre": irre, "centroids": centroids}


def batches(labels: torch.Tensor, count: int, seed: int = 1, ids: int = 4, inst: int = 16):
    """`count` batches of `ids` pseudo identities x `inst` instances (with replacement when small)."""
    g = torch.Generator().manual_seed(seed)
    C = int(labels.max()) + 1
    members = [torch.nonzero(labels == c).view(-1) for c in range(C)]
    out = []
    for _ in range(count):
        chosen = torch.randperm(C, generator=g)[:ids]
        rows = [members[c][torch.randint(0, members[c].numel(), (inst,), generator=g)] for c in chosen.tolist()]
        out.append(torch.cat(rows))
    return out


def run_iteration(mem: DSGLMemory, data: dict, idx: torch.Tensor, f: torch.Tensor, f_hat: torch.Tensor) -> None:
    """losses() + backward into the f / f_hat leaves + update(): what the trainer does per step."""
    f = f.clone().requires_grad_()
    f_hat = f_hat.clone().requires_grad_()
    out = mem.losses(f, idx, data["labels"][idx], data["irre"][idx], f_hat)
    (out["loss_m"] + out["loss_dis"] + out["loss_kl"]).backward()
    mem.update(f, idx, data["labels"][idx])


def run_loop_iteration(ref, state: dict, data: dict, idx, f, f_hat) -> None:
    """The same iteration with the plain-loop reference."""
    f = f.clone().requires_grad_()
    f_hat = f_hat.clone().requires_grad_()
    t = data["labels"][idx]
    out = ref.ref_losses(state["bank"], state["instance"], data["labels"], data["irre"], f, idx, t,
                         data["irre"][idx], f_hat)
    (out["loss_m"] + out["loss_dis"] + out["loss_kl"]).backward()
    state["bank"], state["instance"] = ref.ref_update(state["bank"], state["instance"], f, idx, t)


def gemm_floor(mem: DSGLMemory, f: torch.Tensor, f_hat: torch.Tensor, grads: torch.Tensor) -> None:
    """The GEMMs no exact implementation can skip: f.[H;P]^T, f_hat.P^T and their backward products.

    Timed in the layout and through the product the engine uses (the fastest measured here; oneDNN on
    the CPU, see dsgl_cli/method/gemm.py): transposed forward products, and one backward product
    through P for f and f_hat together. `grads` (3B x C) stands in for the gradients with respect to
    f.H^T, f.P^T and f_hat.P^T.
    """
    C, B = mem.num_clusters, f.shape[0]
    with torch.no_grad():
        mm(mem.bank, f.t())
        mm(mem.bank[C:], f_hat.t())
        mm(grads[B:], mem.bank[C:])
        mm(grads[:B], mem.bank[:C])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12936)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--loop-iters", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (timed with synchronisation)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--count-syncs", action="store_true",
                        help="count host syncs and operators per iteration (tests/dispatch_count.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data = {k: v.to(device) for k, v in synthetic_epoch(args.n, args.d).items()}
    warm = 3
    idxs = [i.to(device) for i in batches(data["labels"].cpu(), warm + args.iters + args.loop_iters)]
    g = torch.Generator().manual_seed(2)
    fs = [F.normalize(data["features"][i] + 0.05 * torch.randn(i.numel(), args.d, generator=g).to(device), dim=1)
          for i in idxs]
    fh = [F.normalize(data["features"][i.flip(0)] + 0.05 * torch.randn(i.numel(), args.d, generator=g).to(device),
                      dim=1) for i in idxs]
    t0 = time.perf_counter()
    mem = DSGLMemory(data["features"], data["labels"], data["irre"], data["centroids"])
    build_ms = (time.perf_counter() - t0) * 1e3
    for k in range(warm):
        run_iteration(mem, data, idxs[k], fs[k], fh[k])
    # the step and the GEMM floor alternate, so both see the same machine speed (a shared VM
    # drifts by 2x within minutes); process CPU time covers the steps only
    times, floor, cpu_s = [], [], 0.0
    grads = torch.randn(3 * fs[0].shape[0], mem.num_clusters, device=device)
    sync()
    for k in range(warm, warm + args.iters):
        cpu0, t0 = time.process_time(), time.perf_counter()
        run_iteration(mem, data, idxs[k], fs[k], fh[k])
        sync()
        t1 = time.perf_counter()
        cpu_s += time.process_time() - cpu0
        gemm_floor(mem, fs[k], fh[k], grads)
        sync()
        times.append(t1 - t0)
        floor.append(time.perf_counter() - t1)
    cpu_ms = 1e3 * cpu_s / args.iters
    ms = 1e3 * sorted(times)[len(times) // 2]
    floor_ms = 1e3 * sorted(floor)[len(floor) // 2]
    loop_ms = None
    if args.loop_iters > 0:
        ref = load_reference()
        state = {"bank": mem.bank.clone(), "instance": mem.instance.clone()}
        loop_times = []
        for k in range(warm + args.iters, warm + args.iters + args.loop_iters):
            t0 = time.perf_counter()
            run_loop_iteration(ref, state, data, idxs[k], fs[k], fh[k])
            sync()
            loop_times.append(time.perf_counter() - t0)
        loop_ms = 1e3 * sum(loop_times) / len(loop_times)
    counts = count_iterations(mem, data, idxs[:warm], fs, fh) if args.count_syncs else None
    result = {"ms_per_iter": round(ms, 3), "loop_ms_per_iter": None if loop_ms is None else round(loop_ms, 1),
              "speedup": None if loop_ms is None else round(loop_ms / ms, 1), "n": args.n, "d": args.d,
              "gemm_floor_ms": round(floor_ms, 3), "ratio_to_floor": round(ms / floor_ms, 2),
              "cpu_ms_per_iter": round(cpu_ms, 3), "threads": args.threads, "device": str(device)}
    if counts is not None:
        result.update(syncs_per_iter=counts.total_syncs / warm, dispatches_per_iter=counts.dispatches / warm)
    if args.json:
        print(json.dumps(result))
        return
    C = mem.num_clusters
    print(f"N={args.n} d={args.d} C={C} B=64 (4 x 16)  groups={mem.irrelevant_groups.num_groups}  "
          f"memory build {build_ms:.0f} ms")
    print(f"vectorised: {ms:.2f} ms/iter (median of {args.iters}; min {1e3 * min(times):.2f}; "
          f"process CPU time {cpu_ms:.2f} ms/iter over {args.threads} thread(s))")
    print(f"GEMM floor (f.[H;P]^T, f_hat.P^T and their backward GEMMs alone): {floor_ms:.2f} ms/iter  "
          f"ratio {ms / floor_ms:.2f}")
    if loop_ms is not None:
        print(f"loop reference: {loop_ms:.1f} ms/iter (mean of {args.loop_iters})  ratio {loop_ms / ms:.0f}x")
    if counts is not None:
        report(counts, per=warm)


def count_iterations(mem: DSGLMemory, data: dict, idxs: list, fs: list, fh: list):
    """Syncs and operators of len(idxs) iterations (after warm-up, so one-time checks are not counted)."""
    with count_syncs() as counts:
        for k, idx in enumerate(idxs):
            run_iteration(mem, data, idx, fs[k], fh[k])
    return counts


if __name__ == "__main__":
    main()
