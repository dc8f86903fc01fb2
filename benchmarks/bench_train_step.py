"""What the DSGL bookkeeping adds to a whole training step with the backbone.

    python benchmarks/bench_train_step.py --device cuda [--arch resnet50] [--amp] [--json]

One step as the trainer runs it: the backbone on B anchors and B partner images, L_m + L_dis + L_kl
from the memory, backward, Adam, the memory update, and the loss read back for the NaN check. It
alternates, step by step, with the same step whose loss is a plain sum of the features (the
backbone alone, same reads back), so both see the same machine; the difference is the price of
the bookkeeping inside training. On CUDA both run channels_last, as the trainer does.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_step import batches, synthetic_epoch

from dsgl_cli.features import autocast_context
from dsgl_cli.method.memory import DSGLMemory
from dsgl_cli.models.reid import build_model
from dsgl_cli.runtime import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--n", type=int, default=12936)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16/fp16 autocast (CUDA)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build_model(args.arch).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3.5e-4)
    d = model(torch.zeros(2, 3, args.height, args.width, device=device)).shape[1]
    data = {k: v.to(device) for k, v in synthetic_epoch(args.n, d).items()}
    mem = DSGLMemory(data["features"], data["labels"], data["irre"], data["centroids"])
    warm = 3
    idxs = [i.to(device) for i in batches(data["labels"].cpu(), warm + args.iters)]
    B = idxs[0].numel()
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    images = torch.randn(B, 3, args.height, args.width, device=device).contiguous(memory_format=fmt)
    partners = torch.randn_like(images)

    def step(idx: torch.Tensor, dsgl: bool) -> None:
        with autocast_context(device, args.amp):
            f = model(images)
            f_hat = model(partners)
        f, f_hat = f.float(), f_hat.float()
        if dsgl:
            targets = data["labels"][idx]
            out = mem.losses(f, idx, targets, data["irre"][idx], f_hat)
            parts = [out["loss_m"], out["loss_dis"], out["loss_kl"]]
        else:
            parts = [f.sum() * 1e-3, f_hat.sum() * 1e-3, f.new_zeros(())]
        loss = parts[0] + parts[1] + parts[2]
        float(loss.detach())                       # the trainer's NaN check reads it back
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if dsgl:
            mem.update(f.detach(), idx, targets)
        for p in parts:                            # and the progress bar reads the parts
            float(p.detach())

    for k in range(warm):
        step(idxs[k], True)
        step(idxs[k], False)
    full, bare = [], []
    for k in range(warm, warm + args.iters):
        for dsgl, times in ((True, full), (False, bare)):
            sync()
            t0 = time.perf_counter()
            step(idxs[k], dsgl)
            sync()
            times.append(time.perf_counter() - t0)
    full_ms = 1e3 * sorted(full)[len(full) // 2]
    bare_ms = 1e3 * sorted(bare)[len(bare) // 2]
    result = {"step_ms": round(full_ms, 2), "backbone_only_ms": round(bare_ms, 2),
              "bookkeeping_ms": round(full_ms - bare_ms, 2), "share": round((full_ms - bare_ms) / full_ms, 3),
              "arch": args.arch, "size": [args.height, args.width], "batch": B, "n": args.n, "d": d,
              "amp": bool(args.amp and device.type == "cuda"), "device": str(device)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.arch} {args.height}x{args.width}, B = {B} anchors + {B} partners, N = {args.n}, d = {d}, "
          f"{device}{', autocast' if result['amp'] else ''}")
    print(f"whole DSGL step {full_ms:.1f} ms, backbone alone {bare_ms:.1f} ms (medians of {args.iters}): "
          f"the bookkeeping adds {full_ms - bare_ms:.1f} ms ({100 * result['share']:.0f}% of the step)")


if __name__ == "__main__":
    main()
