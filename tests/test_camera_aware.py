"""CA-Jaccard in the sparse engine against a dense implementation of docs/ca-jaccard.md, with the
spec's negative controls (each a misreading the comparison must catch)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from dsgl_cli.clustering.camera_aware import compute_camera_aware_jaccard, expansion_sizes
from dsgl_cli.clustering.dbscan import dbscan
from dsgl_cli.errors import DsglError
from tests.reference_ca_jaccard import camera_biased_features, reference_ca_jaccard

MAX_D = 0.95
#: camera sizes: 6 uneven cameras, one smaller than k1_intra + 1 = 6 (its intra lists spill over);
#: and 2 cameras where the small one's 12 images are fewer than k1_inter + 1 = 21 (inter lists spill)
CASES = {"six-cameras": ([60, 45, 80, 4, 30, 35], 40, 0), "two-cameras": ([70, 12], 15, 3)}
_cache: dict = {}


def _case(name: str):
    if name not in _cache:
        sizes, ids, seed = CASES[name]
        _cache[name] = camera_biased_features(sizes, ids, 32, seed)
    return _cache[name]


def _engine(x, cams, epoch):
    a, b = expansion_sizes(epoch, 2, 4)
    return compute_camera_aware_jaccard(x, cams, 5, 20, a, b, max_distance=MAX_D)


def test_the_features_are_camera_biased():
    x, cams, _ = _case("six-cameras")
    d = 2.0 - 2.0 * x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(d, np.inf)
    assert (cams[d.argmin(1)] == cams).mean() > 0.8


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("epoch", [None, 0, 1])
def test_camera_aware_matches_the_dense_spec(name, epoch):
    x, cams, _ = _case(name)
    n = len(x)
    ref = reference_ca_jaccard(x, cams, epoch)
    jac = _engine(x, cams, epoch)
    assert isinstance(jac, sp.csr_matrix) and jac.dtype == np.float32 and jac.max_distance == MAX_D
    coo = jac.tocoo()
    np.testing.assert_allclose(coo.data, ref[coo.row, coo.col], atol=1e-5, rtol=0)
    stored = np.zeros((n, n), dtype=bool)
    stored[coo.row, coo.col] = True
    assert np.all(ref[~stored] > MAX_D) and coo.nnz == stored.sum()
    assert (abs(jac - jac.T) > 0).nnz == 0
    clusters = 0
    for eps in (0.37, 0.52, 0.63):
        got = dbscan(jac, eps, min_samples=4)
        np.testing.assert_array_equal(got, DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(ref))
        clusters = max(clusters, got.max() + 1)
    assert clusters >= 3   # the label comparison has teeth


CONTROLS = {
    "20-entry inter list": (1, dict(inter_list=20)),
    "5-entry intra list": (1, dict(intra_list=5)),
    "3/3 expansion after epoch 0": (1, dict(force_k2=(3, 3))),
    "no expansion": (1, dict(expand=False)),
    "warm-up ignored": (0, dict(warmup=False)),
}


@pytest.mark.parametrize("control", list(CONTROLS))
@pytest.mark.parametrize("name", list(CASES))
def test_each_negative_control_fails_the_comparison(name, control):
    """The spec's misreadings move J by >= 0.02 somewhere, far beyond the 1e-5 tolerance above."""
    x, cams, _ = _case(name)
    epoch, knobs = CONTROLS[control]
    wrong = reference_ca_jaccard(x, cams, epoch, **knobs)
    got = _engine(x, cams, epoch).toarray()
    got[got == 0] = 1.0   # absent pairs are farther than MAX_D: compare both at 1
    np.fill_diagonal(got, 0.0)
    wrong = np.where(wrong > MAX_D, 1.0, wrong)
    assert np.abs(got - wrong).max() >= 0.02


def test_warmup_rule_and_given_sizes():
    assert expansion_sizes(0, 2, 4) == (3, 3)
    assert expansion_sizes(1, 2, 4) == (2, 4)
    assert expansion_sizes(None, 2, 4) == (2, 4)


def test_k2_of_one_switches_the_expansion_off():
    x, cams, _ = _case("six-cameras")
    got = compute_camera_aware_jaccard(x, cams, k2=1, max_distance=MAX_D).toarray()
    ref = reference_ca_jaccard(x, cams, None, k2=1)
    stored = got > 0
    np.testing.assert_allclose(got[stored], ref[stored], atol=1e-5)


def test_torch_input_and_camera_labels_of_any_kind_agree():
    x, cams, _ = _case("six-cameras")
    base = compute_camera_aware_jaccard(x, cams)
    names = np.array([f"cam{c + 10}" for c in cams])
    other = compute_camera_aware_jaccard(torch.from_numpy(x), names)
    assert abs(base - other).max() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_features_give_the_host_distance():
    x, cams, _ = _case("six-cameras")
    host = compute_camera_aware_jaccard(x, cams)
    dev = compute_camera_aware_jaccard(torch.from_numpy(x).cuda(), cams)
    assert abs(host - dev).max() < 1e-5 and host.nnz == dev.nnz


@pytest.mark.parametrize("kwargs,message", [
    (dict(k2_intra=8), "may not exceed --k1-intra + 2"),
    (dict(k1_inter=300), "asks for 301 neighbours per image but only 254 images"),
    (dict(k1_intra=0), "--k1-intra must be at least 1"),
])
def test_bad_sizes_are_one_line_errors(kwargs, message):
    x, cams, _ = _case("six-cameras")
    with pytest.raises(DsglError, match=message.replace("+", r"\+")):
        compute_camera_aware_jaccard(x, cams, **kwargs)


def test_one_camera_id_per_image():
    x, cams, _ = _case("six-cameras")
    with pytest.raises(DsglError, match="one camera id per image"):
        compute_camera_aware_jaccard(x, cams[:-1])


@pytest.mark.parametrize("epoch", [0, 1])
def test_training_clusters_with_the_epochs_expansion(epoch):
    """make_pseudo_labels (the trainer's call) passes the epoch on: 3/3 at the first clustering only."""
    from dsgl_cli.clustering.pseudo_labels import make_pseudo_labels

    x, cams, _ = _case("six-cameras")
    got = make_pseudo_labels(torch.from_numpy(x), eps=0.52, k1=20, with_irrelevant=False, cameras=cams, epoch=epoch,
                             jaccard="camera-aware", k1_intra=5, k1_inter=20, k2_intra=2, k2_inter=4)
    expected = DBSCAN(eps=0.52, min_samples=4, metric="precomputed").fit_predict(reference_ca_jaccard(x, cams, epoch))
    np.testing.assert_array_equal(got.labels, expected)
    assert got.eps == 0.52
    auto = make_pseudo_labels(torch.from_numpy(x), eps="auto", with_irrelevant=False, cameras=cams, epoch=epoch,
                              jaccard="camera-aware")
    assert isinstance(auto.eps, float) and 0.2 <= auto.eps <= 0.9


def test_settings_parse_jaccard_and_eps_auto():
    from dsgl_cli.config import build_config

    cfg = build_config({"jaccard": "Camera-Aware", "eps": "AUTO", "k2_intra": 3, "k2_inter": 3})
    assert (cfg.cluster.jaccard, cfg.cluster.eps, cfg.cluster.k1_intra, cfg.cluster.k1_inter) == \
        ("camera-aware", "auto", 5, 20)
    assert build_config({}).cluster.jaccard == "kreciprocal"   # the paper's distance stays the default
    assert build_config({"eps": "0.45"}).cluster.eps == 0.45
    for bad, message in (({"eps": "half"}, "--eps: must be a number between 0 and 1 or auto, got 'half'"),
                         ({"jaccard": "cam"}, "--jaccard: 'cam' is not one of kreciprocal, camera-aware")):
        with pytest.raises(DsglError, match=message):
            build_config(bad)


def test_camera_aware_needs_cameras():
    from dsgl_cli.clustering.distance import clustering_distance

    x, _, _ = _case("six-cameras")
    with pytest.raises(DsglError, match="--jaccard camera-aware needs each image's camera"):
        clustering_distance(x, jaccard="camera-aware")


@pytest.fixture(scope="module")
def tiny_records(tmp_path_factory):
    """test_trainer's tiny train split (its fixture, rebuilt here)."""
    from tests import test_trainer as tt

    folder = tmp_path_factory.mktemp("tiny_ca")
    records = []
    for i in range(tt.N):
        tt.write_image(folder / f"{i:04d}.jpg", seed=i, size=(tt.H, tt.W))
        records.append(tt.ImageRecord(str(folder / f"{i:04d}.jpg"), i % tt.C, i % 2))
    return records


@pytest.mark.slow
def test_the_trainer_passes_each_epoch_and_the_distance_settings(monkeypatch, tiny_records):
    """The trainer's own clustering call: epoch 0 then 1 (the warm-up keys on it), --jaccard settings as given."""
    from dsgl_cli.clustering import pseudo_labels
    from dsgl_cli.training.trainer import Trainer
    from tests.test_trainer import FakeMemory, TinyReID, _cfg, fake_labels

    calls = []

    def record(features, **kwargs):
        calls.append(kwargs)
        return fake_labels(features)

    monkeypatch.setattr(pseudo_labels, "make_pseudo_labels", record)
    cfg = _cfg(2, jaccard="camera-aware", k2_intra=1, k2_inter=2, eps="auto")
    Trainer(cfg, tiny_records, TinyReID(), torch.device("cpu"), [], memory_factory=lambda f, lab: FakeMemory(),
            memory_type=FakeMemory).fit()
    assert [c["epoch"] for c in calls] == [0, 1]
    assert all(c["jaccard"] == "camera-aware" and (c["k2_intra"], c["k2_inter"]) == (1, 2) and c["eps"] == "auto"
               and c["cameras"] is not None for c in calls)
