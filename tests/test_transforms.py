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
