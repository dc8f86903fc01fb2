"""Backbones, pooling, neck and pretrained weights (method.md section 2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dsgl_cli.errors import DsglError
from dsgl_cli.models import ARCHITECTURES, POOLINGS
from dsgl_cli.models import weights as W
from dsgl_cli.models.backbones import build_backbone, infer_architecture
from dsgl_cli.models.ibn import IBN
from dsgl_cli.models.pooling import GeneralizedMeanPooling
from dsgl_cli.models.reid import build_model


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """Never touch the network; point the torch hub cache at an empty folder."""
    monkeypatch.setenv("DSGL_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted during tests")

    monkeypatch.setattr(W, "_download", no_download)
    # TORCH_HOME, not torch.hub.set_dir: set_dir pins a global that outlives the test and
    # would hide the TORCH_HOME later tests choose.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    yield


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _meta_keys(arch: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a torchvision-named backbone, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_backbone(arch).state_dict().items()}


def test_names_exported():
    assert ARCHITECTURES == ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                             "resnet_ibn50a", "resnet_ibn101a")
    assert POOLINGS == ("gem", "avg", "max")


@pytest.mark.parametrize("features", [0, 24])
def test_shapes_and_unit_rows_train_and_eval(features):
    torch.manual_seed(0)
    model = build_model("resnet18", features=features)
    x = torch.randn(4, 3, 32, 16)
    d = features or 512
    assert model.out_dim == d and model.spec.out_dim == d
    assert model.spec.arch == "resnet18" and model.spec.pooling == "gem" and model.spec.features == features
    model.train()
    out = model(x)
    assert out.shape == (4, d)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    out.sum().backward()  # gradient reaches GeM's p
    assert model.gap.p.grad is not None and torch.isfinite(model.gap.p.grad).all()
    model.eval()
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)


def test_last_stride_resnet50_gives_16x8():
    model = build_model("resnet50").eval()
    l4 = model.base[7][0]
    assert l4.conv2.stride == (1, 1) and l4.downsample[0].stride == (1, 1)
    assert model.base[6][0].conv2.stride == (2, 2)  # earlier stages untouched
    with torch.no_grad():
        fmap = model.base(torch.randn(1, 3, 256, 128))
    assert fmap.shape == (1, 2048, 16, 8)
    assert model.out_dim == 2048


def test_resnet18_keeps_stride_2():
    model = build_model("resnet18", pooling="avg").eval()
    assert model.base[7][0].conv1.stride == (2, 2)
    with torch.no_grad():
        assert model.base(torch.randn(1, 3, 64, 32)).shape == (1, 512, 2, 1)


def test_gem_matches_hand_computation():
    torch.manual_seed(1)
    gem = GeneralizedMeanPooling()
    assert gem.p.shape == (1,) and gem.p.item() == 3.0 and gem.p.requires_grad
    with torch.no_grad():
        gem.p.fill_(2.5)
    x = torch.randn(2, 3, 4, 5)  # negatives are clamped at 1e-6
    out = gem(x)
    assert out.shape == (2, 3, 1, 1)
    for b in range(2):
        for c in range(3):
            vals = [max(v, 1e-6) ** 2.5 for v in x[b, c].flatten().tolist()]
            expected = (sum(vals) / len(vals)) ** (1 / 2.5)
            assert math.isclose(out[b, c, 0, 0].item(), expected, rel_tol=1e-5)


def test_avg_and_max_pooling():
    x = torch.randn(2, 3, 4, 5)
    avg = build_model("resnet18", pooling="avg").gap
    mx = build_model("resnet18", pooling="max").gap
    torch.testing.assert_close(avg(x).flatten(1), x.mean(dim=(2, 3)))
    torch.testing.assert_close(mx(x).flatten(1), x.amax(dim=(2, 3)))


def test_neck_bias_frozen_and_initialised():
    model = build_model("resnet18", features=16)
    bn = model.feat_bn
    assert not bn.bias.requires_grad and bn.weight.requires_grad
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert model.feat.weight.shape == (16, 512) and torch.all(model.feat.bias == 0)
    # kaiming_normal(fan_out): std = sqrt(2 / 16)
    assert abs(model.feat.weight.std().item() - math.sqrt(2 / 16)) < 0.05
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 32, 16)).pow(3).sum().backward()
    opt.step()
    assert torch.all(bn.bias == 0)


def test_key_names_follow_authors_layout():
    keys = set(build_model("resnet18", features=8).state_dict())
    for k in ("base.0.weight", "base.1.weight", "base.1.running_var", "base.4.0.conv1.weight",
              "base.7.1.bn2.weight", "gap.p", "feat.weight", "feat.bias", "feat_bn.weight", "feat_bn.bias",
              "feat_bn.running_mean"):
        assert k in keys, k
    assert not any(k.startswith(("base.2.", "base.3.", "fc.", "classifier.")) for k in keys)
    avg_keys = set(build_model("resnet18", pooling="max").state_dict())
    assert "gap.p" not in avg_keys and not any(k.startswith("feat.") for k in avg_keys)


def test_dropout_train_only_after_normalisation():
    torch.manual_seed(0)
    model = build_model("resnet18", dropout=0.5)
    x = torch.randn(2, 3, 32, 16)
    model.train()
    out = model(x)
    assert (out == 0).any()  # dropout active
    kept = out[out != 0]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    assert kept.numel() > 0


def test_ibn_layer_matches_instance_and_batch_norm():
    torch.manual_seed(0)
    ibn = IBN(8).train()
    x = torch.randn(4, 8, 5, 3)
    out = ibn(x)
    torch.testing.assert_close(out[:, :4], F.instance_norm(x[:, :4], eps=1e-5))
    torch.testing.assert_close(out[:, 4:], F.batch_norm(x[:, 4:], None, None, training=True, eps=1e-5))


def test_ibn_a_key_layout_matches_ibn_net():
    keys = _meta_keys("resnet_ibn50a")
    # IBN-Net's resnet50_ibn_a: IN on int(planes/2) channels of bn1 in every block of layer1-3.
    assert keys["layer1.0.bn1.IN.weight"] == (32,) and keys["layer1.0.bn1.BN.running_mean"] == (32,)
    assert keys["layer2.3.bn1.IN.bias"] == (64,) and keys["layer3.5.bn1.BN.weight"] == (128,)
    assert keys["layer4.0.bn1.weight"] == (512,) and "layer4.0.bn1.IN.weight" not in keys
    assert "layer1.0.bn1.IN.running_mean" not in keys  # affine IN, no running stats
    assert sum(".IN.weight" in k for k in keys) == 3 + 4 + 6
    assert keys["fc.weight"] == (1000, 2048)
    with torch.device("meta"):
        r101 = build_backbone("resnet_ibn101a")
    assert r101.layer4[0].conv2.stride == (1, 1) and len(r101.layer3) == 23


def test_ibn_imagenet_file_loads(tmp_path):
    """A resnet50_ibn_a.pth.tar-style file (DataParallel, state_dict wrapper, fc) loads into base.*."""
    torch.manual_seed(0)
    src = build_backbone("resnet_ibn50a")
    sd = {f"module.{k}": torch.randn_like(v) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    path = tmp_path / "resnet50_ibn_a.pth.tar"
    torch.save({"state_dict": sd, "epoch": 100, "arch": "resnet50_ibn_a"}, path)
    model = build_model("resnet_ibn50a", pretrained=str(path))
    own = model.state_dict()
    assert torch.equal(own["base.4.0.bn1.IN.weight"], sd["module.layer1.0.bn1.IN.weight"])
    assert torch.equal(own["base.7.2.conv3.weight"], sd["module.layer4.2.conv3.weight"])
    assert model.init_report is not None and "fc.weight" in model.init_report.ignored


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_infer_architecture_from_keys(arch):
    keys = list(_meta_keys(arch))
    assert infer_architecture(keys) == arch
    assert infer_architecture(["module." + k for k in keys]) == arch


def test_unknown_arch_and_bad_values():
    with pytest.raises(DsglError, match="did you mean 'resnet50'") as err:
        build_model("resnet5O")
    assert err.value.exit_code == 2
    with pytest.raises(DsglError, match="did you mean 'gem'"):
        build_model("resnet18", pooling="gen")
    with pytest.raises(DsglError, match="--features"):
        build_model("resnet18", features=-1)
    with pytest.raises(DsglError, match="--dropout"):
        build_model("resnet18", dropout=1.5)


def _resnet18_file(tmp_path, name="r18.pth", wrap=True):
    torch.manual_seed(3)
    src = build_backbone("resnet18")
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    path = tmp_path / name
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}} if wrap else sd, path)
    return path, sd


def test_pretrained_explicit_path_loads(tmp_path):
    path, sd = _resnet18_file(tmp_path)
    model = build_model("resnet18", pretrained=str(path))
    own = model.state_dict()
    assert torch.equal(own["base.0.weight"], sd["conv1.weight"])
    assert torch.equal(own["base.6.1.bn2.running_var"], sd["layer3.1.bn2.running_var"])
    assert model.init_report.matched == sum(1 for k in sd if not k.startswith("fc."))


def test_pretrained_from_hub_cache(tmp_path):
    cache = W.cache_dir()
    assert cache == tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    path, sd = _resnet18_file(cache, "resnet18-f37072fd.pth", wrap=False)
    model = build_model("resnet18", pretrained="imagenet")
    assert torch.equal(model.state_dict()["base.1.weight"], sd["bn1.weight"])
    assert model.init_report.source == str(path)


def test_imagenet_means_torchvision_original_weights_under_their_old_or_new_name():
    """The reference trained from IMAGENET1K_V1; torchvision renamed that file, and added a V2 recipe."""
    assert W.candidate_files("resnet50") == ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth")
    assert W.candidate_files("resnet50", W.IMAGENET_V2) == ("resnet50-11ad3fa6.pth",)
    assert W.candidate_files("resnet_ibn50a")[0] == "resnet50_ibn_a.pth.tar"


@pytest.mark.parametrize("name", ["resnet18-5c106cde.pth", "resnet18-f37072fd.pth"])
def test_the_old_and_the_new_v1_file_names_load(tmp_path, name):
    cache = W.cache_dir()
    cache.mkdir(parents=True)
    path, sd = _resnet18_file(cache, name, wrap=False)
    model = build_model("resnet18", pretrained="imagenet")
    assert model.init_report.source == str(path)


def test_a_v2_file_never_stands_in_for_the_reference_weights(tmp_path):
    cache = W.cache_dir()
    cache.mkdir(parents=True)
    v2 = cache / "resnet50-11ad3fa6.pth"
    v2.write_bytes(b"weights")
    with pytest.raises(DsglError) as err:
        W.resolve_imagenet("resnet50")
    message = str(err.value)
    assert "resnet50-0676ba61.pth" in message and "--pretrained imagenet-v2" in message and "\n" not in message
    assert W.resolve_imagenet("resnet50", version=W.IMAGENET_V2) == v2


def test_missing_imagenet_weights_one_line(tmp_path):
    with pytest.raises(DsglError) as err:
        build_model("resnet18", pretrained="imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "--pretrained none" in msg
    with pytest.raises(DsglError, match="resnet50_ibn_a.pth.tar") as err:
        build_model("resnet_ibn50a", pretrained="imagenet")
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in str(err.value)


def test_pretrained_errors(tmp_path):
    with pytest.raises(DsglError, match="no such file") as err:
        build_model("resnet18", pretrained=str(tmp_path / "nope.pth"))
    assert err.value.exit_code == 2
    junk = tmp_path / "junk.pth"
    torch.save({"foo.weight": torch.zeros(3)}, junk)
    with pytest.raises(DsglError, match="no tensor that matches"):
        build_model("resnet18", pretrained=str(junk))
    path, _ = _resnet18_file(tmp_path)
    with pytest.raises(DsglError, match=r"does not fit resnet34: \d+ missing.*looks like resnet18"):
        build_model("resnet34", pretrained=str(path))


def test_ibn_layers_convert_to_half_precision_like_any_module():
    """IBN once kept its split in an attribute named `half`, which shadowed nn.Module.half()."""
    layer = IBN(64).half()
    assert layer.IN.weight.dtype == torch.float16 and layer.BN.weight.dtype == torch.float16
    assert layer.instance_channels == 32
