"""DSGLMemory (vectorised) against the plain-loop reference of method.md 5 on random epochs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dsgl_cli.errors import DsglError
from dsgl_cli.method.batch_plan import MemoryTables, batch_tables
from dsgl_cli.method.memory import DSGLMemory
from tests import reference_step as ref

EPS32 = torch.finfo(torch.float32).eps
TEMP = 0.05


def float32_tolerance(reference: torch.Tensor, d: int) -> float:
    """How far a float32 result may lie from the float64 reference of the same step.

    Every compared quantity is (at most linearly) a function of scores f.x / T over d-long dot
    products, whose float32 rounding error is about sqrt(d) ulps of |f||x| / T; relative to the
    quantity's own scale that is sqrt(d) / T ulps (98 at d = 24). Measured worst over twelve seeds:
    19 ulps (the L_kl gradient), so the bound has a 5x margin while a real error (1e-3 relative and
    up) still fails by orders of magnitude.
    """
    return (d ** 0.5 / TEMP) * EPS32 * float(reference.abs().max())


def random_epoch(seed: int, n: int = 240, d: int = 24, C: int = 14) -> dict:
    """Random clustered epoch with the awkward cases built in.

    cluster 0: a singleton; cluster 1: every member has irrelevant label 2 (S+ empty for a^0 = 2);
    cluster 3: every member has irrelevant label 4 and no other image has 4 (S- empty for a^0 = 4);
    ~8% outliers (label -1, irrelevant -1).
    """
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(C, d, generator=g), dim=1)
    labels = torch.randint(1, C, (n,), generator=g)
    labels[0] = 0
    labels[torch.randperm(n - 1, generator=g)[: n // 12] + 1] = -1
    feats = F.normalize(centers[labels.clamp(min=0)] + 0.6 * torch.randn(n, d, generator=g), dim=1)
    # irrelevant labels: two distinct clusters among 4 "neighbours" of the image's own cluster
    others = torch.stack([torch.randperm(C - 1, generator=g)[:4] for _ in range(C)])
    others = others + (others >= torch.arange(C).view(-1, 1)).long()   # skip the cluster itself
    pick = torch.rand(n, 4, generator=g).argsort(dim=1)[:, :2]
    irre = others[labels.clamp(min=0)].gather(1, pick)
    irre[labels < 0] = -1
    irre[labels == 1, 0] = 2
    irre[(labels >= 0) & (labels != 3) & (irre[:, 0] == 4), 0] = 5
    irre[labels == 3, 0] = 4
    fix = (labels >= 0) & (irre[:, 1] == irre[:, 0])
    irre[fix, 1] = torch.where(irre[fix, 0] == 6, 7, 6)
    fix = (labels >= 0) & (irre[:, 1] == labels)
    irre[fix, 1] = torch.where(labels[fix] == 8, 9, 8)
    clustered = labels >= 0
    centroids = torch.zeros(C, d).index_add_(0, labels[clustered], feats[clustered])
    centroids /= torch.bincount(labels[clustered], minlength=C).view(-1, 1)
    return {"features": feats, "labels": labels, "irre": irre, "centroids": centroids, "g": g}


def random_batch(ep: dict, clusters: list[int], inst: int = 4) -> tuple[torch.Tensor, ...]:
    """Batch of `inst` rows per cluster drawn with replacement (so duplicates happen), noisy f, f_hat."""
    g, labels = ep["g"], ep["labels"]
    rows = []
    for c in clusters:
        members = torch.nonzero(labels == c).view(-1)
        rows.append(members[torch.randint(0, members.numel(), (inst,), generator=g)])
    idx = torch.cat(rows)
    d = ep["features"].shape[1]
    f = F.normalize(ep["features"][idx] + 0.3 * torch.randn(idx.numel(), d, generator=g), dim=1)
    f_hat = F.normalize(ep["features"][idx.flip(0)] + 0.3 * torch.randn(idx.numel(), d, generator=g), dim=1)
    return idx, labels[idx], ep["irre"][idx], f, f_hat


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 result against the float64 loop reference, within the float32 error of the quantity."""
    got, want = got.detach(), want.detach()
    assert got.dtype == torch.float32 and want.dtype == torch.float64
    d = got.shape[-1] if got.dim() else 1
    torch.testing.assert_close(got.double(), want, rtol=0, atol=float32_tolerance(want, max(d, 24)))


def _check_iteration(mem: DSGLMemory, state: dict, ep: dict, batch: tuple, mode: str) -> dict:
    """Losses, gradients and memory after update: vectorised (float32) vs the loop in float64.

    The loop starts from the vectorised memory of this iteration (in float64), so each iteration is
    checked on its own and the two states cannot drift apart by rounding over iterations.
    """
    idx, t, irre, f0, fh0 = batch
    f, fh = f0.clone().requires_grad_(), fh0.clone().requires_grad_()
    rf, rfh = f0.double().requires_grad_(), fh0.double().requires_grad_()
    state["bank"], state["instance"] = mem.bank.double(), mem.instance.double()
    out = mem.losses(f, idx, t, irre if mode == "DLhybrid" else None, fh, details=mode == "DLhybrid")
    exp = ref.ref_losses(state["bank"], state["instance"], ep["labels"], ep["irre"], rf, idx, t, irre, rfh,
                         mode=mode, temp=mem.temp, smooth=mem.smooth)
    keys = ["loss_m"]
    if mode == "DLhybrid":
        keys += ["loss_dis", "loss_dis_pass0", "loss_dis_pass1", "loss_kl", "loss_kl_k0", "loss_kl_k1",
                 "dis_pos_proto0", "dis_pos_proto1", "re_dist_proto_k0", "re_dist_proto_k1"]
    else:
        assert float(out["loss_dis"]) == 0.0 and float(out["loss_kl"]) == 0.0
    for k in keys:
        _close(out[k], exp[k])
    for k in keys[:1] + (["loss_dis", "loss_kl"] if mode == "DLhybrid" else []):
        got = torch.autograd.grad(out[k], [f, fh], retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(exp[k], [rf, rfh], retain_graph=True, allow_unused=True)
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            if a is not None:
                _close(a, b)
    mem.update(f, idx, t)
    state["bank"], state["instance"] = ref.ref_update(state["bank"], state["instance"], rf, idx, t, mode=mode)
    _close(mem.bank, state["bank"])
    _close(mem.instance, state["instance"])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loop_dlhybrid_several_iterations(seed: int) -> None:
    """Chained iterations (the running group sums must follow the instance writes)."""
    ep = random_epoch(seed)
    mem = DSGLMemory(ep["features"], ep["labels"], ep["irre"], ep["centroids"])
    state = {"bank": mem.bank.clone(), "instance": mem.instance.clone()}
    plans = [[0, 1, 3, 5], [1, 2, 3, 4], [6, 0, 7, 3]]
    for clusters in plans[: 3 if seed == 0 else 2]:
        _check_iteration(mem, state, ep, random_batch(ep, clusters), "DLhybrid")


def test_loop_covers_the_edge_cases() -> None:
    """The random epoch really has empty S+, empty S-, a singleton and duplicate batch rows."""
    ep = random_epoch(0)
    labels, irre0 = ep["labels"], ep["irre"][:, 0]
    assert int((labels == 0).sum()) == 1
    assert not bool(((labels == 1) & (irre0 != 2)).any())          # S+ of (1, a=2) is empty
    assert not bool(((irre0 == 4) & (labels != 3)).any())          # S- of (3, a=4) is empty
    idx = random_batch(ep, [0, 1, 3, 5])[0]
    assert idx.unique().numel() < idx.numel()


@pytest.mark.parametrize("mode", ["CM", "CMhard"])
def test_loop_cluster_memory_modes(mode: str) -> None:
    ep = random_epoch(5)
    mem = DSGLMemory(ep["features"], ep["labels"], None, ep["centroids"], mode=mode)
    assert mem.bank.shape == (ep["centroids"].shape[0], ep["features"].shape[1])
    state = {"bank": mem.bank.clone(), "instance": mem.instance.clone()}
    for clusters in ([0, 1, 2, 3], [3, 4, 5, 1]):
        _check_iteration(mem, state, ep, random_batch(ep, clusters), mode)


def test_loop_larger_batch_many_clusters() -> None:
    """16 instances x 4 clusters like training, more clusters, both irrelevant orders exercised."""
    ep = random_epoch(11, n=600, d=32, C=30)
    mem = DSGLMemory(ep["features"], ep["labels"], ep["irre"], ep["centroids"])
    state = {"bank": mem.bank.clone(), "instance": mem.instance.clone()}
    _check_iteration(mem, state, ep, random_batch(ep, [3, 10, 17, 1], inst=16), "DLhybrid")


@pytest.mark.parametrize("mode", ["DLhybrid", "CMhard"])
def test_hard_update_takes_the_first_of_tied_least_similar_samples(mode: str) -> None:
    """j* = argmin_j f_j.H[k], first index on ties (method.md 5.1): two mirror images tie exactly."""
    d, C = 4, 3
    centroids = torch.eye(d)[:C]
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    irre = torch.tensor([[1, 2], [1, 2], [2, 1], [0, 2], [2, 0], [0, 1], [1, 0]])
    feats = F.normalize(torch.rand(7, d) + 0.1, dim=1)
    mem = DSGLMemory(feats, labels, irre if mode == "DLhybrid" else None, centroids, mode=mode)
    # cluster 0's hard prototype is e0; rows 1 and 3 have the same (lowest) similarity 0.5 with it
    f = torch.tensor([[0.9, 0.4359, 0.0, 0.0], [0.5, 0.0, 0.8660254, 0.0], [0.8, 0.6, 0.0, 0.0],
                      [0.5, 0.0, -0.8660254, 0.0]])
    f = F.normalize(f, dim=1)
    assert float(f[1] @ centroids[0]) == float(f[3] @ centroids[0])
    mem.update(f, torch.tensor([0, 1, 2, 0]), torch.zeros(4, dtype=torch.long))
    expected = F.normalize(0.1 * centroids[0] + 0.9 * f[1], dim=0)
    torch.testing.assert_close(mem.hard_prototypes[0], expected)
    # the instance write keeps the last of the duplicate index 0
    torch.testing.assert_close(mem.instance[0], f[3])


def test_losses_are_pure() -> None:
    ep = random_epoch(3)
    mem = DSGLMemory(ep["features"], ep["labels"], ep["irre"], ep["centroids"])
    state = {k: v.clone() for k, v in mem.state_dict().items() if isinstance(v, torch.Tensor)}
    idx, t, irre, f, fh = random_batch(ep, [1, 2, 3, 4])
    a = mem.losses(f, idx, t, irre, fh)
    b = mem.losses(f, idx, t, None, fh)          # irre=None reads the stored labels
    for k in ("loss_m", "loss_dis", "loss_kl"):
        assert torch.equal(a[k], b[k])
    assert all(torch.equal(mem.state_dict()[k], v) for k, v in state.items())


def test_the_last_duplicate_is_the_one_written() -> None:
    """I[idx] = f with duplicate indices: the last row wins (hand-counted), and the batch's groups and
    clusters know their last anchor."""
    ep = random_epoch(4)
    mem = DSGLMemory(ep["features"], ep["labels"], ep["irre"], ep["centroids"])
    members = torch.nonzero(ep["labels"] == 5).view(-1)
    idx = members[torch.tensor([0, 1, 0, 2, 1, 0])]
    f = torch.randn(6, ep["features"].shape[1])
    bt = batch_tables(mem.tables(), f, idx, ep["labels"][idx])
    assert bt.written.tolist() == [False, False, False, True, True, True]
    assert bt.last_of_cluster.tolist() == [False] * 5 + [True]
    assert bt.last_anchor.tolist() == [5] * 6
    assert torch.equal(bt.delta[:3], torch.zeros(3, f.shape[1]))
    mem.update(f, idx, ep["labels"][idx])
    assert torch.equal(mem.instance[idx[3:]], f[3:])
    assert isinstance(mem.tables(), MemoryTables)


def test_to_device_keeps_results() -> None:
    """A memory moved to another device (the same one here) gives the same losses, bit for bit."""
    ep = random_epoch(4)
    mem = DSGLMemory(ep["features"], ep["labels"], ep["irre"], ep["centroids"])
    idx, t, irre, f, fh = random_batch(ep, [1, 2, 3, 4])
    before = mem.losses(f, idx, t, irre, fh)
    moved = mem.to("cpu")
    after = moved.losses(f, idx, t, irre, fh)
    assert moved.device == torch.device("cpu") and moved.instance.device.type == "cpu"
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_errors_are_user_errors() -> None:
    ep = random_epoch(4)
    with pytest.raises(DsglError):
        DSGLMemory(ep["features"], ep["labels"], ep["irre"], ep["centroids"], mode="hybrid")
    with pytest.raises(DsglError):
        DSGLMemory(ep["features"], ep["labels"], None, ep["centroids"])
    bad = ep["irre"].clone()
    bad[int(torch.nonzero(ep["labels"] >= 0)[0]), 1] = -1
    with pytest.raises(DsglError):
        DSGLMemory(ep["features"], ep["labels"], bad, ep["centroids"])
    mem = DSGLMemory(ep["features"], ep["labels"], ep["irre"], ep["centroids"])
    idx, t, irre, f, _ = random_batch(ep, [1, 2])
    with pytest.raises(DsglError):
        mem.losses(f, idx, t, irre, None)


def test_temp_changes_l_m_alone():
    """--temp is L_m's temperature; L_dis, L_kl and their gradients stay at the fixed 0.05 (method.md 5)."""
    ep = random_epoch(6)
    batch = random_batch(ep, [1, 2, 3, 5])
    outs = {}
    for temp in (0.05, 0.09):
        mem = DSGLMemory(ep["features"], ep["labels"], ep["irre"], ep["centroids"], temp=temp)
        state = {"bank": mem.bank.clone(), "instance": mem.instance.clone()}
        outs[temp] = _check_iteration(mem, state, ep, batch, "DLhybrid")
    assert not torch.equal(outs[0.05]["loss_m"], outs[0.09]["loss_m"])
    for key in ("loss_dis", "loss_kl", "loss_dis_pass0", "loss_kl_k1"):
        assert torch.equal(outs[0.05][key], outs[0.09][key]), key


@pytest.mark.parametrize("num_clusters", [14, 120])
@pytest.mark.parametrize("mode", ["DLhybrid", "CM"])
def test_label_smoothing_matches_the_loop(num_clusters: int, mode: str):
    """--smooth: top-K smoothing with K = C // 50 (K = 2 at C = 120), uniform 0.1/C below (K <= 1)."""
    ep = random_epoch(7, n=900 if num_clusters > 50 else 240, C=num_clusters)
    irre = ep["irre"] if mode == "DLhybrid" else None
    mem = DSGLMemory(ep["features"], ep["labels"], irre, ep["centroids"], mode=mode, smooth=True)
    plain = DSGLMemory(ep["features"], ep["labels"], irre, ep["centroids"], mode=mode)
    state = {"bank": mem.bank.clone(), "instance": mem.instance.clone()}
    batch = random_batch(ep, [1, 2, 3, 5])
    idx, t, b_irre, f, fh = batch
    smoothed = _check_iteration(mem, state, ep, batch, mode)["loss_m"]
    assert not torch.allclose(smoothed, plain.losses(f, idx, t, b_irre if irre is not None else None, fh)["loss_m"])


def test_smoothed_targets_by_hand():
    from dsgl_cli.method.losses import smoothed_targets

    # C = 100: K = 2; row 0's two largest logits are classes 7 and 3 (its label is 3)
    logits = torch.zeros(2, 100)
    logits[0, 7], logits[0, 3], logits[1, 50], logits[1, 60] = 5.0, 4.0, 3.0, 2.0
    w = smoothed_targets(logits, torch.tensor([3, 9]))
    assert w[0, 3] == pytest.approx(0.95) and w[0, 7] == pytest.approx(0.05) and float(w[0].sum()) == pytest.approx(1)
    assert w[1, 9] == pytest.approx(0.9) and w[1, 50] == pytest.approx(0.05) and w[1, 60] == pytest.approx(0.05)
    # C = 40: K = 0, so 0.9 on the label and 0.1 / C everywhere
    w = smoothed_targets(torch.randn(1, 40), torch.tensor([5]))
    assert w[0, 5] == pytest.approx(0.9 + 0.1 / 40) and w[0, 0] == pytest.approx(0.1 / 40)


def test_cm_moves_a_prototype_sample_by_sample_in_batch_order():
    """CM's update is sequential (method.md 5.5): two samples of one cluster are not their mean."""
    centroids = torch.eye(4)[:2]
    labels = torch.tensor([0, 0, 1, 1])
    mem = DSGLMemory(F.normalize(torch.rand(4, 4), dim=1), labels, None, centroids, mode="CM")
    f = F.normalize(torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), dim=1)
    mem.update(f, torch.tensor([0, 1]), torch.tensor([0, 0]))
    first = F.normalize(0.1 * centroids[0] + 0.9 * f[0], dim=0)
    expected = F.normalize(0.1 * first + 0.9 * f[1], dim=0)
    torch.testing.assert_close(mem.bank[0], expected)
    torch.testing.assert_close(mem.bank[1], centroids[1])
