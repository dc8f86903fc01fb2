"""Parity of DSGLMemory with one iteration of the authors' DSGL code (method.md 5, fixtures/README.md)."""

from __future__ import annotations

import pytest
import torch

from dsgl_cli.method.memory import DSGLMemory

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def fx(step_fixture: dict) -> dict:
    return step_fixture


def _memory(fx: dict) -> DSGLMemory:
    return DSGLMemory(fx["features"], fx["pseudo_labels"], fx["id_irre_labels"], fx["cluster_features"],
                      mode="DLhybrid", temp=fx["temp"], momentum=fx["momentum"], tau_dis=fx["tau_dis"],
                      tau_re=fx["tau_re"], tau1_re=fx["tau1_re"])


@pytest.fixture(scope="module")
def run(fx: dict) -> dict:
    """One iteration: losses (with details), gradients of every loss, then the memory update."""
    mem = _memory(fx)
    f = fx["f_out"].clone().requires_grad_()
    f_hat = fx["f_hat"].clone().requires_grad_()
    out = mem.losses(f, fx["indexes"], fx["labels"], fx["irre_labels"], f_hat, details=True)
    total = out["loss_m"] + out["loss_dis"] + out["loss_kl"]
    grads = {}
    for name in ("loss_m", "loss_dis", "loss_kl"):
        g_f, g_hat = torch.autograd.grad(out[name], [f, f_hat], retain_graph=True, allow_unused=True)
        grads[name] = (g_f, g_hat)
    grads["total"] = torch.autograd.grad(total, [f, f_hat], retain_graph=True)
    bank_before, instance_before = mem.bank.clone(), mem.instance.clone()
    mem.update(f, fx["indexes"], fx["labels"])
    return {"mem": mem, "out": out, "total": total, "grads": grads,
            "bank_before": bank_before, "instance_before": instance_before}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.detach(), expected, rtol=RTOL, atol=ATOL)


def test_parity_initial_memory(fx: dict) -> None:
    mem = _memory(fx)
    _close(mem.bank, fx["memory_init"])
    assert mem.bank.shape == (2 * fx["num_cluster"], fx["features"].shape[1])
    _close(mem.instance, fx["features"])


@pytest.mark.parametrize("ours, theirs", [
    ("loss_m", "loss_m"), ("loss_dis", "loss_dis"), ("loss_kl", "loss_kl"),
    ("loss_dis_pass0", "loss_dis_call0"), ("loss_dis_pass1", "loss_dis_call1"),
    ("loss_kl_k0", "loss_kl_k0"), ("loss_kl_k1", "loss_kl_k1"),
])
def test_parity_losses(run: dict, fx: dict, ours: str, theirs: str) -> None:
    _close(run["out"][ours], fx[theirs])


def test_parity_total_loss(run: dict, fx: dict) -> None:
    _close(run["total"], fx["loss_total"])


@pytest.mark.parametrize("loss", ["loss_m", "loss_dis", "loss_kl"])
def test_parity_gradients_wrt_f_out(run: dict, fx: dict, loss: str) -> None:
    _close(run["grads"][loss][0], fx[f"grad_f_out_{loss}"])


def test_parity_gradient_of_kl_wrt_f_hat(run: dict, fx: dict) -> None:
    _close(run["grads"]["loss_kl"][1], fx["grad_f_hat_loss_kl"])
    # L_m and L_dis do not depend on the partner embeddings
    assert run["grads"]["loss_m"][1] is None and run["grads"]["loss_dis"][1] is None


def test_parity_gradient_of_total(run: dict, fx: dict) -> None:
    _close(run["grads"]["total"][0], fx["grad_f_out_total"])
    _close(run["grads"]["total"][1], fx["grad_f_hat_loss_kl"])


@pytest.mark.parametrize("ours, theirs", [
    ("dis_pos_proto0", "dis_pos_proto_call0"), ("dis_pos_proto1", "dis_pos_proto_call1"),
    ("re_dist_proto_k0", "re_dist_proto_k0"), ("re_dist_proto_k1", "re_dist_proto_k1"),
])
def test_parity_intermediate_prototypes(run: dict, fx: dict, ours: str, theirs: str) -> None:
    _close(run["out"][ours], fx[theirs])


def test_parity_losses_do_not_touch_memory(run: dict, fx: dict) -> None:
    _close(run["bank_before"], fx["memory_before_backward"])
    _close(run["instance_before"], fx["features"])


def test_parity_memory_after_update(run: dict, fx: dict) -> None:
    _close(run["mem"].bank, fx["memory_after"])
    _close(run["mem"].instance, fx["ins_memory_after"])


def test_parity_running_sums_follow_instance_memory(run: dict) -> None:
    """After update() the running group and cluster sums and the L_kl bases' Gram matrices equal the
    ones recomputed from the written instance memory and the updated mean prototypes."""
    mem = run["mem"]
    groups = mem.groups
    sums = torch.zeros_like(mem.group_sums).index_add_(0, groups.group_of, mem.instance)
    sums[groups.num_groups] = 0
    torch.testing.assert_close(mem.group_sums, sums, rtol=1e-5, atol=1e-5)
    clusters = torch.zeros_like(mem.cluster_sums)
    clustered = mem.labels >= 0
    clusters.index_add_(0, mem.labels[clustered], mem.instance[clustered])
    torch.testing.assert_close(mem.cluster_sums, clusters, rtol=1e-5, atol=1e-5)
    basis = torch.cat([mem.mean_prototypes.unsqueeze(1), sums[groups.cluster_groups]], 1)
    torch.testing.assert_close(mem.gram, basis @ basis.transpose(1, 2), rtol=1e-5, atol=1e-5)
