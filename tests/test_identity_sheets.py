"""Identity sheets: the N largest pseudo identities, images grouped by camera, an index that links them."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from dsgl_cli.errors import DsglError
from dsgl_cli.evaluation import identity_sheets as sheets
from dsgl_cli.evaluation.identity_sheets import (
    largest_identities,
    plan_identity_sheets,
    save_identity_sheets,
    share_out,
)

# label -> cameras of its images (0-based camids); -1 are outliers, the largest "group" of all
LAYOUT = {9: [0, 9, 1, 1, 9, 0, 1], 1: [1, 1, 1, 0, 0], 3: [9, 9, 9, 9, 9], 2: [0, 1], -1: [0] * 10}


def colour(i: int) -> tuple[int, int, int]:
    return (i * 37 % 256, i * 91 % 256, (i * 53 + 100) % 256)


@pytest.fixture()
def dataset(tmp_path):
    """Solid-colour PNGs (one colour per image, so a thumbnail's pixel says which image it is), shuffled."""
    items = [(label, cam) for label, cams in LAYOUT.items() for cam in cams]
    order = np.random.default_rng(0).permutation(len(items))
    folder = tmp_path / "train"
    folder.mkdir()
    paths, labels, cams = [], [], []
    for n, k in enumerate(order):
        label, cam = items[k]
        path = folder / f"img_{n:03d}.png"
        Image.new("RGB", (20, 40), colour(n)).save(path)
        paths.append(path)
        labels.append(label)
        cams.append(cam)
    return paths, np.array(labels), np.array(cams)


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def test_the_n_largest_identities_ties_to_the_smaller_label(dataset):
    _, labels, _ = dataset
    assert largest_identities(labels, 3) == [(9, 7), (1, 5), (3, 5)]  # the 10 outliers are no identity
    assert largest_identities(labels, 50) == [(9, 7), (1, 5), (3, 5), (2, 2)]
    assert largest_identities(torch.tensor(labels)[torch.randperm(len(labels))], 2) == [(9, 7), (1, 5)]


def test_images_are_grouped_by_camera_in_numeric_camera_order(dataset):
    paths, labels, cams = dataset
    plans = plan_identity_sheets(paths, labels, cams, num_identities=2)
    assert [(p.label, p.size, p.file_name) for p in plans] == [(9, 7, "identity_00009.png"),
                                                                (1, 5, "identity_00001.png")]
    top = plans[0]
    assert top.cameras == ("c1", "c2", "c10")  # camid 9 is c10 and comes after c2
    want = {0: "c1", 1: "c2", 9: "c10"}
    for group in top.groups:
        members = sorted(str(p) for p, lab, c in zip(paths, labels, cams) if lab == 9 and want[c] == group.camera)
        assert list(group.shown) == members and group.total == len(members)
    assert top.left_out == 0


def test_the_sheet_shows_each_image_in_its_camera_band(dataset, tmp_path):
    paths, labels, cams = dataset
    written = save_identity_sheets(paths, labels, cams, tmp_path / "show", num_identities=4)
    assert [p.name for p in written] == ["identity_00009.png", "identity_00001.png", "identity_00003.png",
                                         "identity_00002.png", "index.html"]
    plans = plan_identity_sheets(paths, labels, cams, num_identities=4)
    index_of = {str(p): n for n, p in enumerate(paths)}
    for plan, path in zip(plans, written):
        with Image.open(path) as img:
            img = img.convert("RGB")
            assert img.size == sheets.sheet_size(plan)
            for g, group in enumerate(plan.groups):
                for t, image in enumerate(group.shown):
                    x, y = sheets.thumb_origin(plan, g, t)
                    assert img.getpixel((x + 5, y + 5)) == colour(index_of[image]), (plan.label, g, t)


def test_a_capped_identity_is_shared_over_cameras_and_says_what_was_left_out(tmp_path):
    cams = [0] * 1 + [1] * 3 + [2] * 25
    paths = []
    for n in range(len(cams)):
        paths.append(tmp_path / f"{n:02d}.png")
        Image.new("RGB", (8, 16), colour(n)).save(paths[-1])
    (plan,) = plan_identity_sheets(paths, [4] * len(cams), cams, num_identities=1, max_images=8)
    assert [(g.camera, g.total, len(g.shown)) for g in plan.groups] == [("c1", 1, 1), ("c2", 3, 3), ("c3", 25, 4)]
    assert plan.left_out == 21
    assert [p.rsplit("/", 1)[-1] for p in plan.groups[2].shown] == ["04.png", "12.png", "20.png", "28.png"]
    written = save_identity_sheets(paths, [4] * len(cams), cams, tmp_path / "cap", num_identities=1, max_images=8)
    assert "21 not shown" in written[-1].read_text()
    wide = plan_identity_sheets(paths, [4] * len(cams), cams, num_identities=1, max_images=29)[0]
    assert sheets.sheet_columns(wide) == sheets.COLUMNS and wide.left_out == 0  # 25 images wrap onto rows
    assert sheets.thumb_origin(wide, 2, sheets.COLUMNS)[1] > sheets.thumb_origin(wide, 2, 0)[1]


@pytest.mark.parametrize("seed", range(5))
def test_share_out_is_as_even_as_the_groups_allow(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        counts = list(rng.integers(1, 30, rng.integers(1, 8)))
        cap = int(rng.integers(1, 80))
        shown = share_out(counts, cap)
        assert sum(shown) == min(cap, sum(counts))
        assert all(0 <= s <= c for s, c in zip(shown, counts))
        assert all(s >= max(shown) - 1 for s, c in zip(shown, counts) if s < c)


def test_index_links_every_sheet_with_relative_links_only(dataset, tmp_path):
    paths, labels, cams = dataset
    written = save_identity_sheets(paths, labels, cams, tmp_path / "idx", num_identities=3)
    page = written[-1].read_text(encoding="utf-8")
    parser = Links()
    parser.feed(page)
    files = {link for link in parser.links if not link.startswith("#")}
    assert files == {p.name for p in written[:-1]}
    assert all((written[-1].parent / f).is_file() for f in files)
    assert not re.search(r"(https?:)?//|<script|<link", page)
    for label, size, camera_text in ((9, 7, "c1 (2), c2 (3), c10 (2)"), (1, 5, "c1 (2), c2 (3)"),
                                     (3, 5, "c10 (5)")):
        assert f'href="#identity-{label}"' in page and f"<td>{size}</td>" in page and camera_text in page
    assert "4 pseudo identities and 10 outliers" in page


def test_camera_names_are_shown_as_given(tmp_path):
    paths = []
    for n in range(3):
        paths.append(tmp_path / f"{n}.png")
        Image.new("RGB", (8, 16), colour(n)).save(paths[-1])
    (plan,) = plan_identity_sheets(paths, [0, 0, 0], ["north door", "lobby", "lobby"], num_identities=1)
    assert plan.cameras == ("lobby", "north door")


def test_all_outliers_give_an_index_that_says_so(dataset, tmp_path):
    paths, _, cams = dataset
    written = save_identity_sheets(paths, [-1] * len(paths), cams, tmp_path / "none", num_identities=5)
    assert [p.name for p in written] == ["index.html"]
    assert "every image is an outlier" in written[0].read_text()


@pytest.mark.parametrize("change,message", [
    (dict(labels=[0, 1]), "image paths, 2 pseudo labels"),
    (dict(cams=[0]), "and 1 cameras"),
    (dict(n=0), "positive number of identities"),
    (dict(max_images=0), "positive number of identities and images"),
    (dict(labels=None), "labels must be integers"),
])
def test_bad_input_is_a_one_line_error(dataset, tmp_path, change, message):
    paths, labels, cams = dataset
    labels = labels.tolist()
    if "labels" in change:
        labels = change["labels"] if change["labels"] is not None else labels[:-1] + [0.5]
    with pytest.raises(DsglError, match=message) as err:
        save_identity_sheets(paths, labels, change.get("cams", cams), tmp_path / "bad",
                             num_identities=change.get("n", 3), max_images=change.get("max_images", 10))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad").exists()
