"""Train/test transforms: sizes, normalisation and the random augmentations (method.md section 3)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dsgl_cli.data import transforms as tf
from dsgl_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def _image(color=(120, 60, 200), size=(40, 90)):
    return Image.fromarray(np.full((size[1], size[0], 3), color, dtype=np.uint8))


def test_test_transform_resizes_and_normalises_exactly():
    out = tf.test_transform(256, 128)(_image())
    assert out.shape == (3, 256, 128)
    expected = (torch.tensor([120, 60, 200]) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[:, 100, 50], expected, atol=1e-2)


def test_train_transform_keeps_size_and_randomises():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (90, 40, 3), dtype=np.uint8))
    t = tf.train_transform(64, 32)
    outs = [t(img) for _ in range(20)]
    assert all(o.shape == (3, 64, 32) for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:])
    # random erasing writes the raw ImageNet mean values into some outputs
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    erased = [bool(((o - mean).abs().sum(0) < 1e-6).any()) for o in outs]
    assert 0 < sum(erased) < 20
