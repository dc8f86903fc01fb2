"""Train and test image transforms (method.md section 3)."""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(height: int, width: int) -> T.Compose:
    """Resize (bicubic), flip, pad 10 + random crop, normalise, random erasing filled with the mean.

    Padding scales with the input (10 px at 256x128) so small demo inputs are not over-shifted.
    Its erasing is torchvision's (log-uniform aspect ratio, 10 attempts), not the reference's
    of method.md 3, and its draws come from the worker's global RNG: the keyed path in
    ``dsgl_cli.data.augment`` (per image) and ``dsgl_cli.data.batch_augment`` (per batch)
    follows method.md 3 and does not depend on worker counts.
    """
    pad = max(1, round(10 * height / 256))
    return T.Compose([
        T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.Pad(pad),
        T.RandomCrop((height, width)),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        # The reference erases after normalisation with the raw mean values, area 2-40 %.
        T.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value=list(IMAGENET_MEAN)),
    ])


def test_transform(height: int, width: int) -> T.Compose:
    """Resize (bicubic) and normalise: what features are extracted with."""
    return T.Compose([
        T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
