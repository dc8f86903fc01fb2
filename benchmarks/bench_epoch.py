"""One whole DSGL epoch at the seed's settings, stage by stage, and what 60 epochs would take.

    python benchmarks/bench_epoch.py [--device auto|cpu|cuda] [--amp] [--iters N] [--warmup 2] [--json]
    python benchmarks/bench_epoch.py --device cpu --json      # the reduced CPU mode: -d demo, 3 iterations

The epoch is the project's own code, called stage by stage as `Trainer._run_epoch` calls it:
`Trainer.extract_train_features` (the train split through the model), `Trainer.cluster_fn`
(Jaccard distance + DBSCAN + centroids and irrelevant labels: the pseudo labels), `Trainer.memory_factory`
(the DSGLMemory), `Trainer.train_epoch(EpochProgress(...))` (loader, sampler, the steps), then the
`Evaluation` callback (query and gallery through the model, mAP / CMC). Each stage is timed with
`torch.cuda.synchronize` on both sides on CUDA.

Settings are the seed's (README, method.md 7): ResNet-50, GeM, 256x128, batch 64 anchors (+ 64
partners for DLhybrid: 128 images through the backbone per iteration), 16 per pseudo identity,
eps 0.45, k1 30, k2 6, momentum 0.1, temp 0.05, lr 0.00035, with `--pretrained none` (nothing can be
downloaded here, and the speed does not depend on the weights; random weights do change the
clusters, hence the sampler's draws, not the cost of a step). Data: `-d demo-market` (the demo
generator at Market-1501's size, 12,936 train images; generated on first use, not timed) on CUDA.
On the CPU a reduced mode, so that it runs anywhere in about 2-3 minutes: `-d demo` (858 train
images), inputs of 128x64 (the demo images' own size; 256x128 took 13 minutes on a 2-core VM, 66 s
per iteration) and 3 iterations, ResNet-50 and batch 64 + 64 kept; any of
--arch/--height/--width/--batch-size/--num-instances/--iters overrides it.

Training iterations: `--warmup` first (default 2, not counted), then `--iters` measured ones, then on
CUDA `--profile-iters` profiled ones (not counted either), all in one `train_epoch` call (one loader).
`trainer.step` (a `TrainStep`) is wrapped by `TimedStep`, which records per call:

* host time: the wall time the Python thread spends inside the step call (no synchronisation);
* on CUDA, the wall time until `torch.cuda.synchronize()` returns after it;
* the time at which the iteration was complete (after that synchronisation).

seconds_per_iteration = (end of the last measured iteration - end of the last warm-up one) / iters: the
whole cycle, loader wait and bookkeeping between steps included. The train stage's seconds are those
`iters` iterations; images/s = iters x (anchors + partners) / those seconds.

GPU busy fraction (CUDA only). CUDA events around a step only give its span; the idle gaps inside it
(the host preparing the next kernels, copies, the batch plan on the host) are invisible to them. So
the `--profile-iters` extra iterations run under `torch.profiler` with CUDA activity only (CUPTI
records every kernel, memcpy and memset with device timestamps; no CPU op tracing, which would slow
the host). The window is bounded by two marker kernels on an otherwise idle GPU: one launched after
the last measured iteration completed (so the first profiled iteration's loader wait is inside), one
after the last profiled iteration completed. busy = |union of the device intervals inside the
window| / window length, the union so that overlapping streams count once. Any failure (no
profiler, no CUPTI, no events) gives null and the reason in gpu_busy_reason; the profiled
iterations never enter the other figures.

Peak memory: `torch.cuda.max_memory_allocated` over the epoch on CUDA; the host's peak resident set
(`ru_maxrss` of this process; loader workers are separate processes) always.

Projection: 60 epochs x 400 iterations = 60 x (extract + cluster + memory + evaluate + loader
overhead + 400 x seconds_per_iteration), from the measured iterations only (warm-up excluded). The
loader overhead is the part of the `train_epoch` call outside its steps (sampler and loader start-up
up to the first batch, worker shutdown), paid once per epoch. It assumes every epoch costs what this
one did: the cluster stage depends on the clusters found (trained weights give other clusters than
random ones), and the reference evaluates every epoch (--eval-step 1). One small inference batch
runs before the first stage, so the process's one-off CUDA/cuDNN start-up is in no stage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from dsgl_cli.config import RunConfig, build_config, data_dir_default
from dsgl_cli.data.datasets import load_dataset
from dsgl_cli.data.device_batches import augments_on_device
from dsgl_cli.errors import DsglError
from dsgl_cli.models.reid import build_model
from dsgl_cli.runtime import resolve_device, seed_everything
from dsgl_cli.training.callbacks import Evaluation
from dsgl_cli.training.records import EpochRecord
from dsgl_cli.training.resume import EpochProgress
from dsgl_cli.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/dispatch_count.py
from tests.dispatch_count import count_syncs  # noqa: E402

#: the full schedule the projection is for (the seed's Market line)
SCHEDULE_EPOCHS, SCHEDULE_ITERS = 60, 400
#: the seed's settings (README "Reproducing the paper", method.md 7), with weights that need no download
SEED = {"arch": "resnet50", "pooling_type": "gem", "pretrained": "none", "height": 256, "width": 128,
        "batch_size": 64, "num_instances": 16, "memorybank": "DLhybrid", "eps": 0.45, "k1": 30, "k2": 6,
        "momentum": 0.1, "temp": 0.05, "lr": 0.00035, "epochs": SCHEDULE_EPOCHS, "step_size": 25}
#: the reduced CPU mode's input size (height, width): the demo images' own
CPU_SIZE = (128, 64)


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class TimedStep:
    """`trainer.step` seen from outside: per-call host and synchronised times; profiles the last calls.

    Attributes the trainer reads (`stop_agreed`, `precision`, ...) are the wrapped step's.
    """

    def __init__(self, step: Any, device: torch.device, warmup: int, measured: int, profiled: int,
                 counted: int = 0) -> None:
        self._step, self._device = step, device
        # after the timed and profiled iterations, `counted` more run under tests/dispatch_count.py (from
        # the end of one step to the end of the last: the data path and the trainer's loop included)
        self.counted = counted
        self.counts: Any = None
        self._counting: Optional[contextlib.ExitStack] = None
        self._sync = synchronizer(device)
        self.warmup, self.measured, self.profiled = warmup, measured, profiled
        self.calls = 0
        self.host: list[float] = []      # seconds inside the call
        self.synced: list[float] = []    # seconds until the device finished it
        self.ends: list[float] = []      # perf_counter when the iteration was complete
        self.first_entry: Optional[float] = None   # perf_counter when the first batch reached the step
        self.busy: Optional[float] = None
        self.busy_reason: Optional[str] = "not measured: CPU run" if device.type != "cuda" else None
        self._profiler: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.first_entry is None:
            self.first_entry = t0
        out = self._step(*args, **kwargs)
        t1 = time.perf_counter()
        self._sync()
        t2 = time.perf_counter()
        self.host.append(t1 - t0)
        self.synced.append(t2 - t0)
        self.ends.append(t2)
        self.calls += 1
        if self.profiled and self.calls == self.warmup + self.measured:
            self._start_profile()
        elif self.profiled and self.calls == self.warmup + self.measured + self.profiled:
            self._stop_profile()
        start = self.warmup + self.measured + self.profiled
        if self.counted and self.calls == start:
            self._counting = contextlib.ExitStack()
            self.counts = self._counting.enter_context(count_syncs())
        elif self._counting is not None and self.calls == start + self.counted:
            self._counting.close()
            self._counting = None
        return out

    # ----- the GPU busy fraction (see the module docstring) --------------------------------------
    def _marker(self) -> None:
        torch.empty(1, device=self._device).fill_(1.0)

    def _start_profile(self) -> None:
        try:
            from torch.profiler import ProfilerActivity, profile

            self._profiler = profile(activities=[ProfilerActivity.CUDA])
            self._profiler.start()
            self._marker()          # the GPU is idle (synchronised): this kernel opens the window
        except Exception as exc:   # any failure: no figure, a reason, and the run goes on
            self._fail(f"profiler did not start: {type(exc).__name__}: {exc}")

    def _stop_profile(self) -> None:
        if self._profiler is None:
            return
        try:
            self._marker()          # after the last profiled iteration completed: closes the window
            self._sync()
            self._profiler.stop()
            self.busy = busy_fraction(self._profiler.events(), self._device)
            self.busy_reason = None
        except Exception as exc:
            self._fail(f"profile not usable: {type(exc).__name__}: {exc}")
        finally:
            self._profiler = None

    def _fail(self, reason: str) -> None:
        self.busy, self.busy_reason = None, reason
        if self._profiler is not None:
            try:
                self._profiler.stop()
            except Exception:   # already failing; the reason above is what matters
                pass
            self._profiler = None


def busy_fraction(events: Any, device: torch.device) -> float:
    """|union of device intervals| / window, the window from the first to the last (marker) event's start."""
    from torch.autograd import DeviceType

    index = device.index if device.index is not None else torch.cuda.current_device()
    spans = sorted((float(e.time_range.start), float(e.time_range.end)) for e in events
                   if e.device_type == DeviceType.CUDA and e.device_index in (index, -1))
    if len(spans) < 3:
        raise RuntimeError(f"{len(spans)} device events recorded (CUPTI activity missing?)")
    lo, hi = spans[0][0], spans[-1][0]     # the two markers' starts
    if hi <= lo:
        raise RuntimeError("empty profiling window")
    busy, cur_start, cur_end = 0.0, None, None
    for start, end in spans[1:-1]:
        start, end = max(start, lo), min(end, hi)
        if end <= start:
            continue
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        busy += cur_end - cur_start
    return busy / (hi - lo)


def warm_up_model(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> None:
    """One small inference batch first, so that the process's one-off CUDA/cuDNN start-up is in no stage."""
    from dsgl_cli.features import autocast_context, to_model_layout

    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast_context(device, cfg.amp):
        model(to_model_layout(torch.zeros(2, 3, cfg.data.height, cfg.data.width), device, cfg.channels_last))
    model.train(was_training)
    synchronizer(device)()


def timed(sync: Callable[[], None], fn: Callable[[], Any]) -> tuple[Any, float]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", action="store_true", help="bf16/fp16 autocast (CUDA; float32 on the CPU)")
    parser.add_argument("--iters", type=int, default=None, help="measured iterations (default 50 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="iterations run first and not counted (>= 1)")
    parser.add_argument("--profile-iters", type=int, default=10,
                        help="extra iterations profiled for the GPU busy fraction (CUDA; 0 = skip)")
    parser.add_argument("--dataset", default=None, help="default demo-market on CUDA, demo on the CPU")
    parser.add_argument("--data-dir", type=Path, default=None, help="default $DSGL_DATA_DIR or ./data")
    parser.add_argument("--arch", default=SEED["arch"])
    parser.add_argument("--height", type=int, default=None, help="default 256 on CUDA, 128 on CPU")
    parser.add_argument("--width", type=int, default=None, help="default 128 on CUDA, 64 on CPU")
    parser.add_argument("--batch-size", type=int, default=SEED["batch_size"], help="anchors per iteration")
    parser.add_argument("--num-instances", type=int, default=SEED["num_instances"])
    parser.add_argument("--eps", type=float, default=SEED["eps"])
    parser.add_argument("--pretrained", default=SEED["pretrained"], help="none (default), imagenet or a file")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default 4 on CUDA, 2 on CPU)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last on CUDA (the trainer's flag)")
    parser.add_argument("--augment-on", choices=("auto", "loader", "device"), default=None,
                        help="where augmentation runs (data.augment_on; passed on only when given)")
    parser.add_argument("--count-iters", type=int, default=2,
                        help="iterations counted for host syncs and operators after the timed ones (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the per-iteration time starts at the end of the last warm-up step)")
    if args.iters is not None and args.iters < 1:
        parser.error("--iters must be >= 1")
    if args.profile_iters < 0:
        parser.error("--profile-iters must be >= 0")
    return args


def make_config(args: argparse.Namespace, device: torch.device, total_iters: int) -> RunConfig:
    cuda = device.type == "cuda"
    flags: dict[str, Any] = {
        **SEED, "arch": args.arch, "height": args.height or (SEED["height"] if cuda else CPU_SIZE[0]),
        "width": args.width or (SEED["width"] if cuda else CPU_SIZE[1]), "batch_size": args.batch_size,
        "num_instances": args.num_instances, "eps": args.eps, "pretrained": args.pretrained,
        "dataset": args.dataset or ("demo-market" if cuda else "demo"),
        "data_dir": args.data_dir or data_dir_default(),
        "workers": args.workers if args.workers is not None else (4 if cuda else 2),
        "iters": total_iters, "device": str(device), "amp": args.amp,
    }
    if args.channels_last:
        flags["channels_last"] = True
    if args.augment_on is not None:
        flags["augment_on"] = args.augment_on
    try:
        # presets={}: -d demo keeps the seed's settings given here, not the small demo preset
        return build_config(flags, presets={})
    except KeyError as exc:
        raise DsglError(f"this dsgl does not know a setting the benchmark passed on: {exc.args[0]}", 2) from None


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    sync = synchronizer(device)
    iters = args.iters if args.iters is not None else (50 if cuda else 3)
    profiled = args.profile_iters if cuda else 0
    cfg = make_config(args, device, args.warmup + iters + profiled + args.count_iters)
    seed_everything(cfg.train.seed)
    dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)   # generated on first use: not timed
    model = build_model(cfg.model.arch, cfg.model.pooling_type, cfg.model.features, cfg.model.dropout,
                        cfg.model.pretrained).to(device)
    if cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainer = Trainer(cfg, dataset.train, model, device, [], train_labelled=dataset.labelled("train"))
    step = TimedStep(trainer.step, device, args.warmup, iters, profiled, args.count_iters)
    trainer.step = step   # type: ignore[assignment]
    evaluated = dataset.has_evaluation_splits
    query, gallery = (dataset.query, dataset.gallery) if evaluated else ([], [])
    evaluation = Evaluation(query, gallery, eval_step=1, flip=cfg.eval.flip)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    warm_up_model(model, cfg, device)
    seconds: dict[str, float] = {}
    decode_s = None   # --augment-on device: the train split decoded once per run, not per epoch
    if augments_on_device(cfg.data.augment_on, device):
        _, decode_s = timed(sync, trainer._decoded_train_images)
    features, seconds["extract"] = timed(sync, trainer.extract_train_features)
    labels, seconds["cluster"] = timed(sync, lambda: trainer.cluster_fn(features))
    memory, seconds["memory"] = timed(sync, lambda: trainer.memory_factory(features, labels))
    record = EpochRecord(epoch=1, lr=trainer.lr)
    progress = EpochProgress(0, labels, memory, record)
    losses, train_call_s = timed(sync, lambda: trainer.train_epoch(progress))
    w = args.warmup
    per_iter = (step.ends[w + iters - 1] - step.ends[w - 1]) / iters
    seconds["train"] = per_iter * iters
    # the epoch's loader and sampler start-up (to the first batch) and shutdown, outside the steps
    assert step.first_entry is not None
    loader_s = train_call_s - (step.ends[-1] - step.first_entry)
    if evaluated:
        _, seconds["evaluate"] = timed(sync, lambda: evaluation.on_epoch_end(trainer, record))
    else:
        seconds["evaluate"] = 0.0

    partners = cfg.train.memorybank == "DLhybrid"
    per_batch = cfg.train.batch_size * (2 if partners else 1)
    host = step.host[w:w + iters]
    synced = step.synced[w:w + iters]
    fixed = seconds["extract"] + seconds["cluster"] + seconds["memory"] + seconds["evaluate"] + loader_s
    epoch_s = fixed + SCHEDULE_ITERS * per_iter
    return {
        "settings": {
            "mode": "full" if cuda else "reduced CPU mode", "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "precision": trainer.precision, "arch": cfg.model.arch, "pooling": cfg.model.pooling_type,
            "pretrained": cfg.model.pretrained, "channels_last": bool(cuda and cfg.channels_last),
            "augment_on": args.augment_on, "height": cfg.data.height, "width": cfg.data.width,
            "batch_size": cfg.train.batch_size, "num_instances": cfg.train.num_instances,
            "memorybank": cfg.train.memorybank, "images_per_iteration": per_batch, "eps": cfg.cluster.eps,
            "k1": cfg.cluster.k1, "k2": cfg.cluster.k2, "momentum": cfg.train.momentum, "temp": cfg.train.temp,
            "lr": cfg.train.lr, "workers": cfg.data.workers, "dataset": cfg.data.dataset,
            "n_train": len(dataset.train), "n_query": len(query), "n_gallery": len(gallery),
        },
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "iterations": {"warmup": w, "measured": iters, "profiled": profiled},
        "seconds_per_iteration": round(per_iter, 4),
        "train_images_per_s": round(iters * per_batch / seconds["train"], 2),
        "host_seconds_per_iteration": round(statistics.mean(host), 4),
        "host_seconds_per_iteration_median": round(statistics.median(host), 4),
        "synced_seconds_per_iteration": round(statistics.mean(synced), 4) if cuda else None,
        "train_epoch_call_seconds": round(train_call_s, 3),
        "train_loader_overhead_seconds": round(loader_s, 3),
        # once per run (--augment-on device): outside the per-epoch projection
        "decode_once_seconds": round(decode_s, 3) if decode_s is not None else None,
        "gpu_busy_fraction": round(step.busy, 4) if step.busy is not None else None,
        # tests/dispatch_count.py over --count-iters iterations: what would make the host wait for a GPU,
        # and the operators dispatched (a stand-in for kernel launches)
        "syncs_per_iteration": (round(step.counts.total_syncs / args.count_iters, 2)
                                if step.counts is not None else None),
        "dispatches_per_iteration": (round(step.counts.dispatches / args.count_iters, 1)
                                     if step.counts is not None else None),
        "gpu_busy_reason": step.busy_reason,
        "gpu_peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None,
        "host_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "clusters": labels.num_clusters, "outliers": labels.num_outliers,
        "losses": {k: round(v, 4) for k, v in losses.items()},
        "mAP": record.mAP, "rank1": record.rank1,
        "projection": {
            "epochs": SCHEDULE_EPOCHS, "iters_per_epoch": SCHEDULE_ITERS,
            "epoch_seconds": round(epoch_s, 2),
            "seconds": round(SCHEDULE_EPOCHS * epoch_s, 1), "minutes": round(SCHEDULE_EPOCHS * epoch_s / 60, 2),
            "based_on_measured_iterations": iters, "warmup_excluded": w,
        },
    }


def report(r: dict[str, Any]) -> None:
    s, sec, p = r["settings"], r["seconds"], r["projection"]
    print(f"{s['mode']}: {s['device']} ({s['device_name']}), {s['precision']}, {s['arch']} {s['pooling']} "
          f"{s['height']}x{s['width']}, weights {s['pretrained']}, batch {s['batch_size']} anchors"
          f"{' + ' + str(s['batch_size']) + ' partners' if s['memorybank'] == 'DLhybrid' else ''}"
          f" ({s['num_instances']} per identity), {s['memorybank']}, eps {s['eps']}, workers {s['workers']}")
    print(f"data {s['dataset']}: {s['n_train']} train, {s['n_query']} query, {s['n_gallery']} gallery; "
          f"{r['clusters']} clusters, {r['outliers']} outliers")
    print("stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in sec.items())
          + (f"; train images decoded once per run in {r['decode_once_seconds']:.2f}"
             if r["decode_once_seconds"] is not None else ""))
    it = r["iterations"]
    synced = r["synced_seconds_per_iteration"]
    print(f"train: {r['seconds_per_iteration']:.3f} s/iteration over {it['measured']} iterations "
          f"(after {it['warmup']} warm-up), {r['train_images_per_s']:.1f} images/s; host time in the step "
          f"{r['host_seconds_per_iteration']:.3f} s" + (f", until synchronised {synced:.3f} s" if synced else ""))
    busy = r["gpu_busy_fraction"]
    if busy is not None:
        print(f"GPU busy {100 * busy:.1f}% of the wall time over {it['profiled']} profiled iterations")
    else:
        print(f"GPU busy: n/a ({r['gpu_busy_reason']})")
    gpu = r["gpu_peak_allocated_gib"]
    if r.get("syncs_per_iteration") is not None:
        print(f"per iteration: {r['syncs_per_iteration']:.2f} host syncs, {r['dispatches_per_iteration']:.0f} "
              f"operators dispatched")
    print(f"peak memory: host RSS {r['host_peak_rss_mib']:.0f} MiB" + (f", GPU allocated {gpu:.2f} GiB" if gpu else ""))
    print(f"projection: {p['epochs']} epochs x {p['iters_per_epoch']} iterations = {p['seconds']:.0f} s "
          f"({p['minutes']:.1f} min; {p['epoch_seconds']:.1f} s per epoch), from {p['based_on_measured_iterations']} "
          f"measured iterations, {p['warmup_excluded']} warm-up excluded")


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    try:
        # with --json stdout carries the one object: the project's messages (demo generation) go to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            result = run(args)
    except DsglError as exc:
        print(f"bench_epoch: {exc}", file=sys.stderr)
        raise SystemExit(getattr(exc, "exit_code", 1)) from None
    if args.json:
        print(json.dumps(result))
    else:
        report(result)


if __name__ == "__main__":
    main()
