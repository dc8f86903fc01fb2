"""DDP under torchrun on CPU (gloo): collectives, gradient averaging, identical memories (issue 7).

Two processes, a tiny model and tiny data. The end-to-end test runs the real command through
``python -m torch.distributed.run`` with a hook script that, after every memory update, gathers
each rank's hybrid memory, instance memory and group sums and records whether they are bitwise equal.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

from dsgl_cli.errors import DsglError
from dsgl_cli.training.distributed import Distributed
from tests.helpers import make_market_like

ROOT = Path(__file__).resolve().parents[1]
TINY = ["-d", "folder", "-a", "resnet18", "--pretrained", "none", "--height", "32", "--width", "16",
        "-b", "8", "--num-instances", "4", "--k1", "6", "--k2", "2", "--eps", "0.6", "-j", "0", "--device", "cpu"]


# ---------------------------------------------------------------- single process: the identity
def test_single_process_world_is_the_identity():
    d = Distributed.single()
    x = torch.arange(6.0).view(3, 2)
    assert not d.active and d.is_main and d.local_batch(64) == 64
    assert d.gather_rows(x)[0] is x and d.broadcast_object({"a": 1}) == {"a": 1}
    assert torch.equal(d.extract(["a", "b", "c"], lambda paths: x[: len(paths)]), x)
    assert d.refresh_status(torch.tensor([2.5, 0.0])) == ([2.5], False)
    assert d.refresh_status(torch.tensor([2.5, 1.0]))[1]
    assert math.isnan(d.refresh_status(torch.tensor([float("nan"), 0.0]))[0][0])


def test_global_batch_must_split_evenly():
    assert Distributed(0, 4).local_batch(64) == 16
    with pytest.raises(DsglError, match="divisible by the world size 4") as err:
        Distributed(1, 4).local_batch(30)
    assert err.value.exit_code == 2


def test_bn_groups_default_to_the_world_size_and_split_whole():
    """method.md 3.1: --bn-groups counts groups of the global batch; each rank normalises whole groups."""
    assert Distributed.single().local_bn_groups(None, 64) == 1
    assert Distributed(0, 4).local_bn_groups(None, 64) == 1          # one group per process
    assert Distributed(0, 2).local_bn_groups(8, 64) == 4
    with pytest.raises(DsglError, match="multiple of the world size 4"):
        Distributed(0, 4).local_bn_groups(2, 64)
    with pytest.raises(DsglError, match="groups of at least 2 images"):
        Distributed.single().local_bn_groups(64, 64)


def test_sync_bn_on_cpu_is_a_usage_error():
    with pytest.raises(DsglError, match="--sync-bn needs CUDA"):
        Distributed(0, 2).wrap(nn.BatchNorm1d(3), torch.device("cpu"), sync_bn=True)


def test_non_main_ranks_are_quiet():
    from dsgl_cli import console

    with warnings.catch_warnings():   # set_rank(1) also silences Python warnings
        try:
            console.set_rank(1)
            assert console.console.quiet and console.err_console.quiet
            console.set_rank(0)
            assert not console.console.quiet and not console.err_console.quiet
        finally:
            console.set_rank(0)


# ---------------------------------------------------------------- two gloo processes, spawned
def _collectives_worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    d = Distributed(rank, world, rank)
    res: dict = {}
    encode = lambda paths: torch.tensor([[float(p), -float(p), 0.5] for p in paths]).view(len(paths), 3)  # noqa: E731

    def encode_or_empty(paths):
        return encode(paths) if paths else torch.empty(0, 0)

    res["extract"] = d.extract([str(i) for i in range(5)], encode).tolist()         # shards of 2 and 3
    res["extract_small"] = d.extract(["7"], encode_or_empty).tolist()                # rank 0's shard is empty
    res["broadcast"] = d.broadcast_object({"from": rank})
    res["gather"] = d.gather_rows(torch.full((2, 2), float(rank)), torch.tensor([rank, 10 + rank]))
    res["gather"] = [t.tolist() for t in res["gather"]]
    mean, stop = d.refresh_status(torch.tensor([1.0 + rank, 0.0]))
    res["mean"] = (mean[0], stop)
    res["nan"] = d.refresh_status(torch.tensor([float("nan") if rank == 1 else 1.0, 0.0]))[0][0]
    res["stop"] = d.refresh_status(torch.tensor([0.0, float(rank == 1)]))[1]

    # DDP with two forwards before one backward: the anchor through the wrapper, the partner
    # through the bare module (as train_epoch does). The gradient must be the rank average of
    # each rank's full local gradient (both passes), every step, with no reducer error.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    ref = copy.deepcopy(model)
    ddp = d.wrap(model, torch.device("cpu"))
    errors = []
    for step in range(3):
        g = torch.Generator().manual_seed(100 * step + rank)
        x, p = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)

        def loss_of(anchor_net, partner_net, x=x, p=p):
            a = anchor_net(x)
            return (a ** 2).mean() + 0.3 * (partner_net(p) * a.detach()).sum()

        model.zero_grad()
        loss_of(ddp, model).backward()
        ref.zero_grad()
        loss_of(ref, ref).backward()
        for a, b in zip(model.parameters(), ref.parameters()):
            expected = b.grad.clone()
            tdist.all_reduce(expected)
            errors.append(float((a.grad - expected / world).abs().max()))
        with torch.no_grad():
            for a, b in zip(model.parameters(), ref.parameters()):
                a -= 0.1 * a.grad
                b -= 0.1 * a.grad   # keep the reference on the same weights
    res["grad_error"] = max(errors)
    sums = torch.stack([q.detach().sum() for q in model.parameters()])
    parts = [torch.empty_like(sums) for _ in range(world)]
    tdist.all_gather(parts, sums)
    res["params_equal"] = all(torch.equal(parts[0], q) for q in parts)
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    d.shutdown()


@pytest.mark.slow
def test_collectives_and_ddp_gradients_on_two_gloo_ranks(tmp_path: Path):
    mp.spawn(_collectives_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for res in results:
        assert res["extract"] == [[float(i), -float(i), 0.5] for i in range(5)]
        assert res["extract_small"] == [[7.0, -7.0, 0.5]]
        assert res["broadcast"] == {"from": 0}
        assert res["gather"] == [[[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], [0, 10, 1, 11]]
        assert res["mean"] == [1.5, False]
        assert math.isnan(res["nan"])          # a NaN on rank 1 stops rank 0 too
        assert res["stop"] is True            # Ctrl-C on rank 1 stops rank 0 at the same step
        assert res["grad_error"] < 1e-6
        assert res["params_equal"]


# ---------------------------------------------------------------- the real command under torchrun
HOOK = textwrap.dedent('''
    """dsgl train with a check after every memory update: are all ranks' memories bitwise equal?"""
    import json, os, sys
    import torch, torch.distributed as tdist
    from dsgl_cli.method.memory import DSGLMemory
    from dsgl_cli.training.trainer import Trainer

    OUT = os.environ["DSGL_TEST_OUT"]

    def same_everywhere(t):
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(tdist.get_world_size())]
        tdist.all_gather(parts, t)
        return all(torch.equal(parts[0], p) for p in parts)

    def record(row):
        with open(os.path.join(OUT, f"rank{tdist.get_rank()}.jsonl"), "a") as fh:
            fh.write(json.dumps(row) + "\\n")

    def state(memory):
        return {"bank": same_everywhere(memory.bank), "instance": same_everywhere(memory.instance),
                "group_sums": same_everywhere(memory.group_sums)}

    init, update, after = DSGLMemory.__init__, DSGLMemory.update, Trainer._end_epoch

    def checked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        record({"event": "built", **state(self)})

    def checked_update(self, f, idx, targets):
        update(self, f, idx, targets)
        half = len(idx) // 2
        record({"event": "update", "rows": len(idx), "halves_differ": not torch.equal(idx[:half], idx[half:]),
                **state(self)})

    def checked_after(self, epoch_record):
        sums = torch.stack([p.detach().double().sum() for p in self.model.parameters()])
        record({"event": "weights", "epoch": epoch_record.epoch, "equal": same_everywhere(sums)})
        return after(self, epoch_record)

    DSGLMemory.__init__, DSGLMemory.update, Trainer._end_epoch = checked_init, checked_update, checked_after
    from dsgl_cli.cli import app
    app(sys.argv[1:], prog_name="dsgl")
''')


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "hooked_dsgl.py"
    script.write_text(HOOK)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "DSGL_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "DSGL_TEST_OUT": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "train", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_two_ranks_keep_identical_memories_and_write_once(tmp_path: Path):
    data = make_market_like(tmp_path / "data", train_ids=8, test_ids=4, cams=3, per_cam=2, size=(32, 16),
                            colored=True)
    logs = tmp_path / "run"
    proc = _torchrun(tmp_path, *TINY, "--data-dir", str(data), "--logs-dir", str(logs), "--epochs", "1",
                     "--iters", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # rank 0 alone talks: the settings table states the world size once
    assert proc.stdout.count("world size 2") == 1, proc.stdout
    assert proc.stdout.count("epoch 1/1: ") == 1 and "Traceback" not in proc.stderr
    rows = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in range(2)]
    assert rows[0] == rows[1]                                   # both ranks saw the same checks
    built = [r for r in rows[0] if r["event"] == "built"]
    updates = [r for r in rows[0] if r["event"] == "update"]
    assert len(built) == 1 and len(updates) == 3
    for r in built + updates:
        assert r["bank"] and r["instance"] and r["group_sums"], r   # identical memories after every step
    assert all(r["rows"] == 8 for r in updates)                  # the update saw the global batch (4 per rank)
    assert any(r["halves_differ"] for r in updates)              # ... drawn differently on each rank
    assert [(r["epoch"], r["equal"]) for r in rows[0] if r["event"] == "weights"] == [(0, True), (1, True)]
    # only rank 0 writes: one checkpoint, one metrics file, nothing else anywhere
    assert sorted(p.name for p in logs.iterdir()) == ["checkpoint.pth", "config.yaml", "metrics.jsonl",
                                                       "model_best.pth", "model_init.pth", "train.log",
                                                       "training_curves.png"]
    assert len(list(tmp_path.rglob("*.pth"))) == 3 and len(list(tmp_path.rglob("metrics.jsonl"))) == 1
    metrics = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]
    ckpt = torch.load(logs / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["extra"]["config"]["train"]["batch_size"] == 8


@pytest.mark.slow
def test_torchrun_clustering_error_is_one_line_from_rank_0_and_nobody_hangs(tmp_path: Path):
    data = make_market_like(tmp_path / "data", train_ids=6, test_ids=2, cams=2, per_cam=2, size=(32, 16),
                            colored=True)
    proc = _torchrun(tmp_path, *TINY, "--data-dir", str(data), "--logs-dir", str(tmp_path / "run"),
                     "--epochs", "1", "--iters", "2", "--eps", "0.0001")
    assert proc.returncode != 0
    # rank 0 reports, rank 1 (which got the broadcast error) stays quiet and torchrun stops it
    assert proc.stderr.count("try a larger --eps") == 1, proc.stderr[-3000:]
    assert "rank 1: error" not in proc.stderr
    # nothing was trained: the run keeps only the checkpoint of the model before training
    assert torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["epoch"] == 0
