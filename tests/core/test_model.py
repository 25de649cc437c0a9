"""core/model: build, overrides, decode, fuse, info, anchors."""
import copy
import math

import numpy as np
import pytest
import torch

from core.model import (
    C3,
    Conv,
    Model,
    anchor_metrics,
    kmean_anchors,
    layer_table,
    load_arch,
    model_info,
    set_anchors,
)
from tests.helpers import MODELS

torch.set_num_threads(1)
YAMLS = ['yolov5n', 'yolov5s', 'yolov5-cpu']


@pytest.fixture(scope='module')
def nano():
    torch.manual_seed(0)
    return Model(MODELS / 'yolov5n.yaml')


def _is_plain(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_is_plain(v) for v in obj)
    return obj is None or isinstance(obj, (str, int, float))


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize('name', YAMLS)
def test_build_every_yaml(name):
    m = Model(MODELS / f'{name}.yaml')
    assert m.stride.tolist() == [8.0, 16.0, 32.0]
    det = m.model[-1]
    assert (det.nl, det.na, det.no, m.nc) == (3, 3, 85, 80)
    assert m.names[:3] == ['0', '1', '2'] and len(m.names) == 80
    for s in (64, 96):
        m.train()
        raw = m(torch.zeros(2, 3, s, s))
        assert [tuple(r.shape) for r in raw] == [(2, 3, s // k, s // k, 85) for k in (8, 16, 32)]
        m.eval()
        with torch.no_grad():
            pred, raw = m(torch.zeros(2, 3, s, s))
        n = sum(3 * (s // k) ** 2 for k in (8, 16, 32))
        assert pred.shape == (2, n, 85) and len(raw) == 3
    assert _is_plain(m.arch)
    assert _shapes(Model(m.arch)) == _shapes(m)


def test_cpu_model_keeps_yolov5_structure():
    m = Model(MODELS / 'yolov5-cpu.yaml')
    shortcut = [b.add for i in (2, 4, 6, 8) for b in m.model[i].m]
    assert shortcut and all(shortcut)
    assert [m.model[i].type for i in (9, 12, 16, 19, 22)] == ['SPPF', 'Concat', 'Concat', 'Concat', 'Concat']


@pytest.mark.parametrize('name,published', [('yolov5n', 1.87e6), ('yolov5s', 7.2e6)])
def test_param_counts_match_yolov5(name, published):
    m = Model(MODELS / f'{name}.yaml', nc=80)
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - published) / published < 0.02


def test_module_names_and_bn_settings(nano):
    names = dict(nano.named_modules())
    for conv in ('model.0', 'model.2.cv1', 'model.2.m.0.cv1', 'model.2.m.0.cv2', 'model.2.cv3', 'model.9.cv1'):
        assert isinstance(names[conv], Conv)
    bn = names['model.2.cv1'].bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.03) and names['model.2.cv1'].conv.bias is None
    assert isinstance(names['model.2'], C3) and names['model.2.m.0'].add
    assert not names['model.13.m.0'].add  # head C3s have shortcut False
    layer = nano.model[12]
    assert (layer.i, layer.f, layer.type) == (12, [-1, 6], 'Concat')
    # anchors in grid units: pixels / stride
    det = nano.model[-1]
    assert torch.allclose(det.anchors[0], torch.tensor([[10., 13.], [16., 30.], [33., 23.]]) / 8)
    assert torch.allclose(det.anchors[2], torch.tensor([[116., 90.], [156., 198.], [373., 326.]]) / 32)
    assert 'model.24.anchors' in nano.state_dict()


def test_anchor_order_follows_stride():
    arch = load_arch(MODELS / 'yolov5-cpu.yaml')
    arch['anchors'] = arch['anchors'][::-1]  # P5 anchors given first
    det = Model(arch).model[-1]
    assert torch.allclose(det.anchor_pixels()[0], torch.tensor([[10., 13.], [16., 30.], [33., 23.]]))


def test_nc_override_and_bias_priors():
    m = Model(MODELS / 'yolov5-cpu.yaml', nc=2)
    det = m.model[-1]
    assert m.arch['nc'] == 2 and det.no == 7 and m.names == ['0', '1']
    b = det.m[0].bias.view(3, 7)
    assert torch.allclose(b[:, 4], torch.full((3,), math.log(8 / (640 / 8) ** 2)))
    assert torch.allclose(b[:, 5:], torch.full((3, 2), math.log(0.6 / (2 - 0.99999))))  # YOLOv5 v7.0 (v6: nc - 0.99)
    m.initialize_biases(class_freq=[10, 30])
    b = det.m[2].bias.view(3, 7)
    assert torch.allclose(b[:, 5:], torch.log(torch.tensor([[0.25, 0.75]] * 3)))
    assert torch.allclose(b[:, 4], torch.full((3,), math.log(8 / (640 / 32) ** 2)))


def test_decode_hand_computed():
    m = Model(MODELS / 'yolov5-cpu.yaml', nc=1).eval()
    for conv in m.model[-1].m:  # all raw outputs 0 -> sigmoid 0.5
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    with torch.no_grad():
        pred, _ = m(torch.rand(1, 3, 64, 96))
    # level 0: 8x12 cells, 3 anchors; entry (anchor 1, row 2, col 5)
    row = pred[0, 1 * 8 * 12 + 2 * 12 + 5]
    assert torch.allclose(row, torch.tensor([(5 + 0.5) * 8, (2 + 0.5) * 8, 16., 30., 0.5, 0.5]))
    # level 2 (stride 32, 2x3 cells), last anchor, last cell
    assert torch.allclose(pred[0, -1], torch.tensor([(2 + 0.5) * 32, (1 + 0.5) * 32, 373., 326., 0.5, 0.5]))


def _pruned_arch():
    arch = load_arch(MODELS / 'yolov5n.yaml')
    arch['channels'] = {
        'model.0': 8,                                                   # 16 -> 8
        'model.2.m.0.cv1': 8,                                           # bottleneck hidden conv 16 -> 8
        'model.4.cv1': 16, 'model.4.m.0.cv2': 16, 'model.4.m.1.cv2': 16,  # shortcut chain 32 -> 16
        'model.8.cv3': 128,                                             # C3 output 256 -> 128
        'model.9.cv1': 64,                                              # SPPF hidden 128 -> 64
        'model.10': 64,                                                 # feeds a Concat
        'model.17.cv3': 32,                                             # feeds Detect and a conv
    }
    arch['repeats'] = {'model.13': 0}
    return arch


def test_channel_override_build():
    arch = _pruned_arch()
    m = Model(arch)
    mods = dict(m.named_modules())
    assert mods['model.1'].conv.in_channels == 8
    assert mods['model.2.m.0.cv1'].conv.out_channels == 8 and mods['model.2.m.0.cv2'].conv.in_channels == 8
    assert mods['model.4.cv3'].conv.in_channels == 16 + 32 and mods['model.4.m.1'].add
    assert mods['model.9.cv1'].conv.in_channels == 128 and mods['model.9.cv2'].conv.in_channels == 4 * 64
    assert len(mods['model.13'].m) == 0 and mods['model.13.cv3'].conv.in_channels == 64 + 64
    assert mods['model.23.cv1'].conv.in_channels == 128 + 64  # concat of layer 21 and pruned layer 10
    assert mods['model.18'].conv.in_channels == 32 and m.model[-1].m[0].in_channels == 32
    raw = m(torch.zeros(1, 3, 64, 64))
    assert raw[0].shape == (1, 3, 8, 8, 85)
    assert _is_plain(m.arch) and m.arch['channels'] == arch['channels']
    rebuilt = Model(copy.deepcopy(m.arch))
    assert _shapes(rebuilt) == _shapes(m)
    assert sum(p.numel() for p in m.parameters()) < 1872157


def test_override_breaking_shortcut_names_the_conv():
    arch = load_arch(MODELS / 'yolov5n.yaml')
    arch['channels'] = {'model.4.cv1': 16, 'model.4.m.0.cv2': 16, 'model.4.m.1.cv2': 24}
    with pytest.raises(ValueError, match=r'model\.4\.m\.1\.cv2'):
        Model(arch)
    arch['channels'] = {'model.2.cv9': 4}
    with pytest.raises(ValueError, match=r'model\.2\.cv9'):
        Model(arch)
    arch['channels'], arch['repeats'] = {}, {'model.3': 0}  # layer 3 is a Conv
    with pytest.raises(ValueError, match=r'model\.3'):
        Model(arch)


def test_bad_module_and_from_name_the_layer():
    arch = load_arch(MODELS / 'yolov5-cpu.yaml')
    arch['backbone'][3][2] = 'os.system'
    with pytest.raises(ValueError, match=r"layer 3: unknown module 'os\.system'"):
        Model(arch)
    arch = load_arch(MODELS / 'yolov5-cpu.yaml')
    arch['head'][2][0] = [-1, 30]  # layer 12
    with pytest.raises(ValueError, match=r'layer 12 .*30'):
        Model(arch)


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


def test_fuse_equivalence():
    torch.manual_seed(1)
    m = Model(MODELS / 'yolov5-cpu.yaml')
    _randomize_bn(m)
    m.eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        pred, raw = m(x)
        fused = copy.deepcopy(m).fuse()
        pred_f, raw_f = fused(x)
    assert not any(isinstance(mm, torch.nn.BatchNorm2d) for mm in fused.modules())
    assert all(c.bn is None and c.conv.bias is not None for c in fused.modules() if isinstance(c, Conv))
    assert raw[0].abs().max() > 0.1  # randomized stats actually change the output
    assert torch.allclose(pred, pred_f, atol=1e-4, rtol=0)
    assert all(torch.allclose(a, b, atol=1e-4, rtol=0) for a, b in zip(raw, raw_f))


def test_model_info_and_table(nano):
    keys = set(nano.state_dict())
    info = model_info(nano, imgsz=640)
    assert info['params'] == info['gradients'] == sum(p.numel() for p in nano.parameters())
    assert info['layers'] == len(list(nano.modules())) > 200
    assert 4.4 < info['gflops'] < 4.7  # YOLOv5n: 4.5 GFLOPs at 640
    assert set(nano.state_dict()) == keys
    assert not any('total_ops' in mm.__dict__ or 'total_ops' in mm._buffers for mm in nano.modules())
    small = model_info(nano, imgsz=320)['gflops']
    assert abs(small - info['gflops'] / 4) < 0.01 * info['gflops']
    table = layer_table(nano)
    assert 'SPPF' in table and '[17, 20, 23]' in table and '1,872,157' in table


def test_grid_cache_per_shape():
    m = Model(MODELS / 'yolov5-cpu.yaml').eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, _ = m(x)
        m(torch.rand(1, 3, 96, 64))
        b, _ = m(x)
    assert torch.equal(a, b) and len(m.model[-1]._grids) == 6
    assert len(copy.deepcopy(m).model[-1]._grids) == 0


def _synthetic_wh(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[12, 16], [40, 30], [30, 80], [120, 100], [250, 320]])
    c = centres[rng.integers(len(centres), size=n)]
    return np.minimum(c * np.exp(rng.normal(0, 0.25, (n, 2))), 640)


def test_kmean_anchors_sorted_with_good_recall():
    wh = _synthetic_wh()
    k = kmean_anchors(wh, 9, imgsz=640, thr=4.0, gen=100, seed=0)
    assert k.shape == (9, 2)
    area = k.prod(1)
    assert (np.diff(area) >= 0).all()
    met = anchor_metrics(k, wh, thr=4.0)
    assert met['bpr'] > 0.99 and met['aat'] > 1
    # a single fixed anchor recalls far less than the fitted set
    assert anchor_metrics(np.array([[16., 16.]]), wh)['bpr'] < 0.6
    assert np.array_equal(k, kmean_anchors(wh, 9, gen=100, seed=0))  # seeded
    assert kmean_anchors(wh, 9, imgsz=64, gen=0).max() <= 64  # sizes clipped to the image
    with pytest.raises(ValueError, match='need >= n=9'):
        kmean_anchors(wh[:5], 9)


def test_set_anchors_same_and_new_na():
    m = Model(MODELS / 'yolov5-cpu.yaml')
    k = kmean_anchors(_synthetic_wh(), 9, gen=20)
    set_anchors(m, k)
    det = m.model[-1]
    assert torch.allclose(det.anchor_pixels().reshape(-1, 2), torch.tensor(k, dtype=torch.float32), atol=0.01)
    k12 = kmean_anchors(_synthetic_wh(), 12, gen=20)
    set_anchors(m, k12)
    det = m.model[-1]
    assert det.na == 4 and m.na == 4 and det.m[0].out_channels == 4 * 85 and det.i == 24
    assert len(m.arch['anchors']) == 3 and len(m.arch['anchors'][0]) == 8 and _is_plain(m.arch)
    rebuilt = Model(m.arch)
    assert _shapes(rebuilt) == _shapes(m)
    assert torch.allclose(rebuilt.model[-1].anchors, det.anchors)
    m.train()
    assert m(torch.zeros(1, 3, 64, 64))[0].shape == (1, 4, 8, 8, 85)


def test_standalone_bottleneck_and_anchor_count_yaml():
    arch = load_arch(MODELS / 'yolov5-cpu.yaml')
    arch['backbone'][2] = [-1, 6, 'Bottleneck', [128]]  # 6 * 0.33 -> 2 chained shortcut blocks
    arch['anchors'] = 3  # count only: placeholder anchors from the strides
    arch['channels'] = {'model.1': 8, 'model.2.0.cv2': 8, 'model.2.1.cv2': 8}
    m = Model(arch)
    assert [b.add for b in m.model[2]] == [True, True] and m.model[3].conv.in_channels == 8
    px = m.model[-1].anchor_pixels()
    assert torch.allclose(px[..., 1], torch.tensor([[8.], [16.], [32.]]) * torch.tensor([1.25, 2.5, 5.0]))
    assert m(torch.zeros(1, 3, 64, 64))[2].shape == (1, 3, 2, 2, 85)
    arch['channels']['model.2.1.cv2'] = 12
    with pytest.raises(ValueError, match=r'model\.2\.1\.cv2'):
        Model(arch)


def test_one_class_prior_is_yolov5s_not_log_of_one():
    m = Model(MODELS / 'yolov5-cpu.yaml', nc=1)
    m.initialize_biases(class_freq=[25])  # one class: its frequency is 1, log 1 = 0 would mean a 0.5 score factor
    for conv in m.model[-1].m:
        cls_bias = conv.bias.view(3, 6)[:, 5]
        assert torch.allclose(cls_bias, torch.full((3,), math.log(0.6 / (1 - 0.99999))))
        assert torch.sigmoid(cls_bias).min() > 0.98


def test_channels_last_matches_nchw():
    """The trainer's channels_last layout computes the same function: only the summation order inside the
    convs and training-mode BN statistics differs (NHWC kernels), so float32 results agree to rounding, not
    bit for bit.
    Tolerance 1e-5 of the output scale (~100 float32 ulps at that scale; measured 4e-8 on an AVX2 host):
    a wrong weight layout (e.g. a transposed kernel) is off by the scale itself."""
    torch.manual_seed(2)
    m = Model(MODELS / 'yolov5n.yaml', nc=3)
    _randomize_bn(m)
    cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
    assert cl.model[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 96, 128)
    for mode in (m.eval, m.train):
        mode(), cl.train(m.training)
        with torch.no_grad():
            a, b = m(x), cl(x.contiguous(memory_format=torch.channels_last))
        raw_a, raw_b = (a, b) if m.training else (a[1], b[1])
        scale = max(float(r.abs().max()) for r in raw_a)
        assert scale > 1.0
        assert max(float((p - q).abs().max()) for p, q in zip(raw_a, raw_b)) <= 1e-5 * scale
        if not m.training:
            assert (a[0] - b[0]).abs().max() <= 1e-5 * a[0].abs().max()


def test_sppf_pools_in_channels_last_bit_identically():
    """An NCHW model's SPPF pools in channels_last on CPU (faster there); a max is exact, so the block's
    output is bit-identical to pooling in NCHW, and it leaves in the standard layout."""
    from core.model.common import SPPF

    torch.manual_seed(3)
    sppf = SPPF(32, 64).eval()
    x = torch.randn(2, 32, 10, 10)
    with torch.no_grad():
        y = sppf(x)
        t = sppf.cv1(x)
        p1 = torch.nn.functional.max_pool2d(t, 5, 1, 2)
        p2 = torch.nn.functional.max_pool2d(p1, 5, 1, 2)
        want = sppf.cv2(torch.cat((t, p1, p2, torch.nn.functional.max_pool2d(p2, 5, 1, 2)), 1))
    assert torch.equal(y, want) and y.is_contiguous()
