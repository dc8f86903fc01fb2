"""The duration said before training: arithmetic from timed passes, and the timing leaves the run as it was."""

from __future__ import annotations

import torch
from torch import nn

from dsgl_cli.config import build_config
from dsgl_cli.training.estimate import DurationEstimate, estimate_duration, evaluations_due, format_long


def test_the_total_is_steps_extraction_and_evaluations():
    est = DurationEstimate(seconds_step=0.5, seconds_image=0.002, steps=30, epochs=16, train_images=1000,
                           eval_images=500, evaluations=17)
    assert est.seconds == 16 * (30 * 0.5 + 1000 * 0.002) + 17 * 500 * 0.002
    line = est.line("cpu")
    assert line.startswith("estimated duration on cpu: about 5 min (16 epochs x 30 steps of 500 ms")
    assert "17 evaluations of 500 images" in line and "clustering and data loading not counted" in line
    assert "1 epoch x 1 step of" in DurationEstimate(2.0, 0.1, 1, 1, 1, 0, 0).line("cuda")


def test_evaluations_follow_the_evaluation_callback():
    assert evaluations_due(16, 1) == 17        # before training and after every epoch
    assert evaluations_due(10, 4) == 4         # 0, 4, 8 and the last
    assert evaluations_due(10, 4, first=8) == 1
    assert evaluations_due(0, 1) == 1          # --epochs 0: the model before training
    assert format_long(3 * 86400) == "3.0 days" and format_long(90) == "2 min"


def test_timing_leaves_the_weights_the_statistics_and_the_random_state_alone():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Dropout(0.5))   # statistics that a forward moves, a dropout that draws
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    cfg = build_config({"dataset": "folder", "height": 32, "width": 16, "batch_size": 8, "iters": 5, "epochs": 2,
                        "eval_step": 1})
    est = estimate_duration(model, cfg, torch.device("cpu"), train_images=40, eval_images=20)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert est.steps == 5 and est.epochs == 2 and est.evaluations == 3
    assert est.seconds_step > 0 and est.seconds_image > 0
