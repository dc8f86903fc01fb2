"""The camera-aware pseudo-identity sampler and its L_kl partners (method.md sections 3, 5.3)."""

from __future__ import annotations

import numpy as np
import pytest

from dsgl_cli.data.sampler import IterationBatchSampler, PseudoIdentitySampler


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
    batches = list(IterationBatchSampler(sampler, batch_size=8, iters=23, seed=3))
    assert len(batches) == 23          # more than one pass: the stream restarts
    for batch in batches:
        assert len(batch) == 8
        for anchor, partner in batch:
            assert labels[anchor] == labels[partner]
    partners = np.array([p for b in batches for _, p in b])
    anchors = np.array([a for b in batches for a, _ in b])
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
    assert list(IterationBatchSampler(s, 8, 5, seed=7)) == list(IterationBatchSampler(s, 8, 5, seed=7))
    with pytest.raises(ValueError, match="fewer than a batch"):
        list(IterationBatchSampler(PseudoIdentitySampler(labels[:4], cams[:4], 4), 8, 1, seed=0))
