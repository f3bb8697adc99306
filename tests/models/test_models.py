"""fastat.models: architectures, parameter counts, input sizes, normalisation, build_model errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastat.models import MODELS, Normalize, PreActResNet, SmallCNN, WideResNet, build_model


@pytest.mark.parametrize("name, count", [("preact18", 11_172_170), ("wrn28-10", 36_479_194),
                                         ("wrn34-10", 46_160_474)])
def test_parameter_counts_match_the_reference_codes(name, count):
    with torch.device("meta"):  # no memory, no init cost
        model = build_model(name, in_channels=3, num_classes=10, input_size=32)
    assert sum(p.numel() for p in model.parameters()) == count


def test_ga_variant_drops_the_final_bn():
    with torch.device("meta"):
        model = build_model("preact18", in_channels=3, num_classes=10, input_size=32, final_bn=False)
    assert model.bn is None and sum(p.numel() for p in model.parameters()) == 11_172_170 - 1024


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 40, 40), (1, 30, 30)])
def test_any_input_size_and_channels(shape):
    c, h, w = shape
    torch.manual_seed(0)
    x = torch.rand(2, c, h, w)
    for model in (PreActResNet(in_channels=c, num_classes=7, width=4),
                  WideResNet(10, 1, in_channels=c, num_classes=7),
                  SmallCNN(in_channels=c, num_classes=7, input_size=(h, w), width=4, hidden=8)):
        assert model.eval()(x).shape == (2, 7)


def test_adaptive_pool_sees_the_whole_map():
    # 32×32 → a 4×4 layer-4 map (adaptive pooling == avg_pool2d(4) there); 40×40 → 5×5, all of it pooled.
    model = PreActResNet(in_channels=3, num_classes=10, width=4).eval()
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("map", o))
    for size, side in ((32, 4), (40, 5), (28, 4)):
        out = model(torch.rand(2, 3, size, size))
        assert seen["map"].shape[-2:] == (side, side)
        manual = model.linear(F.relu(model.bn(seen["map"])).mean(dim=(2, 3)))
        torch.testing.assert_close(out, manual)


def test_preact_shortcut_variant_reads_relu_bn1():
    torch.manual_seed(0)
    raw = PreActResNet(in_channels=3, num_classes=10, width=4, shortcut="raw").eval()
    pre = PreActResNet(in_channels=3, num_classes=10, width=4, shortcut="preact").eval()
    pre.load_state_dict(raw.state_dict())  # same parameters, only the wiring differs
    block = pre.layer2[0]
    captured = {}
    block.register_forward_hook(lambda m, i, o: captured.__setitem__("in", i[0]))
    block.shortcut.register_forward_hook(lambda m, i, o: captured.__setitem__("sc_in", i[0]))
    x = torch.rand(2, 3, 16, 16)
    assert not torch.allclose(raw(x), pre(x))
    torch.testing.assert_close(captured["sc_in"], F.relu(block.bn1(captured["in"])))
    with pytest.raises(ValueError, match="shortcut"):
        PreActResNet(shortcut="bn")


def test_normalisation_inside_the_model():
    torch.manual_seed(0)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
    plain = build_model("preact18", in_channels=3, num_classes=10, input_size=32, width=4).eval()
    normed = build_model("preact18", in_channels=3, num_classes=10, input_size=32, width=4, mean=mean,
                         std=std).eval()
    normed.load_state_dict(plain.state_dict() | {k: v for k, v in normed.state_dict().items()
                                                   if k.startswith("normalize.")})
    x = torch.rand(2, 3, 32, 32)
    expected = plain((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(normed(x), expected)
    one = Normalize(3, [0.5], [0.25])  # one value broadcasts to every channel
    torch.testing.assert_close(one(torch.ones(1, 3, 2, 2)), torch.full((1, 3, 2, 2), 2.0))
    with pytest.raises(ValueError, match="std"):
        Normalize(3, [0.5, 0.5, 0.5], [0.1, 0.0, 0.1])
    with pytest.raises(ValueError, match="mean"):
        Normalize(3, [0.5, 0.5], [0.1, 0.1])


def test_build_model_names_and_errors():
    assert set(MODELS) == {"preact18", "wrn28-10", "wrn34-10", "small-cnn"}
    model = build_model("small-cnn", in_channels=1, num_classes=10, input_size=28, width=4, hidden=8)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="'name'"):
        build_model("resnet50", in_channels=3, num_classes=10, input_size=32)
    with pytest.raises(ValueError, match="in_channels"):
        build_model("preact18", in_channels=0, num_classes=10, input_size=32)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("preact18", in_channels=3, num_classes=1, input_size=32)
    with pytest.raises(ValueError, match="input_size"):
        build_model("small-cnn", in_channels=1, num_classes=10, input_size=(28,))
    with pytest.raises(ValueError, match="bad option"):
        build_model("small-cnn", in_channels=1, num_classes=10, input_size=28, depth=3)
    with pytest.raises(ValueError, match="depth"):
        WideResNet(27, 10)


@pytest.mark.parametrize("shortcut", ["raw", "preact"])
@pytest.mark.parametrize("final_bn", [True, False])
def test_noise_sites_are_identities_after_bn1_relu(shortcut, final_bn):
    torch.manual_seed(0)
    model = PreActResNet(in_channels=3, num_classes=10, width=4, shortcut=shortcut, final_bn=final_bn).train()
    sites = model.noise_sites()
    blocks = [blk for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for blk in stage]
    assert len(sites) == 8 and all(isinstance(s, torch.nn.Identity) for s in sites)
    assert [id(s) for s in sites] == [id(blk.noise_site) for blk in blocks]
    assert not any("noise_site" in k for k in model.state_dict())  # no parameters: checkpoints load as before
    order = []
    for k, s in enumerate(sites):
        s.register_forward_hook(lambda m, i, o, k=k: order.append(k))
    x = torch.rand(2, 3, 32, 32)
    out = model.conv1(x)
    for blk in blocks:  # the block written out without its noise site: the same numbers
        a = F.relu(blk.bn1(out))
        skip = out if blk.shortcut is None else blk.shortcut(a if shortcut == "preact" else out)
        out = blk.conv2(F.relu(blk.bn2(blk.conv1(a)))) + skip
    if final_bn:
        out = F.relu(model.bn(out))
    manual = model.linear(out.mean(dim=(2, 3)))
    torch.testing.assert_close(model(x), manual)
    assert order == list(range(8))


@pytest.mark.parametrize("shortcut", ["raw", "preact"])
def test_noise_at_a_site_reaches_conv1_and_only_the_preact_shortcut(shortcut):
    # APART's model (raw shortcut): the post-bn1-ReLU noise reaches conv1 only; "preact": also the projection.
    torch.manual_seed(0)
    model = PreActResNet(in_channels=3, num_classes=10, width=4, shortcut=shortcut).eval()
    block = model.layer2[0]
    seen = {}
    block.register_forward_hook(lambda m, i, o: seen.__setitem__("in", i[0]))
    block.conv1.register_forward_hook(lambda m, i, o: seen.__setitem__("conv1", i[0]))
    block.shortcut.register_forward_hook(lambda m, i, o: seen.__setitem__("sc", i[0]))
    block.noise_site.register_forward_hook(lambda m, i, o: o + 1.0)
    model(torch.rand(2, 3, 16, 16))
    a = F.relu(block.bn1(seen["in"]))
    torch.testing.assert_close(seen["conv1"], a + 1.0)
    torch.testing.assert_close(seen["sc"], a + 1.0 if shortcut == "preact" else seen["in"])
