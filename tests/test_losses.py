"""fastep.losses: PerceptualLoss vs a plain pix2pixHD-style VGGLoss, StyleLoss, GAN losses, R1,
feature matching, input checks."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastep.losses as L
from fastep.nets.reference import VGGLossReference
from fastep.ops.reference import no_tf32

SEED = 7


def VGGLoss(net, criterion, normalize=True):
    """pix2pixHD's VGGLoss with fastep's random backbone for SEED (fastep.nets.reference)."""
    return VGGLossReference(net, criterion, seed=SEED, normalize=normalize)


def _close_grad(a, b, tol):
    err = (a.double() - b.double()).norm() / b.double().norm()
    assert err <= tol, f"relative gradient error {err:.3g} > {tol}"


@pytest.fixture(scope="module")
def nets():
    cache = {}

    def get(net, distance):
        key = (net, distance)
        if key not in cache:
            crit = nn.L1Loss() if distance == "l1" else nn.MSELoss()
            cache[key] = (L.PerceptualLoss(net, distance=distance, backbone_weights="random", seed=SEED),
                          VGGLoss(net, crit))
        return cache[key]

    return get


def _images(n=2, size=16, dtype=torch.float32):
    return torch.rand(n, 3, size, size, dtype=dtype) * 2 - 1


@pytest.mark.parametrize("net,distance", [("pix2pixhd", "l1"), ("vgg16", "mse")])
def test_perceptual_matches_pix2pixhd_vggloss(nets, net, distance):
    fast, plain = nets(net, distance)
    x, y = _images(), _images()
    # float64 ground truth
    plain64 = plain.double()
    x64 = x.double().requires_grad_()
    ref = plain64(x64, y.double())
    ref.backward()
    plain.float()
    # fastep, float32
    xf = x.clone().requires_grad_()
    out = fast(xf, y)
    out.backward()
    assert out.dim() == 0 and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref.detach(), rtol=2e-5, atol=1e-7)
    # L1's gradient jumps where a feature difference crosses 0: compare in norm, not elementwise
    tol = 2e-2 if distance == "l1" else 1e-3
    _close_grad(xf.grad, x64.grad, tol)
    # plain float32 VGGLoss: same value to float rounding
    xp = x.clone().requires_grad_()
    p32 = plain(xp, y)
    p32.backward()
    torch.testing.assert_close(out, p32, rtol=2e-5, atol=1e-7)
    _close_grad(xf.grad, xp.grad, tol)


def test_perceptual_raw_input_is_pix2pixhd_verbatim():
    """pix2pixHD feeds [-1, 1] images to VGG19 unnormalised: input_range="imagenet_normalized"."""
    fast = L.PerceptualLoss("pix2pixhd", backbone_weights="random", seed=SEED, input_range="imagenet_normalized")
    plain = VGGLoss("pix2pixhd", nn.L1Loss(), normalize=False)
    x, y = _images(), _images()
    torch.testing.assert_close(fast(x, y), plain(x, y), rtol=2e-5, atol=1e-7)


def test_perceptual_float64_exact(nets):
    fast, plain = nets("pix2pixhd", "l1")
    fast64, plain64 = fast.double(), plain.double()
    try:
        x, y = _images(dtype=torch.float64), _images(dtype=torch.float64)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = fast64(x1, y), plain64(x2, y)
        a.backward()
        b.backward()
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-14)
    finally:
        fast.float()
        plain.float()


def test_perceptual_target_pass_modes_agree(nets):
    fast, plain = nets("vgg16", "mse")
    x, y = _images(), _images()
    results = {}
    for mode in ("separate", "joint"):
        fast.target_pass = mode
        xg = x.clone().requires_grad_()
        v = fast(xg, y)
        v.backward()
        results[mode] = (v.detach(), xg.grad)
    fast.target_pass = "auto"
    torch.testing.assert_close(results["separate"][0], results["joint"][0], rtol=1e-5, atol=1e-7)
    _close_grad(results["separate"][1], results["joint"][1], 1e-4)
    # a target that requires grad is detached (pix2pixHD's VGGLoss): same output gradient
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    fast(xg, yg).backward()
    assert yg.grad is None
    _close_grad(xg.grad, results["separate"][1], 1e-4)
    # no grad at all: one joint pass, same value
    with torch.no_grad():
        torch.testing.assert_close(fast(x, y), results["separate"][0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["auto", "separate", "joint"])
def test_perceptual_detaches_target_like_vggloss(nets, mode):
    """pix2pixHD's VGGLoss detaches the target: no gradient reaches a target requiring grad."""
    fast, plain = nets("pix2pixhd", "l1")
    x, y = _images(), _images()
    fast.target_pass = mode
    try:
        x1, y1 = x.clone().requires_grad_(), y.clone().requires_grad_()
        v = fast(x1, y1)
        v.backward()
    finally:
        fast.target_pass = "auto"
    x2, y2 = x.clone().requires_grad_(), y.clone().requires_grad_()
    v_ref = plain(x2, y2)
    v_ref.backward()
    assert y2.grad is None  # the peer: nothing reaches its target
    assert y1.grad is None
    torch.testing.assert_close(v, v_ref, rtol=2e-5, atol=1e-7)
    _close_grad(x1.grad, x2.grad, 2e-2)
    # the target alone requiring grad: a constant of the loss, so no graph at all
    y3 = y.clone().requires_grad_()
    assert not fast(x, y3).requires_grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_perceptual_half_precision_input(nets, dtype):
    """Half-precision images are cast to the backbone's float32: the loss (and gradient) equals
    the one of the same rounded values in float32, and pix2pixHD's VGGLoss on them."""
    fast, plain = nets("pix2pixhd", "l1")
    x, y = _images().to(dtype), _images().to(dtype)
    xh = x.clone().requires_grad_()
    v = fast(xh, y)
    v.backward()
    assert v.dtype == torch.float32 and xh.grad.dtype == dtype
    x32 = x.float().requires_grad_()
    v32 = fast(x32, y.float())
    v32.backward()
    torch.testing.assert_close(v, v32, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(xh.grad, x32.grad.to(dtype))
    torch.testing.assert_close(v, plain(x.float(), y.float()), rtol=2e-5, atol=1e-7)
    with torch.no_grad():  # the joint pass over cat(output, target), mixed dtypes
        torch.testing.assert_close(fast(x, y.float()), v32.detach(), rtol=1e-6, atol=1e-8)


def test_perceptual_features_once_distance_many(nets):
    fast, _ = nets("vgg16", "mse")
    x1, x2, y = _images(), _images(), _images()
    with torch.no_grad():
        fy = fast.features(y)
    assert [f.shape[1] for f in fy] == fast.vgg.channels and not any(f.requires_grad for f in fy)
    for x in (x1, x2):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        d = fast.distance(fast.features(xa), fy)
        d.backward()
        v = fast(xb, y)
        v.backward()
        torch.testing.assert_close(d, v, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="feats_x"):
        fast.distance(fy[:2], fy[:2])
    with pytest.raises(ValueError, match="x"):
        fast.features(y[:, :1])


def test_perceptual_functional_and_defaults():
    x, y = _images(), _images()
    m = L.PerceptualLoss("vgg16", backbone_weights="random", seed=SEED)
    assert m.distance_kind == "mse" and m.weights == list(L.DEFAULT_LAYER_WEIGHTS)
    assert list(m.vgg.layers) == ["relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2"]
    assert L.PerceptualLoss("pix2pixhd", backbone_weights="random").distance_kind == "l1"
    v = L.perceptual_loss(x, y, "vgg16", backbone_weights="random", seed=SEED)
    torch.testing.assert_close(v, m(x, y))
    # one cache: the functional form and shared_perceptual_loss hand out the same module
    from fastep.nets.cache import shared_module_keys

    shared = L.shared_perceptual_loss("vgg16", backbone_weights="random", seed=SEED, device="cpu")
    assert L.shared_perceptual_loss("vgg16", backbone_weights="random", seed=SEED) is shared
    assert any(k[0] == "perceptual" for k in shared_module_keys())
    torch.testing.assert_close(shared(x, y), v)
    shallow = L.shared_perceptual_loss("vgg16", (1.0, 1.0), backbone_weights="random", seed=SEED,
                                       layers=["relu1_2", "relu2_2"])
    assert shallow is not shared and list(shallow.vgg.layers) == ["relu1_2", "relu2_2"]
    other = L.shared_perceptual_loss("vgg16", backbone_weights="random", seed=SEED + 1)
    assert other is not shared and not torch.equal(other.vgg.features[0].weight, shared.vgg.features[0].weight)
    from fastep.nets import random_state_dict

    sd = random_state_dict("vgg16", SEED)  # in-memory weights: never cached
    assert L.shared_perceptual_loss("vgg16", backbone_weights=sd) is not L.shared_perceptual_loss(
        "vgg16", backbone_weights=sd)
    assert float(m(x, x)) == 0.0


def test_perceptual_bad_input(nets):
    fast, _ = nets("vgg16", "mse")
    x = _images()
    with pytest.raises(TypeError, match="output"):
        fast((x * 127).to(torch.uint8), x)
    with pytest.raises(ValueError, match="target"):
        fast(x, _images(size=24))
    with pytest.raises(ValueError, match="output"):
        fast(x[:, :1], x[:, :1])
    with pytest.raises(ValueError, match="output"):
        fast(x[0], x[0])
    with pytest.raises(TypeError, match="target"):
        fast(x, x.numpy())
    with pytest.raises(ValueError, match="net"):
        L.PerceptualLoss("resnet", backbone_weights="random")
    with pytest.raises(ValueError, match="distance"):
        L.PerceptualLoss("vgg16", distance="l3", backbone_weights="random")
    with pytest.raises(ValueError, match="weights"):
        L.PerceptualLoss("vgg16", weights=(1, 2), backbone_weights="random")


def test_range_warning_once(nets):
    fast, _ = nets("vgg16", "mse")
    L._RANGE_WARNED.clear()
    x = _images()
    with pytest.warns(UserWarning, match="\\[-1, 1\\]"):
        fast(x * 3, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast(x * 3, x)
        fast(x, x)


# --------------------------------------------------------------------------------------------
# StyleLoss (on the gram ops)
# --------------------------------------------------------------------------------------------
def test_style_loss_matches_gatys_reference():
    sl = L.StyleLoss(net="gatys", backbone_weights="random", seed=SEED, layer_weights=[1, 2, 3, 4, 5])
    x, t = _images(), _images(n=1)
    xg = x.clone().requires_grad_()
    v = sl(xg, t)
    v.backward()
    # float64 plain definition
    vgg64 = sl.vgg.double()
    try:
        x64 = x.double().requires_grad_()
        fx, ft = vgg64(x64), vgg64(t.double())
        exp = 0
        for w, a, b in zip([1, 2, 3, 4, 5], fx, ft):
            n, c, h, wd = a.shape
            ga = a.reshape(n, c, -1) @ a.reshape(n, c, -1).transpose(1, 2) / (c * h * wd)
            gb = b.reshape(1, c, -1) @ b.reshape(1, c, -1).transpose(1, 2) / (c * h * wd)
            exp = exp + w * (ga - gb).square().mean()
        exp.backward()
    finally:
        sl.vgg.float()
    torch.testing.assert_close(v.double(), exp.detach(), rtol=1e-4, atol=1e-9)
    _close_grad(xg.grad, x64.grad, 1e-3)
    # a target given in the call is not kept; a fixed target (set_target) and its Grams agree
    assert sl.target_grams is None
    sl.set_target(t)
    grams = sl.target_grams
    # the public target_grams are the target's Grams (float64 definition above, layer by layer)
    for g, b in zip(grams, ft):
        c = b.shape[1]
        gb = b.reshape(1, c, -1) @ b.reshape(1, c, -1).transpose(1, 2) / b[0].numel()
        torch.testing.assert_close(g.double(), gb.detach(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(sl(x), v.detach(), rtol=1e-5, atol=1e-9)
    assert sl.target_grams is grams
    sl2 = L.StyleLoss(target_grams=[g[0] for g in grams], net="gatys", backbone_weights="random",
                      seed=SEED, layer_weights=[1, 2, 3, 4, 5])
    torch.testing.assert_close(sl2(x), v.detach(), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="target_grams"):
        L.StyleLoss(target_grams=[torch.zeros(3, 3)], backbone_weights="random")


def _style_loss64(vgg, x, t):
    """Gatys' loss in float64 on ``vgg`` (converted to float64 and back)."""
    vgg.double()
    try:
        exp = 0
        for a, b in zip(vgg(x.double()), vgg(t.double())):
            n, c, h, w = a.shape
            ga = a.reshape(n, c, -1) @ a.reshape(n, c, -1).transpose(1, 2) / (c * h * w)
            gb = b.reshape(b.shape[0], c, -1) @ b.reshape(b.shape[0], c, -1).transpose(1, 2) / (c * h * w)
            exp = exp + (ga - gb).square().mean()
        return exp
    finally:
        vgg.float()


def test_style_loss_target_in_the_call_is_that_calls_target():
    """A fresh target per call (``loss(x, target=t); del t``: new tensors often reuse a freed
    address) and a target refilled through ``.data.copy_()`` (which bumps no version counter)
    must each give the loss against the target of that call."""
    sl = L.StyleLoss(net=["relu1_1", "relu2_1"], backbone_weights="random", seed=SEED)
    x = _images(n=2)
    steps = 6
    seen = torch.empty(steps, 1, 3, 16, 16)  # preallocated: the loop allocates only the targets
    got = torch.empty(steps, dtype=torch.float64)
    with torch.no_grad():
        for step in range(steps):
            r = 0.2 + 0.15 * step  # distinct styles
            t = torch.empty(1, 3, 16, 16).uniform_(-r, r)  # often lands at the freed address
            got[step] = sl(x, target=t)
            seen[step].copy_(t)
            del t
        exp = torch.stack([_style_loss64(sl.vgg, x, seen[i]) for i in range(steps)])
        wrong = int((~torch.isclose(got, exp, rtol=1e-4, atol=1e-12)).sum())
        t = torch.empty(1, 3, 16, 16)
        refilled = []
        for step in range(4):
            t.data.copy_(_images(n=1) * (0.2 + 0.25 * step))
            refilled.append((sl(x, t).double(), t.clone()))
        wrong_refill = sum(not torch.isclose(v, _style_loss64(sl.vgg, x, tt), rtol=1e-4, atol=1e-12)
                           for v, tt in refilled)
        assert (wrong, wrong_refill) == (0, 0), \
            f"answered for an earlier target: {wrong} of {steps} fresh targets, {wrong_refill} of 4 refills"
        assert sl.target_grams is None  # nothing was cached
        # a fixed target is kept as it was when set: later in-place changes do not move it
        fixed = _images(n=1)
        kept = fixed.clone()
        sl.set_target(fixed)
        fixed.data.copy_(_images(n=1))
        torch.testing.assert_close(sl(x).double(), _style_loss64(sl.vgg, x, kept), rtol=1e-4, atol=1e-12)
        # a target in the call overrides the fixed one for that call only
        other = _images(n=1)
        torch.testing.assert_close(sl(x, other).double(), _style_loss64(sl.vgg, x, other), rtol=1e-4, atol=1e-12)
        torch.testing.assert_close(sl(x).double(), _style_loss64(sl.vgg, x, kept), rtol=1e-4, atol=1e-12)


def test_style_loss_half_precision_and_detached_target():
    sl = L.StyleLoss(net=["relu1_1", "relu2_1"], backbone_weights="random", seed=SEED)
    x, t = _images(n=2), _images(n=1)
    tg = t.clone().requires_grad_()
    xb = x.bfloat16().requires_grad_()
    v = sl(xb, tg)
    v.backward()
    assert tg.grad is None and xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(v.double(), _style_loss64(sl.vgg, xb.detach().float(), t), rtol=1e-4, atol=1e-12)


# --------------------------------------------------------------------------------------------
# adversarial losses
# --------------------------------------------------------------------------------------------
def _d_outputs(kind):
    shapes = [(2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 2, 2)]
    if kind == "tensor":
        return torch.randn(shapes[0]), torch.randn(shapes[0])
    real = [torch.randn(s) for s in shapes]
    fake = [torch.randn(s) for s in shapes]
    if kind == "list":
        return real, fake
    feats = lambda outs: [[torch.randn(2, 4, 5, 5), torch.randn(2, 8, 3, 3), o] for o in outs]  # noqa: E731
    return feats(real), feats(fake)


def _finals(p):
    if isinstance(p, torch.Tensor):
        return [p]
    return [q[-1] if isinstance(q, list) else q for q in p]


@pytest.mark.parametrize("kind", ["tensor", "list", "lists"])
def test_adversarial_losses(kind):
    real, fake = _d_outputs(kind)
    R, Fk = _finals(real), _finals(fake)
    exp = {
        "lsgan": (sum(0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean() for r, f in zip(R, Fk)),
                  sum(((f - 1) ** 2).mean() for f in Fk)),
        "hinge": (sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(R, Fk)),
                  sum(-f.mean() for f in Fk)),
        "nonsat": (sum(F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                       + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)) for r, f in zip(R, Fk)),
                   sum(F.binary_cross_entropy_with_logits(f, torch.ones_like(f)) for f in Fk)),
    }
    fns = {"lsgan": (L.lsgan_d_loss, L.lsgan_g_loss), "hinge": (L.hinge_d_loss, L.hinge_g_loss),
           "nonsat": (L.nonsat_d_loss, L.nonsat_g_loss)}
    for name, (d_fn, g_fn) in fns.items():
        torch.testing.assert_close(d_fn(real, fake), exp[name][0])
        torch.testing.assert_close(g_fn(fake), exp[name][1])
        mod = L.AdversarialLoss(name)
        torch.testing.assert_close(mod(real, fake), exp[name][0])
        torch.testing.assert_close(mod.g_loss(fake), exp[name][1])


def test_adversarial_bad_input():
    r, f = _d_outputs("list")
    with pytest.raises(ValueError, match="fake"):
        L.lsgan_d_loss(r, f[:2])
    with pytest.raises(TypeError, match="fake"):
        L.lsgan_g_loss("x")
    with pytest.raises(TypeError, match="fake"):
        L.lsgan_g_loss([torch.ones(2, dtype=torch.long)])
    with pytest.raises(ValueError, match="kind"):
        L.AdversarialLoss("wgan")


def test_lsgan_gradients_flow():
    fake = [torch.randn(2, 1, 4, 4, requires_grad=True), torch.randn(2, 1, 2, 2, requires_grad=True)]
    L.lsgan_g_loss(fake).backward()
    torch.testing.assert_close(fake[0].grad, 2 * (fake[0].detach() - 1) / 32)


def test_r1_penalty():
    D = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 1, 3, padding=1))
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    out = [D(x), D(F.avg_pool2d(x, 2))]
    pen = L.r1_penalty(out, x, gamma=4.0)
    g, = torch.autograd.grad(out[0].sum() + out[1].sum(), x, create_graph=True)
    exp = 2.0 * g.square().sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(pen, exp)
    pen.backward()  # differentiable into D
    assert D[0].weight.grad is not None
    with pytest.raises(ValueError, match="real_inputs"):
        L.r1_penalty(D(x.detach()), x.detach())


@pytest.mark.parametrize("distance", ["l1", "mse"])
def test_feature_matching_matches_pix2pixhd(distance):
    real, fake = _d_outputs("lists")
    fake = [[t.clone().requires_grad_() for t in s] for s in fake]
    crit = nn.L1Loss() if distance == "l1" else nn.MSELoss()
    num_D, n_layers_D = len(fake), 3
    feat_w, d_w = 4.0 / (n_layers_D + 1), 1.0 / num_D
    exp = 0
    for i in range(num_D):
        for j in range(len(fake[i]) - 1):
            exp = exp + d_w * feat_w * crit(fake[i][j], real[i][j].detach())
    got = L.feature_matching_loss(real, fake, distance=distance)
    torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-7)
    g1 = torch.autograd.grad(got, fake[0][0], retain_graph=True)[0]
    g2 = torch.autograd.grad(exp, fake[0][0])[0]
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="fake_feats"):
        L.feature_matching_loss(real, fake[:2])


def test_documented_differences_from_the_originals():
    """Each row of README's "differences from the originals" table, checked numerically against
    the originals' formulas written out from their papers / public definitions."""
    real, fake = _d_outputs("list")
    k = len(fake)
    # 1. SPADE's GANLoss averages over discriminator scales; fastep (like pix2pixHD) sums
    spade_hinge_d = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)) / k
    torch.testing.assert_close(L.hinge_d_loss(real, fake), k * spade_hinge_d)
    spade_hinge_g = sum(-f.mean() for f in fake) / k
    torch.testing.assert_close(L.hinge_g_loss(fake), k * spade_hinge_g)
    # pix2pixHD: 0.5 * (sum over scales of MSE to 1 on real + MSE to 0 on fake): equal
    p2p_d = 0.5 * (sum(((r - 1) ** 2).mean() for r in real) + sum((f ** 2).mean() for f in fake))
    torch.testing.assert_close(L.lsgan_d_loss(real, fake), p2p_d)
    # 2. Gram normalisation: fastep's per-layer term mean((G - A)^2) with G = F F^T / (C H W);
    # Gatys et al. (2016, eq. 4): E_l = sum((G' - A')^2) / (4 C^2 (H W)^2) with G' = F F^T
    from fastep.ops import gram
    f, a = torch.randn(1, 8, 5, 6, dtype=torch.float64), torch.randn(1, 8, 5, 6, dtype=torch.float64)
    c, m = 8, 30
    ours = (gram(f) - gram(a)).square().mean()
    raw = lambda t: t.reshape(c, m) @ t.reshape(c, m).T  # noqa: E731
    gatys = (raw(f) - raw(a)).square().sum() / (4 * c ** 2 * m ** 2)
    torch.testing.assert_close(gatys, ours * c ** 2 / 4)
    # 3. PSNR: fastep averages per-image PSNR; a PSNR over the whole batch's MSE differs
    from fastep.eval.metrics import psnr
    x, y = _images(n=2), _images(n=2)
    y[1] = x[1] + 0.01 * (y[1] - x[1])  # one close pair, one far pair
    per_image = (10 * torch.log10(4 / (x.double() - y.double()).square().flatten(1).mean(1))).mean()
    batch = 10 * torch.log10(4 / (x.double() - y.double()).square().mean())
    torch.testing.assert_close(psnr(x, y), per_image)
    assert abs(float(per_image - batch)) > 1.0
    # 4. StEP's official perceptual loss scales activations by 0.1 before the MSE (x 0.01):
    # PerceptualLoss("vgg16") leaves that factor to the caller (fastep's trainer applies it)
    m16 = L.PerceptualLoss("vgg16", backbone_weights="random", seed=SEED)
    xo, yo = _images(), _images()
    fo, fy = m16.features(xo), m16.features(yo)
    scaled = sum(w * F.mse_loss(0.1 * p, 0.1 * q) for w, p, q in zip(m16.weights, fo, fy))
    torch.testing.assert_close(scaled, 0.01 * m16(xo, yo), rtol=1e-5, atol=1e-9)


@pytest.mark.cuda
def test_perceptual_cuda_amp_close_to_fp32():
    m = L.PerceptualLoss("vgg16", backbone_weights="random", seed=SEED).cuda()
    x, y = _images(4, 64).cuda(), _images(4, 64).cuda()
    xg = x.clone().requires_grad_()
    v = m(xg, y)
    v.backward()
    m.amp = False
    x32 = x.clone().requires_grad_()
    v32 = m(x32, y)
    v32.backward()
    torch.testing.assert_close(v, v32, rtol=3e-2, atol=1e-5)
    cos = F.cosine_similarity(xg.grad.flatten(), x32.grad.flatten(), dim=0)
    assert cos > 0.98


@pytest.mark.triton
def test_perceptual_through_triton_backend(triton_device):
    """End to end through the fused op on its Triton backend (CUDA, or CPU interpreter), fp32."""
    from fastep import _ext

    with _ext.force_backend("triton"), no_tf32():  # CPU ops default to the reference
        assert _ext.backend_for("weighted_feature_distance", triton_device) == "triton"
        fast = L.PerceptualLoss("pix2pixhd", backbone_weights="random", seed=SEED, amp=False).to(triton_device)
        plain = VGGLoss("pix2pixhd", nn.L1Loss()).to(triton_device)
        x, y = _images().to(triton_device), _images().to(triton_device)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        v, v_ref = fast(x1, y), plain(x2, y)
        v.backward()
        v_ref.backward()
        torch.testing.assert_close(v, v_ref, rtol=1e-4, atol=1e-7)
        _close_grad(x1.grad, x2.grad, 2e-2)


def test_perceptual_module_compiles_fullgraph():
    torch._dynamo.reset()
    m = L.PerceptualLoss("vgg16", backbone_weights="random", seed=SEED)
    x, y = _images(), _images()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    v = torch.compile(m, backend="aot_eager", fullgraph=True)(x1, y)
    v.backward()
    v_ref = m(x2, y)
    v_ref.backward()
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(x1.grad, x2.grad)


def test_target_pass_keeps_no_graph_for_target(nets):
    """Separate no_grad target pass: tensors saved for backward = those of the output half only
    (what pix2pixHD's VGGLoss saves), fewer than one joint pass over cat(output, target)."""
    fast, plain = nets("pix2pixhd", "l1")

    def saved_bytes(fn):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(seen.values())

    x, y = _images(size=32).requires_grad_(), _images(size=32)
    sep = saved_bytes(lambda: fast(x, y))
    fast.target_pass = "joint"
    try:
        joint = saved_bytes(lambda: fast(x, y))
    finally:
        fast.target_pass = "auto"
    base = saved_bytes(lambda: plain(x, y))
    assert sep < joint
    assert sep <= base * 1.01
