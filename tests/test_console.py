"""Output that can be logged and grepped (a file, a pipe) and read live (a terminal), and the epoch report.

Rich consoles write to a StringIO: as a file (not a tty) and as a forced terminal, whose escape codes a
small terminal model (`screen`) plays back into the lines a person would see.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.table import Table
from rich.text import Text
from typer.testing import CliRunner

from dsgl_cli import console as C
from dsgl_cli.cli import app
from dsgl_cli.training.console_report import ConsoleReport
from dsgl_cli.training.records import EpochRecord, TrainResult
from tests.helpers import make_market_like

runner = CliRunner()

LONG = "/data/" + "/".join(f"camera-network-{i:02d}-long-folder-name" for i in range(6)) + "/0001_c1s1_000151_01.jpg"


def _file_console(stderr: bool = False) -> tuple[C.DsglConsole, io.StringIO]:
    buf = io.StringIO()
    return C.DsglConsole(file=buf, stderr=stderr), buf


def _terminal(width: int = 60) -> tuple[C.DsglConsole, io.StringIO]:
    buf = io.StringIO()
    return C.DsglConsole(file=buf, force_terminal=True, width=width, color_system="standard"), buf


def screen(raw: str) -> list[str]:
    """The lines a terminal shows after ``raw``: text, \\r, \\n, cursor up (ESC[nA), erase line (ESC[2K);
    colours and cursor visibility are ignored."""
    lines: list[list[str]] = [[]]
    row = col = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]", raw):
        if token == "\n":
            row, col = row + 1, 0
            while len(lines) <= row:
                lines.append([])
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                lines[row] = []
        else:
            line = lines[row]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = token
            else:
                line.append(token)
            col += 1
    shown = ["".join(line).rstrip() for line in lines]
    while shown and not shown[-1]:
        shown.pop()
    return shown


# ----------------------------------------------------------------------------- a file or a pipe
def test_a_file_gets_long_paths_whole_on_one_line_and_no_padding():
    console, buf = _file_console()
    console.print(f"[red]unreadable[/red] {LONG}  (cannot identify image file)")
    table = Table(title="dsgl train", show_header=False, box=None)
    table.add_column()
    table.add_column()
    table.add_row("run dir", LONG)
    table.add_row("device", "cpu")
    console.print(table)
    out = buf.getvalue()
    lines = out.splitlines()
    assert lines[0] == f"unreadable {LONG}  (cannot identify image file)"
    assert any(line.split() == ["run", "dir", LONG] for line in lines)   # the cell is not wrapped or cut
    assert "…" not in out and "\x1b" not in out
    assert all(line == line.rstrip() for line in lines) and "" not in lines
    assert [line for line in lines if LONG in line] == [lines[0], lines[2]]   # grep finds it, twice


def test_a_file_gets_no_progress_bars_and_no_blank_lines(monkeypatch):
    console, buf = _file_console()
    monkeypatch.setattr(C, "console", console)
    C.info("before")
    for name in ("extract", "cluster", "train 1/2", "evaluate"):
        with C.stage(name, 10, context=lambda: "epoch 1/2, ETA 4 min") as bar:
            for _ in range(10):
                bar.advance(1, status="m 1.000")
            bar.set_total(12)
    C.info("after")
    assert buf.getvalue() == "before\nafter\n"


def test_messages_are_plain_text_and_errors_one_line(monkeypatch):
    out, out_buf = _file_console()
    err, err_buf = _file_console(stderr=True)
    monkeypatch.setattr(C, "console", out)
    monkeypatch.setattr(C, "err_console", err)
    C.info("ids [bold]3[/bold] in data/[test]/a.jpg")
    C.warn("first\nsecond")
    C.error("checkpoint broken\n  File 'x.py', line 3\n    raise Thing")
    assert out_buf.getvalue() == "ids [bold]3[/bold] in data/[test]/a.jpg\n"
    assert err_buf.getvalue().splitlines() == [
        "warning: first (1 more line elided)",
        "error: checkpoint broken (2 more lines elided; DSGL_DEBUG=1 shows all of it)"]


def test_one_line():
    assert C.one_line("") == "" and C.one_line("  a  \n\n") == "a"
    assert C.one_line("a\nb\nc", "hint") == "a (2 more lines elided; hint)"


# ----------------------------------------------------------------------------- a terminal
def test_a_terminal_keeps_long_paths_whole_and_bars_leave_no_line(monkeypatch):
    console, buf = _terminal(width=60)
    monkeypatch.setattr(C, "console", console)
    C.info(f"wrote {LONG}")
    with C.stage("extract", 4, context=lambda: "epoch 3/16, ETA 4 min") as bar:
        for _ in range(4):
            bar.advance(1, status="m 1.234")
    C.info("done")
    raw = buf.getvalue()
    assert f"wrote {LONG}" in raw                 # Rich broke nothing: the terminal folds it on screen
    assert "epoch 3/16, ETA 4 min" in raw and "extract" in raw   # the live display showed the run's line
    assert screen(raw) == [f"wrote {LONG}", "done"]   # the transient bar left no line, blank or not


def test_the_checks_above_catch_what_plain_rich_does():
    """A plain Rich console and Progress, as before: a file gets a blank line per bar and wrapped paths."""
    from rich.console import Console
    from rich.progress import Progress

    buf = io.StringIO()
    plain = Console(file=buf, highlight=False)
    plain.print(f"wrote {LONG}")
    with Progress(console=plain, transient=True) as progress:
        progress.add_task("extract", total=1)
    plain.print("done")
    assert "" in buf.getvalue().splitlines() and f"wrote {LONG}" not in buf.getvalue()
    assert screen("a\n\nb\n") == ["a", "", "b"] and screen("a\nxxxx\r\x1b[2Kb\n") == ["a", "b"]


def test_durations():
    assert [C.format_duration(s) for s in (4.4, 270, 7500)] == ["4 s", "4 min 30 s", "2 h 05 min"]
    assert [C.format_eta(s) for s in (0.2, 40, 181, 3720)] == ["1 s", "40 s", "4 min", "1 h 02 min"]


# ----------------------------------------------------------------------------- the epoch report
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trainer(epochs: int = 16, start: int = 0, best: float = -1.0) -> SimpleNamespace:
    return SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(epochs=epochs)), start_epoch=start,
                           best_map=best, fresh=start == 0)


def test_console_report_epoch_lines_legend_eta_and_total(monkeypatch):
    console, buf = _file_console()
    monkeypatch.setattr(C, "console", console)
    clock = Clock()
    report, trainer = ConsoleReport(clock=clock), _trainer(epochs=16)
    report.on_fit_start(trainer)
    assert report.overall() == "the model before training, then 16 epochs"
    clock.now += 5
    report.on_epoch_end(trainer, EpochRecord(epoch=0, mAP=0.187, rank1=0.322, seconds_eval=2.04))
    assert report.overall() == "epoch 1/16"
    for step in (1, 2):
        report.on_step_end(trainer, 0, step, {"loss": 3.0, "loss_m": 1.0, "loss_dis": 1.5, "loss_kl": 0.5})
    clock.now += 15
    trainer.best_map = 0.25
    report.on_epoch_end(trainer, EpochRecord(
        epoch=1, mAP=0.25, rank1=0.4, num_clusters=57, num_outliers=102, precision=0.8123, recall=0.7341,
        ari=0.41, losses={"loss_m": 1.2341, "loss_dis": 2.3456, "loss_kl": 0.1234, "loss": 3.7},
        seconds_cluster=1.23, seconds_train=11.34, seconds_eval=2.04))
    clock.now += 5
    assert report.overall() == "epoch 2/16, ETA 4 min"     # 15 s an epoch, 15 epochs left, 5 s into this one
    clock.now += 10
    report.on_epoch_end(trainer, EpochRecord(epoch=2, losses={"loss_m": 1.0}, num_clusters=60,
                                             num_outliers=90, seconds_cluster=1.0, seconds_train=9.0))
    report.on_fit_end(trainer, TrainResult(best_mAP=0.25, rows=[]))
    lines = buf.getvalue().splitlines()
    assert lines == [
        "initial model: mAP 18.7% rank-1 32.2%; eval 2.0 s",
        "losses: m = hybrid cluster-memory loss (L_m), dis = disentangled contrastive loss (L_dis), "
        "kl = relative entropy between an image and its partner (L_kl)",
        "epoch 1/16: loss m 1.234 dis 2.346 kl 0.123; 57 clusters, 102 outliers, precision 0.812, "
        "recall 0.734, ARI 0.410; mAP 25.0% rank-1 40.0% (best 25.0%, new best); "
        "cluster 1.2 s, train 11.3 s, eval 2.0 s; ETA 4 min",
        # label-free (no query ids, no hidden train ids): what exists is printed
        "epoch 2/16: loss m 1.000; 60 clusters, 90 outliers; cluster 1.0 s, train 9.0 s; ETA 4 min",
        "training took 35 s (2 epochs)",
    ]


def test_console_report_of_a_resumed_run_and_its_stage_line(monkeypatch):
    console, buf = _file_console()
    monkeypatch.setattr(C, "console", console)
    clock = Clock()
    report, trainer = ConsoleReport(clock=clock), _trainer(epochs=4, start=2, best=0.5)
    report.on_fit_start(trainer)
    assert report.overall() == "epoch 3/4"
    with report.stage("train 3/4", 2) as bar:
        assert bar is not None
        bar.advance(1, status="m 1.0")
    clock.now += 60
    report.on_epoch_end(trainer, EpochRecord(epoch=3, mAP=0.4, rank1=0.5))
    clock.now += 60
    report.on_epoch_end(trainer, EpochRecord(epoch=4, mAP=0.45, rank1=0.5))
    report.on_fit_end(trainer, TrainResult(best_mAP=0.5, rows=[]))
    assert buf.getvalue().splitlines() == [
        "epoch 3/4: mAP 40.0% rank-1 50.0% (best 50.0%); ETA 1 min",
        "epoch 4/4: mAP 45.0% rank-1 50.0% (best 50.0%)",
        "training took 2 min 00 s (epochs 3-4)",
    ]


# ----------------------------------------------------------------------------- the commands, logged
def test_prepare_check_images_names_the_bad_file_whole(tmp_path: Path):
    root = tmp_path / ("a-very-long-folder-name-for-a-camera-network-" * 3).rstrip("-")
    make_market_like(root, train_ids=2, test_ids=2, cams=2, per_cam=1)
    bad = root / "bounding_box_train" / "0001_c1s1_009999_00.jpg"
    bad.write_bytes(b"not a jpeg")
    result = runner.invoke(app, ["prepare", "-d", "folder", "--data-dir", str(root), "--check-images"])
    assert result.exit_code == 1
    assert [line for line in result.stdout.splitlines() if str(bad) in line][0].startswith(f"unreadable {bad}  (")
    assert "" not in result.stdout.splitlines() and "…" not in result.output


def test_train_names_its_long_run_dir_whole(tmp_path: Path, monkeypatch):
    from dsgl_cli.errors import DsglError
    from dsgl_cli.training.trainer import Trainer

    data = make_market_like(tmp_path / "data", train_ids=4, test_ids=2, cams=2, per_cam=2)
    logs = tmp_path / ("runs-of-a-long-experiment-name-" * 4) / "market-resnet18-eps0.6"

    def stop(self):
        raise DsglError("stopped by the test")

    monkeypatch.setattr(Trainer, "fit", stop)
    result = runner.invoke(app, ["train", "-d", "folder", "--data-dir", str(data), "-a", "resnet18",
                                 "--pretrained", "none", "--height", "32", "--width", "16", "-j", "0",
                                 "--device", "cpu", "--logs-dir", str(logs)])
    assert result.exit_code == 1 and "stopped by the test" in result.stderr
    assert [line.split() for line in result.stdout.splitlines() if str(logs) in line] == [["run", "dir", str(logs)]]
    assert "" not in result.stdout.splitlines()


@pytest.mark.parametrize("stderr", [False, True])
def test_module_consoles_follow_the_stream_they_write(stderr, capsys):
    """The module's consoles decide per write: pytest's captured streams are files, not terminals."""
    target = C.err_console if stderr else C.console
    target.print(Text(LONG * 2))
    captured = capsys.readouterr()
    assert (captured.err if stderr else captured.out) == LONG * 2 + "\n"
