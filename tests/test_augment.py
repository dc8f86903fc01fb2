"""The keyed train augmentation (method.md 3): its draws, its PIL path, its batch path, the cache.

Statistical tests run on fixed seeds, so each outcome is deterministic; the significance
level says how unlikely a pass would be if the two samples really came from different
distributions of the size tested (and the torchvision comparison shows the test has power).
"""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from dsgl_cli.data import augment as A
from dsgl_cli.data import transforms as tf
from dsgl_cli.data.augment import (
    AugmentKey,
    BatchParams,
    KeyedTrainAugment,
    PilTrainAugment,
    batch_keys,
    draw_batch_params,
    draw_params,
)
from dsgl_cli.data.batch_augment import BatchAugment
from dsgl_cli.data.image_cache import decode_images
from dsgl_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dsgl_cli.errors import DsglError

ALPHA = 1e-3            # significance level of the two-sample tests
N_DRAWS = 6000          # images drawn per sample: about 3000 boxes each


# ---- an independent reference: method.md 3 written out as the reference code does it ----

def reference_erase_box(rnd: random.Random, height: int, width: int):
    """(top, left, h, w) or None, drawn with Python's random exactly as method.md 3 says."""
    if rnd.uniform(0, 1) >= 0.5:
        return None
    for _ in range(100):
        target_area = rnd.uniform(0.02, 0.4) * (height * width)
        aspect = rnd.uniform(0.3, 1 / 0.3)
        h = int(round(math.sqrt(target_area * aspect)))
        w = int(round(math.sqrt(target_area / aspect)))
        if w < width and h < height:
            return rnd.randint(0, height - h), rnd.randint(0, width - w), h, w
    return None


def _reference_boxes(n: int, height: int, width: int, seed: int) -> tuple[np.ndarray, int]:
    rnd = random.Random(seed)
    boxes = [b for b in (reference_erase_box(rnd, height, width) for _ in range(n)) if b is not None]
    return np.array(boxes, dtype=np.int64).reshape(-1, 4), n


def _keyed_boxes(n: int, height: int, width: int, seed: int) -> tuple[np.ndarray, int]:
    params = draw_batch_params(batch_keys(seed, 0, 0, range(n), A.ROLE_ANCHOR), height, width)
    return params.box[params.erase], n


def _min_ks_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest two-sample KS p-value over aspect ratio h/w, area h*w, top and left."""
    features = [lambda x: x[:, 2] / x[:, 3], lambda x: x[:, 2] * x[:, 3], lambda x: x[:, 0], lambda x: x[:, 1]]
    return min(stats.ks_2samp(f(a), f(b)).pvalue for f in features)


def _binomial_sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def test_keyed_erasing_is_indistinguishable_from_the_reference():
    mine, n_mine = _keyed_boxes(N_DRAWS, 256, 128, seed=11)
    ref, n_ref = _reference_boxes(N_DRAWS, 256, 128, seed=12)
    assert _min_ks_pvalue(mine, ref) > ALPHA
    # erasing rate: two proportions within 4 standard errors (two-sided p ~ 6e-5)
    p1, p2 = len(mine) / n_mine, len(ref) / n_ref
    pooled = (len(mine) + len(ref)) / (n_mine + n_ref)
    assert abs(p1 - p2) <= 4 * math.sqrt(pooled * (1 - pooled) * (1 / n_mine + 1 / n_ref))
    # the independent implementation agrees with the numbers method.md reports (81 %, rounded)
    tall = float(np.mean(ref[:, 2] > ref[:, 3]))
    assert abs(tall - 0.81) <= 4 * _binomial_sigma(0.81, len(ref)) + 0.005
    # every box lies inside the image
    assert (mine[:, 0] + mine[:, 2] <= 256).all() and (mine[:, 1] + mine[:, 3] <= 128).all()


def test_the_same_test_tells_torchvision_erasing_apart():
    torch.manual_seed(0)
    img = torch.zeros(3, 256, 128)
    boxes = []
    while len(boxes) < N_DRAWS // 2:
        top, left, h, w, _ = T.RandomErasing.get_params(img, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3),
                                                        value=[0.0])
        if (h, w) != (256, 128):            # (0, 0, H, W) means no attempt fitted
            boxes.append((top, left, h, w))
    tv = np.array(boxes)
    ref, _ = _reference_boxes(N_DRAWS, 256, 128, seed=12)
    assert _min_ks_pvalue(tv, ref) < ALPHA
    tall = float(np.mean(tv[:, 2] > tv[:, 3]))
    assert abs(tall - 0.59) <= 4 * _binomial_sigma(0.59, len(tv)) + 0.005


# ---- keyed draws ------------------------------------------------------------------------

def _random_keys(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**63, size=(n, 5), dtype=np.int64).astype(np.uint64)
    keys[: n // 2] *= np.uint64(2)          # fields above 2**63 too
    keys[:8] = [[1, e, i, p, r] for e, i, p, r in np.ndindex(2, 2, 1, 2)]
    return keys


def test_vectorised_stream_is_numpys_philox():
    keys = _random_keys(64, seed=1)
    per_key = np.stack([A.key_generator(k).random(A.STREAM_LENGTH) for k in keys])
    assert np.array_equal(A.stream_uniforms(keys, 0, A.STREAM_LENGTH), per_key)
    assert np.array_equal(A.stream_uniforms(keys, 37, 11), per_key[:, 37:48])


@pytest.mark.parametrize("height,width", [(256, 128), (64, 32), (8, 4), (2, 60), (60, 2)])
def test_batch_draws_equal_per_image_draws(height, width):
    keys = _random_keys(400, seed=height * 1000 + width)
    batch = draw_batch_params(keys, height, width)
    assert [batch.image(i) for i in range(len(keys))] == [draw_params(k, height, width) for k in keys]
    assert batch.erase.any() and (~batch.erase).any() and batch.flip.any() and (~batch.flip).any()
    if (height, width) == (2, 60):          # most attempts fail: later attempt chunks are used
        assert batch.erase.mean() < 0.4
    assert BatchParams.stack([batch.image(i) for i in range(len(keys))]).image(5) == batch.image(5)


def test_keys_decide_the_draws_not_their_order():
    keys = _random_keys(200, seed=3)
    perm = np.random.default_rng(0).permutation(len(keys))
    batch, shuffled = draw_batch_params(keys, 64, 32), draw_batch_params(keys[perm], 64, 32)
    assert [shuffled.image(i) for i in range(len(keys))] == [batch.image(int(j)) for j in perm]
    assert draw_params(keys[7], 64, 32) == draw_params(keys[7], 64, 32) == batch.image(7)


@pytest.mark.parametrize("field", range(5))
def test_every_key_field_changes_the_draws(field):
    base = batch_keys(1, 2, 3, range(64), A.ROLE_ANCHOR)
    other = base.copy()
    other[:, field] += 1
    assert not np.array_equal(A.stream_uniforms(base, 0, 8), A.stream_uniforms(other, 0, 8))
    a, b = draw_batch_params(base, 64, 32), draw_batch_params(other, 64, 32)
    assert [a.image(i) for i in range(64)] != [b.image(i) for i in range(64)]


def test_negative_keys_are_refused():
    with pytest.raises(ValueError):
        draw_params(AugmentKey(-1, 0, 0, 0, 0), 64, 32)
    with pytest.raises(ValueError):
        draw_batch_params(np.array([[0, 0, 0, -2, 0]]), 64, 32)
    assert len(draw_batch_params(np.zeros((0, 5), dtype=np.int64), 64, 32)) == 0


# ---- the PIL path -------------------------------------------------------------------------

def _noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_pil_path_is_torchvisions_ops_with_the_drawn_parameters():
    img = Image.fromarray(_noise((90, 40, 3), 0))
    params = draw_batch_params(batch_keys(5, 0, 0, range(32), 0), 64, 32)
    pad = A.train_padding(64)
    augment = PilTrainAugment(64, 32)
    for i in range(len(params)):
        p = params.image(i)
        x = TF.resize(img, [64, 32], interpolation=T.InterpolationMode.BICUBIC)
        x = TF.hflip(x) if p.flip else x
        x = TF.crop(TF.pad(x, pad), p.crop_top, p.crop_left, 64, 32)
        x = TF.normalize(TF.to_tensor(x), IMAGENET_MEAN, IMAGENET_STD)
        if p.erase is not None:
            top, left, h, w = p.erase
            x[:, top:top + h, left:left + w] = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        assert torch.equal(augment(img, p), x)


def test_pil_path_is_picklable_and_keyed():
    img = Image.fromarray(_noise((64, 32, 3), 1))
    keyed = pickle.loads(pickle.dumps(KeyedTrainAugment(64, 32, seed=9)))
    for position in range(8):
        expected = PilTrainAugment(64, 32)(img, draw_params(AugmentKey(9, 1, 2, position, 1), 64, 32))
        assert torch.equal(keyed(img, 1, 2, position, 1), expected)


# ---- the batch path against the PIL path ----------------------------------------------------

def _grey_levels(x: torch.Tensor) -> torch.Tensor:
    """Normalised values back in 0..255 units (float64 keeps the inversion error ~1e-4)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    return (x.double() * std + mean) * 255


# one grey level (the quantisation step of uint8 pixels) plus the float32 error of
# normalising and inverting: |v| < 3, float32 eps 1.2e-7, times 255 / std < 1200 -> < 1e-3
GREY_TOL = 1 + 1e-3


def _pil_batch(batch: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in batch]


def test_batch_train_equals_pil_path_exactly_without_resize():
    batch = torch.from_numpy(_noise((64, 3, 64, 32), 2))
    params = draw_batch_params(batch_keys(4, 1, 7, range(64), 0), 64, 32)
    pad = A.train_padding(64)
    assert params.flip.any() and (~params.flip).any() and params.erase.any() and (~params.erase).any()
    assert {0, 2 * pad} <= set(params.crop_top.tolist()) and {0, 2 * pad} <= set(params.crop_left.tolist())
    out = BatchAugment(64, 32).train(batch, params)
    pil = PilTrainAugment(64, 32)
    for i, img in enumerate(_pil_batch(batch)):
        assert torch.equal(out[i], pil(img, params.image(i)))


RESIZES = [((128, 64), (256, 128)),    # Market-1501 native -> default: upscale by 2
           ((300, 150), (256, 128)),   # downscale (antialiased support)
           ((100, 90), (64, 32)),      # downscale, unequal factors
           ((37, 23), (64, 32)),       # upscale by non-integer factors
           ((200, 17), (64, 32))]      # height down, width up: Pillow 13 resizes vertically first


@pytest.mark.parametrize("native,train", RESIZES)
def test_batch_resize_reproduces_pillow_bicubic(native, train):
    batch = torch.from_numpy(_noise((6, 3, *native), 3))
    resized = BatchAugment(*train).resize(batch)
    for i, img in enumerate(_pil_batch(batch)):
        pil = torch.from_numpy(np.array(img.resize(train[::-1], Image.Resampling.BICUBIC))).permute(2, 0, 1)
        assert (resized[i].int() - pil.int()).abs().max() <= 1
    # power: torch's own bicubic (a = -0.75, no antialiasing) is told apart by that bound
    torch_bicubic = F.interpolate(batch.double(), size=train, mode="bicubic", align_corners=False)
    pil_all = torch.stack([torch.from_numpy(np.array(img.resize(train[::-1], Image.Resampling.BICUBIC)))
                           .permute(2, 0, 1) for img in _pil_batch(batch)])
    assert (torch_bicubic.round().clamp(0, 255) - pil_all.double()).abs().max() > 1


@pytest.mark.parametrize("native,train", RESIZES)
def test_batch_train_and_test_match_pil_within_one_grey_level(native, train):
    batch = torch.from_numpy(_noise((8, 3, *native), 4))
    params = draw_batch_params(batch_keys(2, 0, 3, range(8), 1), *train)
    augment = BatchAugment(*train)
    out, test = augment.train(batch, params), augment.test(batch)
    pil_train, pil_test = PilTrainAugment(*train), tf.test_transform(*train)
    for i, img in enumerate(_pil_batch(batch)):
        assert (_grey_levels(out[i]) - _grey_levels(pil_train(img, params.image(i)))).abs().max() <= GREY_TOL
        assert (_grey_levels(test[i]) - _grey_levels(pil_test(img))).abs().max() <= GREY_TOL


def test_batch_test_mode_is_exact_without_resize():
    batch = torch.from_numpy(_noise((8, 3, 64, 32), 5))
    out = BatchAugment(64, 32).test(batch)
    for i, img in enumerate(_pil_batch(batch)):
        assert torch.equal(out[i], tf.test_transform(64, 32)(img))


def test_batch_path_refuses_mismatched_inputs():
    augment = BatchAugment(64, 32)
    with pytest.raises(ValueError):
        augment.test(torch.zeros(2, 3, 64, 32))                      # float, not uint8
    with pytest.raises(ValueError):
        augment.train(torch.zeros(2, 3, 64, 32, dtype=torch.uint8),
                      draw_batch_params(batch_keys(0, 0, 0, range(3), 0), 64, 32))


# ---- the decode-once cache -------------------------------------------------------------------

def _write(path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def test_cache_keeps_a_shared_native_size_and_pils_pixels(tmp_path):
    paths = [_write(tmp_path / f"{i}.jpg", _noise((48, 24, 3), 10 + i)) for i in range(5)]
    paths.append(_write(tmp_path / "grey.png", _noise((48, 24), 20)))        # mode L -> RGB
    cache = decode_images(paths, 64, 32, workers=2)
    assert cache.native and cache.size == (48, 24) and cache.nbytes == 6 * 3 * 48 * 24
    for i, path in enumerate(paths):
        expected = np.array(Image.open(path).convert("RGB"))
        assert torch.equal(cache.images[i], torch.from_numpy(expected).permute(2, 0, 1))
    assert torch.equal(cache.batch([3, 0], torch.device("cpu")), cache.images[[3, 0]])


def test_cache_of_mixed_sizes_feeds_the_batch_path_exactly(tmp_path):
    sizes = [(70, 30), (64, 32), (20, 50), (129, 64)]
    paths = [_write(tmp_path / f"{i}.png", _noise((*s, 3), 30 + i)) for i, s in enumerate(sizes)]
    cache = decode_images(paths, 64, 32, workers=2)
    assert not cache.native and cache.size == (64, 32)
    params = draw_batch_params(batch_keys(6, 2, 1, range(len(paths)), 0), 64, 32)
    out = BatchAugment(64, 32).train(cache.batch(range(len(paths)), torch.device("cpu")), params)
    pil = PilTrainAugment(64, 32)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            assert torch.equal(out[i], pil(img, params.image(i)))


def test_cache_names_an_unreadable_image(tmp_path):
    good = _write(tmp_path / "good.jpg", _noise((32, 16, 3), 40))
    garbage = tmp_path / "0001_c1s1_000001_00.jpg"
    garbage.write_bytes(b"not an image\nat all")
    with pytest.raises(DsglError) as err:
        decode_images([good, str(garbage)], 32, 16)
    assert str(garbage) in str(err.value) and "\n" not in str(err.value)
    truncated = tmp_path / "0002_c1s1_000001_00.jpg"     # a valid header, pixels cut off
    truncated.write_bytes(open(good, "rb").read()[:200])
    with pytest.raises(DsglError) as err:
        decode_images([good, str(truncated)], 32, 16)
    assert str(truncated) in str(err.value) and "\n" not in str(err.value)
