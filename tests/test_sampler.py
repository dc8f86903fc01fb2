"""The camera-aware pseudo-identity sampler and its L_kl partners (method.md sections 3, 5.3)."""

from __future__ import annotations

import numpy as np
import pytest

from dsgl_cli.data.sampler import IterationBatchSampler, PseudoIdentitySampler
from dsgl_cli.errors import DsglError


def _toy():
    # identity 0: 6 images over cams 0,1,2; identity 1: 3 images all cam 0; identity 2: one image;
    # outliers (-1) never sampled.
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, -1, -1])
    cams = np.array([0, 0, 1, 1, 2, 2, 0, 0, 0, 1, 0, 1])
    return labels, cams


def test_each_identity_gives_one_anchor_plus_others_from_other_cameras():
    labels, cams = _toy()
    sampler = PseudoIdentitySampler(labels, cams, num_instances=4)
    rng = np.random.default_rng(0)
    for _ in range(50):
        stream = sampler.one_pass(rng)
        assert not any(labels[i] == -1 for i in stream)
        chunks, pos = [], 0
        while pos < len(stream):
            lab = labels[stream[pos]]
            size = {0: 4, 1: 4, 2: 1}[lab]
            chunks.append(stream[pos:pos + size])
            pos += size
        assert sorted(labels[c[0]] for c in chunks) == [0, 1, 2]
        for chunk in chunks:
            assert len({labels[i] for i in chunk}) == 1
            first = chunk[0]
            if labels[first] == 0:   # other cameras exist: all extra images come from them
                assert all(cams[i] != cams[first] for i in chunk[1:])
            if labels[first] == 1:   # one camera only: the identity's other images
                assert all(i != first for i in chunk[1:])


def test_without_replacement_when_enough_other_camera_images():
    labels = np.array([0] * 8)
    cams = np.array([0, 1, 1, 1, 1, 1, 1, 1])
    sampler = PseudoIdentitySampler(labels, cams, num_instances=4)
    rng = np.random.default_rng(1)
    for _ in range(30):
        stream = sampler.one_pass(rng)
        if stream[0] == 0:
            assert len(set(stream[1:])) == 3


def test_iteration_sampler_yields_iters_full_batches_with_partners_of_the_same_identity():
    labels = np.repeat(np.arange(10), 5)
    cams = np.tile(np.arange(5), 10)
    sampler = PseudoIdentitySampler(labels, cams, num_instances=4)
    batches = list(IterationBatchSampler(sampler, batch_size=8, iters=23, seed=3, epoch=0))
    assert len(batches) == 23          # more than one pass: the stream restarts
    for batch in batches:
        assert len(batch) == 8
        for anchor, partner, _, _ in batch:
            assert labels[anchor] == labels[partner]
    partners = np.array([item.partner for b in batches for item in b])
    anchors = np.array([item.anchor for b in batches for item in b])
    assert (partners == anchors).mean() < 0.5   # partners are drawn, not copied


def test_partner_is_uniform_over_the_identity():
    labels = np.array([0, 0, 0, 0])
    sampler = PseudoIdentitySampler(labels, np.zeros(4, int), num_instances=2)
    draws = sampler.partners(np.zeros(4000, dtype=int), np.random.default_rng(0))
    counts = np.bincount(draws, minlength=4) / 4000
    assert np.allclose(counts, 0.25, atol=0.03)


def test_same_seed_same_batches_and_too_small_pass_is_an_error():
    labels = np.repeat(np.arange(4), 4)
    cams = np.tile(np.arange(2), 8)
    s = PseudoIdentitySampler(labels, cams, 4)
    def draw(epoch: int) -> list:
        return list(IterationBatchSampler(s, 8, 5, seed=7, epoch=epoch))

    assert draw(2) == draw(2) and draw(2) != draw(3)


def test_a_pass_shorter_than_a_batch_is_one_line_before_any_step():
    """3 clusters x 4 instances = 12 images per pass cannot fill a batch of 16."""
    labels = np.repeat(np.arange(3), 5)
    with pytest.raises(DsglError) as err:
        IterationBatchSampler(PseudoIdentitySampler(labels, np.zeros(15, int), 4), 16, 10, seed=0, epoch=0)
    message = str(err.value)
    assert "yields 12 images (3 pseudo identities x up to 4 images), fewer than a batch of 16" in message
    assert "\n" not in message


def test_ranks_take_contiguous_slices_of_the_same_global_batch():
    labels = np.repeat(np.arange(12), 6)
    cams = np.tile(np.arange(3), 24)
    s = PseudoIdentitySampler(labels, cams, 4)
    whole = list(IterationBatchSampler(s, 16, 7, seed=5, epoch=1))
    halves = [list(IterationBatchSampler(s, 16, 7, seed=5, epoch=1, rank=r, world=2)) for r in range(2)]
    for b, batch in enumerate(whole):
        assert halves[0][b] + halves[1][b] == batch
        assert [item.position for item in batch] == list(range(16)) and {item.iteration for item in batch} == {b}


def test_iters_zero_is_one_pass_and_start_skips_without_changing_the_rest():
    labels = np.repeat(np.arange(10), 5)
    cams = np.tile(np.arange(5), 10)
    s = PseudoIdentitySampler(labels, cams, 4)
    one_pass = list(IterationBatchSampler(s, 8, 0, seed=2, epoch=0))
    assert len(one_pass) == (10 * 4) // 8           # 40 images per pass, incomplete batch dropped
    resumed = list(IterationBatchSampler(s, 8, 0, seed=2, epoch=0, start=3))
    assert resumed == one_pass[3:]


def test_num_instances_zero_shuffles_the_clustered_images():
    labels = np.array([0, 0, 1, 1, 1, -1, 2, 2, -1, 2])
    s = PseudoIdentitySampler(labels, np.zeros(10, int), 0)
    stream = s.one_pass(np.random.default_rng(0))
    assert sorted(stream) == [i for i in range(10) if labels[i] >= 0]
    assert s.pass_length() == 8
    batches = list(IterationBatchSampler(s, 3, 0, seed=1, epoch=0))
    assert len(batches) == 2 and all(labels[item.partner] == labels[item.anchor] for b in batches for item in b)
