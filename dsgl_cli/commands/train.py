"""``dsgl train``: unsupervised DSGL training with the reference script's flags (method.md 7)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from dsgl_cli.commands.common import command, option, resolve, split
from dsgl_cli.config import PRESETS, RUN_FACTS, SECTIONS, TOP_LEVEL, RunConfig, config_to_dict, flatten_saved
from dsgl_cli.console import console, counted, info
from dsgl_cli.errors import DsglError, RunInterrupted, signal_exit_code
from dsgl_cli.outputs import check_output, write_json

if TYPE_CHECKING:
    from dsgl_cli.training.trainer import TrainResult

#: every run setting: the train command takes them all
SETTINGS = tuple(name for model in SECTIONS.values() for name in model.model_fields) + TOP_LEVEL


def _cluster_summary(cfg: RunConfig) -> str:
    c = cfg.cluster
    if c.jaccard == "camera-aware":
        return (f"eps {c.eps}, camera-aware Jaccard: k1 {c.k1_intra} intra / {c.k1_inter} inter, k2 {c.k2_intra}/"
                f"{c.k2_inter} (3/3 at the first clustering)" + (", no expansion (k2 1)" if c.k2 == 1 else ""))
    return f"eps {c.eps}, k1 {c.k1}, k2 {c.k2}"


def _settings_table(cfg: RunConfig, device: str, world_size: int, threads: int, run_dir: Path) -> Table:
    """The run's settings at a glance; the CPU threads per process belong there, since a CPU run with
    another count rounds otherwise and ends elsewhere (records.run_facts)."""
    table = Table(title="dsgl train", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("data", f"{cfg.data.dataset} ({cfg.data.data_dir}) at {cfg.data.height}x{cfg.data.width}"),
        ("model", f"{cfg.model.arch}, {cfg.model.pooling_type} pooling, features {cfg.model.features}, "
                  f"init {cfg.model.pretrained}"),
        ("cluster", _cluster_summary(cfg)),
        ("train", f"{cfg.train.memorybank}, {counted(cfg.train.epochs, 'epoch')} x {cfg.train.iters} iters, batch "
                  f"{cfg.train.batch_size} ({cfg.train.num_instances} per identity), lr {cfg.train.lr}"),
        ("device", f"{device}, world size {world_size}, {threads} CPU thread{'s' if threads != 1 else ''} "
                   f"per process"),
        ("run dir", str(run_dir)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def resolve_training(flags: dict[str, Any], config_file: Optional[Path],
                     preset: Optional[str] = None) -> tuple[RunConfig, Optional[dict[str, Any]]]:
    """The run's settings: a resumed run starts from the settings saved in its checkpoint."""
    from dsgl_cli.models.checkpoint import load_checkpoint

    resume = flags.get("resume")
    if resume is None:
        return resolve(flags, config_file, preset=preset), None
    if preset is not None:
        raise DsglError("--preset chooses a new run's settings; a resumed run keeps its own (leave --preset out)",
                        exit_code=2)
    resume = Path(resume)
    if resume.is_dir():
        resume = resume / "checkpoint.pth"
    flags = {**flags, "resume": resume}
    saved = load_checkpoint(resume)
    if saved.get("format") != "dsgl":   # the authors' checkpoint.pth.tar: its run's settings are the flags
        return resolve(flags, config_file), saved
    presets = flatten_saved((saved.get("extra") or {}).get("config") or {})
    if not presets:
        raise DsglError(f"--resume {resume}: not a dsgl training checkpoint (no saved run settings)")
    return resolve(flags, config_file, presets=presets), saved


def run_training(cfg: RunConfig, saved: Optional[dict[str, Any]] = None) -> "TrainResult":
    """Set up the run (resuming if asked), train, print the summary."""
    result, is_main = _set_up_and_fit(cfg, saved)
    if is_main:
        _print_summary(result)
    return result


def _set_up_and_fit(cfg: RunConfig, saved: Optional[dict[str, Any]]) -> tuple["TrainResult", bool]:
    """The run on this process and whether it is the main one (that prints)."""
    import torch

    from dsgl_cli.data.datasets import load_dataset
    from dsgl_cli.models.reid import build_model
    from dsgl_cli.runtime import resolve_device, seed_everything
    from dsgl_cli.training.callbacks import standard_callbacks
    from dsgl_cli.training.distributed import Distributed
    from dsgl_cli.training.run_dir import RunDir, claim_on_main, release_run_dir
    from dsgl_cli.training.trainer import Trainer

    device = resolve_device(cfg.device)
    dist = Distributed.from_env(device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    try:
        dist.local_batch(cfg.train.batch_size)  # -b is global: a bad split fails early
        seed_everything(cfg.train.seed)
        # claimed before any work: a folder that is taken or cannot be written is refused now
        run_path = claim_on_main(dist, cfg.logs_dir, cfg.data.dataset, cfg.resume)
        if dist.is_main:
            dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)  # rank 0 writes the demo set
        dist.barrier()
        if not dist.is_main:
            dataset = load_dataset(cfg.data.dataset, cfg.data.data_dir)
        run_dir = RunDir(run_path, enabled=dist.is_main)
        pretrained = "none" if cfg.resume is not None else cfg.model.pretrained
        model = build_model(cfg.model.arch, cfg.model.pooling_type, cfg.model.features, cfg.model.dropout,
                            pretrained).to(device)
        if device.type == "cuda" and cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if dist.is_main:
            console.print(_settings_table(cfg, str(device), dist.world_size, torch.get_num_threads(), run_path))
            if getattr(model, "init_report", None) is not None:
                info(f"initial weights: {model.init_report}")
        labelled = dataset.has_evaluation_splits
        if dist.is_main and not labelled:
            info("no labelled query/gallery: training records the figures that need no labels (clusters, "
                 "outliers, cross-camera share, similarity within clusters, agreement with the last epoch); "
                 "model_best.pth is the last epoch")
        if dist.is_main and len({r.camid for r in dataset.train}) == 1:
            info("one camera: no cross-camera share is recorded (every cluster lies within the one camera, so it "
                 "would read 0 whatever the clusters are)")
        callbacks = standard_callbacks(cfg, run_dir, dataset.query if labelled else [],
                                       dataset.gallery if labelled else [])
        trainer = Trainer(cfg, dataset.train, model, device, callbacks, dist=dist,
                          train_labelled=dataset.labelled("train"))
        if cfg.resume is not None:
            trainer.resume(cfg.resume, saved)
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        if dist.is_main and not dist.active and gpus > 1 and cfg.train.bn_groups is None:
            # one process that sees several GPUs trains on one; the reference would have used them all
            info(f"note: {gpus} GPUs are visible and this run uses one; the reference's DataParallel would split "
                 f"each batch over all {gpus} and normalise BatchNorm per chunk: --bn-groups {gpus} reproduces "
                 f"that here, torchrun --nproc_per_node {gpus} does it on all of them")
        if dist.is_main and not dist.active and not trainer.finished:
            _say_duration(cfg, model, device, len(dataset.train),
                          len(dataset.query) + len(dataset.gallery) if labelled else 0, trainer.epochs_done)
        result = trainer.fit()
    finally:
        dist.shutdown()
        release_run_dir()
    result.rows, result.run_dir = run_dir.read_metrics(), run_path   # the whole run, resumed epochs included
    return result, dist.is_main


def _say_duration(cfg: RunConfig, model: Any, device: Any, train_images: int, eval_images: int,
                  epochs_done: int) -> None:
    """One line before training: how long these settings take on this device (training/estimate.py)."""
    from dsgl_cli.console import one_line
    from dsgl_cli.training.estimate import LONG_ON_CPU_S, estimate_duration

    try:
        estimate = estimate_duration(model, cfg, device, train_images, eval_images, epochs_done)
    except RuntimeError as exc:   # out of memory for a second copy of the model: the estimate never stops a run
        info(f"no duration estimate ({one_line(exc)})")
        return
    line = estimate.line(str(device))
    if device.type == "cpu" and estimate.seconds > LONG_ON_CPU_S:
        line += "; --preset cpu-small trains a small model in minutes on a CPU"
    info(line)


def _print_summary(result: "TrainResult") -> None:
    if result.rows and all(r.get("epoch", 0) == 0 for r in result.rows):   # --epochs 0
        initial = result.rows[0] if result.rows else {}
        figures = f": mAP {initial['mAP']:.1%}, rank-1 {initial['rank1']:.1%}" if "mAP" in initial else ""
        info(f"no epoch trained (--epochs 0); {result.run_dir}/model_init.pth holds the model before training"
             f"{figures}")
        return
    evaluated = [r for r in result.rows if "mAP" in r]
    if evaluated:
        table = Table(title="evaluation per epoch")
        for col in ("epoch", "mAP", "rank-1", "rank-5", "rank-10", "clusters", "outliers"):
            table.add_column(col, justify="right")
        for r in evaluated:
            table.add_row(str(r["epoch"]), f"{r['mAP']:.1%}", f"{r['rank1']:.1%}", f"{r['rank5']:.1%}",
                          f"{r['rank10']:.1%}", str(r.get("num_clusters", "-")), str(r.get("num_outliers", "-")))
        console.print(table)
        info(f"best mAP {result.best_mAP:.1%}; checkpoints and metrics in {result.run_dir}")
        return
    table = Table(title="pseudo labels per epoch (no labelled query/gallery)")
    for col in ("epoch", "clusters", "outliers", "x-cam", "sim", "ARI prev"):
        table.add_column(col, justify="right")

    def share(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    for r in result.rows:
        if r.get("epoch", 0) > 0:
            table.add_row(str(r["epoch"]), str(r.get("num_clusters", "-")), str(r.get("num_outliers", "-")),
                          share(r.get("cross_camera_share")), share(r.get("intra_similarity")),
                          share(r.get("ari_prev")))
    console.print(table)
    info(f"model_best.pth is the last epoch (no mAP without labels); checkpoints and metrics in {result.run_dir}")


def train(**kwargs: Any) -> None:
    """Train a re-ID model without labels (DSGL).

    Examples: [bold]dsgl train -d demo[/bold] (built-in data, minutes on a CPU);
    dsgl train -d msmt17 --eps 0.7 --epochs 60 --step-size 25
    """
    try:
        _train(kwargs)
    except KeyboardInterrupt as stop:   # in the set-up; the trainer turns its own into RunInterrupted
        from dsgl_cli.training.interrupts import interrupted_line

        resume = kwargs.get("resume")
        raise RunInterrupted(interrupted_line(resume, before_resuming=resume is not None),
                             exit_code=signal_exit_code(getattr(stop, "signum", signal.SIGINT))) from None


def _train(kwargs: dict[str, Any]) -> None:
    import yaml

    flags, own = split(kwargs, SETTINGS)
    check_output(own["json_out"], "--json", [flags.get("resume")])
    cfg, saved = resolve_training(flags, own["config"], own["preset"])
    if own["print_config"]:
        import os

        from dsgl_cli.runtime import resolve_device
        from dsgl_cli.training.records import run_facts

        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        facts = run_facts(cfg, resolve_device(cfg.device), world)
        typer.echo(yaml.safe_dump({**config_to_dict(cfg), RUN_FACTS: facts}, sort_keys=False), nl=False)
        return
    result = run_training(cfg, saved)
    if own["json_out"] is not None:
        write_json(own["json_out"], result)


def register(app: typer.Typer) -> None:
    command(app, "train", train, SETTINGS, own=[
        option("print_config", bool, "--print-config", default=False,
               help="Print the resolved settings as YAML and exit, touching no data or weights."),
        option("preset", Optional[str], "--preset",
               help=f"Settings for a kind of machine, under --config and the flags: {', '.join(PRESETS)} (ResNet-18 "
                    "from random initialisation at 64x32, 16 epochs of 30 steps: minutes on a 2-core CPU for "
                    "about 1,400 crops; what -d demo uses)."),
    ])
