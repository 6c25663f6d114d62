"""Exact rewrites of convolutions whose shapes run slowly on tensor cores.

bf16 tensor-core convolution kernels (cuDNN, channels_last) need channel counts that are
multiples of 8; other counts fall back to slower kernels.  The rewrites here compute *the same
function* as the original layer -- equal in float64, forward and backward -- with aligned
shapes or fewer FLOPs.  They take the layer's own parameters at call time (the equalized-LR
weight ``weight * scale``), so a network keeps its parameters, its ``state_dict`` and its
checkpoints; only the arithmetic that runs changes.

* :func:`stddev_conv` -- the conv after the minibatch-stddev channel (Karras et al., ProGAN,
  section 3): ``conv(cat(x, s), W)`` with ``s`` one scalar broadcast as a channel.  It is
  ``conv(x, W[:, :C]) + s * M`` where ``M[o, h, w]`` is the sum of ``W[o, C]`` over the taps
  that land inside the (zero-padded) input -- constant in the interior, different only at the
  borders.  The big conv runs on the aligned ``C`` channels; ``M`` is a tiny separable product.
  ``mode="pad"`` instead zero-pads the channel dimension to the next multiple of 8.
* :func:`aligned_conv` -- any conv with ``in_ch`` or ``out_ch`` not a multiple of 8: weights
  zero-padded to aligned counts (extra input channels meet zero weights, extra outputs are
  sliced off).
* :func:`upsample_conv` -- nearest x2 upsampling followed by a 3x3 stride-1 SAME conv, as one
  stride-2 transposed conv with a 4x4 kernel whose taps are sums of the 3x3 taps (each output
  phase sees two source rows/columns).  The 4x upsampled tensor is never formed and the conv
  does 16/36 of the multiply-accumulates.
* :func:`conv_census` -- every convolution (forward, input- and weight-gradient) a function
  runs, with FLOPs and whether its channel counts are aligned; runs on meta tensors for free.

The functions work on any module with the :class:`~fastep.nn.layers.EqConv2d` interface
(``weight``, ``bias``, ``scale``, ``equalized``, ``kernel``, ``stride``, ``in_ch``, ``out_ch``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ALIGN", "aligned", "is_aligned", "effective_weight", "same_padding", "stddev_conv",
           "aligned_conv", "upsample_conv", "upsample_conv_kernel", "stddev_border_map",
           "ConvCall", "ConvCensus", "conv_census", "set_fast_convs"]

#: Channel multiple that bf16/fp16 tensor-core convolution kernels need.
ALIGN = 8


def aligned(n: int, to: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``to``."""
    return -(-int(n) // to) * to


def is_aligned(n: int, to: int = ALIGN) -> bool:
    return int(n) % to == 0


def effective_weight(conv) -> Tensor:
    """The weight a conv layer applies: ``weight * scale`` for equalized learning rate."""
    return conv.weight * conv.scale if conv.equalized else conv.weight


def same_padding(kernel: int, stride: int) -> Tuple[int, int]:
    """TensorFlow SAME padding (before, after) for even inputs: total ``kernel - stride``."""
    total = max(kernel - stride, 0)
    return total // 2, total - total // 2


def _pad_spatial(x: Tensor, kernel: int, stride: int) -> Tuple[Tensor, int]:
    before, after = same_padding(kernel, stride)
    if before == after:
        return x, before
    return F.pad(x, (before, after, before, after)), 0


def _check_conv(conv, name: str) -> None:
    for attr in ("weight", "bias", "kernel", "stride", "in_ch", "out_ch", "equalized", "scale"):
        if not hasattr(conv, attr):
            raise TypeError(f"{name}: expected an EqConv2d-like layer with .{attr}, got {type(conv).__name__}")


# ----------------------------------------------------------------------------- minibatch stddev

def _valid_taps(size: int, kernel: int, stride: int, before: int, device) -> Tensor:
    """``[out, kernel]`` 0/1 matrix: tap ``k`` of output ``i`` reads input ``i*stride + k - before``
    inside ``[0, size)`` (1) or in the zero padding (0)."""
    n_out = -(-size // stride)
    pos = torch.arange(n_out, device=device)[:, None] * stride + torch.arange(kernel, device=device)[None, :] - before
    return ((pos >= 0) & (pos < size)).to(torch.float32)


def stddev_border_map(w_extra: Tensor, height: int, width: int, stride: int = 1) -> Tensor:
    """``M[o, h, w]``: the SAME conv of a constant-one channel with ``w_extra[o, kh, kw]``.

    Separable: ``M = R W C^T`` with ``R``/``C`` the valid-tap masks of rows and columns, written
    as two broadcast sums (elementwise work that inductor fuses into one or two kernels; no
    matmul launches, and autocast leaves it in the weight's precision).
    """
    k = w_extra.shape[-1]
    before, _ = same_padding(k, stride)
    rows = _valid_taps(height, k, stride, before, w_extra.device).to(w_extra.dtype)
    cols = _valid_taps(width, k, stride, before, w_extra.device).to(w_extra.dtype)
    t = (w_extra[:, :, None, :] * cols[None, None]).sum(-1)  # [O, kh, W]
    return (t[:, None] * rows[None, :, :, None]).sum(2)  # [O, H, W]


def stddev_conv(x: Tensor, std: Tensor, conv, mode: str = "split") -> Tensor:
    """``conv(cat([x, std broadcast as one channel], 1))`` without the unaligned channel count.

    Args:
        x: features ``[N, C, H, W]`` with ``C = conv.in_ch - 1``.
        std: the minibatch-stddev value, a 0-d tensor (the extra channel is ``std`` everywhere).
        conv: the EqConv2d-like layer built for ``C + 1`` input channels.
        mode: ``"split"`` (aligned conv on ``C`` channels + closed-form border map) or ``"pad"``
            (the concatenated input zero-padded to a multiple of 8 channels).
    """
    _check_conv(conv, "stddev_conv")
    c = x.shape[1]
    if conv.in_ch != c + 1:
        raise ValueError(f"stddev_conv: conv expects {conv.in_ch} input channels = features + 1, "
                         f"got features with {c}")
    if std.dim() != 0:
        raise ValueError(f"stddev_conv: std must be a 0-d tensor, got shape {tuple(std.shape)}")
    w = effective_weight(conv)
    if mode == "pad":
        n, _, h, wd = x.shape
        extra = std.to(x.dtype).expand(n, 1, h, wd)
        pad = aligned(c + 1) - (c + 1)
        parts = [x, extra] + ([x.new_zeros(n, pad, h, wd)] if pad else [])
        xin = torch.cat(parts, dim=1)
        wp = F.pad(w, (0, 0, 0, 0, 0, pad)) if pad else w
        xin, sym = _pad_spatial(xin, conv.kernel, conv.stride)
        return F.conv2d(xin, wp, conv.bias, stride=conv.stride, padding=sym)
    if mode != "split":
        raise ValueError(f"stddev_conv: mode must be 'split' or 'pad', got {mode!r}")
    xin, sym = _pad_spatial(x, conv.kernel, conv.stride)
    main = F.conv2d(xin, w[:, :c], conv.bias, stride=conv.stride, padding=sym)
    border = stddev_border_map(w[:, c], x.shape[2], x.shape[3], conv.stride)
    return main + std.to(main.dtype) * border.to(main.dtype).unsqueeze(0)


# ----------------------------------------------------------------------------- channel padding

def aligned_conv(x: Tensor, conv) -> Tensor:
    """``conv(x)`` with input and output channel counts padded to multiples of 8.

    ``x`` may already carry extra channels beyond ``conv.in_ch`` (e.g. built zero-padded once
    and shared by several convs): they meet zero weights and do not change the result.  The
    output has ``conv.out_ch`` channels (a channel slice of the padded result).
    """
    _check_conv(conv, "aligned_conv")
    cin = x.shape[1]
    if cin < conv.in_ch:
        raise ValueError(f"aligned_conv: conv expects {conv.in_ch} input channels, got {cin}")
    cin_p, cout_p = aligned(cin), aligned(conv.out_ch)
    w = effective_weight(conv)
    if cin_p > cin:
        x = F.pad(x, (0, 0, 0, 0, 0, cin_p - cin))
    if cin_p > conv.in_ch or cout_p > conv.out_ch:
        w = F.pad(w, (0, 0, 0, 0, 0, cin_p - conv.in_ch, 0, cout_p - conv.out_ch))
    b = conv.bias
    if b is not None and cout_p > conv.out_ch:
        b = F.pad(b, (0, cout_p - conv.out_ch))
    x, sym = _pad_spatial(x, conv.kernel, conv.stride)
    y = F.conv2d(x, w, b, stride=conv.stride, padding=sym)
    return y[:, :conv.out_ch] if cout_p > conv.out_ch else y


# ----------------------------------------------------------------------------- upsample + conv

def _phase_sum(w: Tensor, dim: int) -> Tensor:
    """The 4 taps of the transposed kernel along ``dim`` from the 3 taps of the 3x3 conv.

    Output row 2i reads input rows i-1 (tap 0) and i (taps 1 + 2); row 2i+1 reads i (taps 0 + 1)
    and i+1 (tap 2).  With stride 2 and padding 1, tap k of the transposed conv carries input i
    to row 2i - 1 + k: k = 3 and 1 serve the even rows, k = 2 and 0 the odd ones.
    """
    t0, t1, t2 = w.unbind(dim)
    return torch.stack([t2, t1 + t2, t0 + t1, t0], dim)


def upsample_conv_kernel(w: Tensor) -> Tensor:
    """The ``[C_in, C_out, 4, 4]`` conv_transpose2d kernel equal to nearest-x2 + the 3x3 ``w``.

    Pure additions (no matmul), so autocast leaves them in the weight's precision.
    """
    if w.dim() != 4 or w.shape[-2:] != (3, 3):
        raise ValueError(f"upsample_conv_kernel: expected a [C_out, C_in, 3, 3] weight, got {tuple(w.shape)}")
    return _phase_sum(_phase_sum(w, 2), 3).transpose(0, 1)


def upsample_conv(x: Tensor, conv) -> Tensor:
    """``conv(interpolate(x, scale_factor=2, mode="nearest"))`` for a 3x3 stride-1 SAME conv."""
    _check_conv(conv, "upsample_conv")
    if conv.kernel != 3 or conv.stride != 1:
        raise ValueError(f"upsample_conv: needs a 3x3 stride-1 conv, got kernel {conv.kernel} stride {conv.stride}")
    if x.shape[1] != conv.in_ch:
        raise ValueError(f"upsample_conv: conv expects {conv.in_ch} input channels, got {x.shape[1]}")
    k = upsample_conv_kernel(effective_weight(conv))
    return F.conv_transpose2d(x, k, conv.bias, stride=2, padding=1)


# ----------------------------------------------------------------------------- census

@dataclass(frozen=True)
class ConvCall:
    """One convolution kernel call: ``kind`` is "fwd", "dgrad" (input gradient) or "wgrad"."""

    kind: str
    in_ch: int
    out_ch: int
    kernel: Tuple[int, ...]
    stride: Tuple[int, ...]
    transposed: bool
    input_shape: Tuple[int, ...]
    flops: int

    @property
    def aligned(self) -> bool:
        return is_aligned(self.in_ch) and is_aligned(self.out_ch)


@dataclass
class ConvCensus:
    """What :func:`conv_census` found: all calls, and FLOP totals."""

    calls: List[ConvCall]

    @property
    def gflop(self) -> float:
        return sum(c.flops for c in self.calls) / 1e9

    @property
    def unaligned_gflop(self) -> float:
        return sum(c.flops for c in self.calls if not c.aligned) / 1e9

    def by_signature(self) -> Dict[Tuple, Dict[str, float]]:
        """``(kind, in_ch, out_ch, kernel, stride, transposed, input_shape) -> {calls, gflop}``."""
        out: Dict[Tuple, Dict[str, float]] = {}
        for c in self.calls:
            key = (c.kind, c.in_ch, c.out_ch, c.kernel, c.stride, c.transposed, c.input_shape)
            e = out.setdefault(key, {"calls": 0, "gflop": 0.0})
            e["calls"] += 1
            e["gflop"] += c.flops / 1e9
        return out

    def summary(self) -> Dict[str, float]:
        unaligned = [c for c in self.calls if not c.aligned]
        return {"conv_calls": len(self.calls), "conv_gflop": round(self.gflop, 3),
                "unaligned_conv_calls": len(unaligned), "unaligned_conv_gflop": round(self.unaligned_gflop, 3)}


def conv_census(fn: Callable[[], object]) -> ConvCensus:
    """Run ``fn()`` and record every ``aten.convolution`` / ``aten.convolution_backward`` call.

    FLOPs are 2 x multiply-accumulates (the torch.utils.flop_counter convention); a backward
    call counts its input-gradient and weight-gradient halves separately (as cuDNN runs them).
    Channels are those of the forward conv (for a transposed conv: its input channels are
    ``in_ch``).  Use meta tensors to count a full-size step without computing it.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    calls: List[ConvCall] = []

    def record(kind, x_shape, w_shape, out_shape, stride, transposed, groups):
        x_shape, w_shape, out_shape = tuple(map(int, x_shape)), tuple(map(int, w_shape)), tuple(map(int, out_shape))
        if transposed:  # weight [Cin, Cout/g, k...]; every input position does Cout/g*k MACs
            cin, cout = w_shape[0], w_shape[1] * groups
            macs = x_shape[0] * cout // groups * _prod(w_shape[2:]) * _prod(x_shape[2:]) * cin
        else:
            cout, cin = w_shape[0], w_shape[1] * groups
            macs = _prod(out_shape) * w_shape[1] * _prod(w_shape[2:])
        calls.append(ConvCall(kind, cin, cout, tuple(w_shape[2:]), tuple(int(s) for s in stride), bool(transposed),
                              x_shape, 2 * macs))

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func is aten.convolution.default:
                x, w = args[0], args[1]
                stride, transposed, groups = args[3], args[6], args[8]
                record("fwd", x.shape, w.shape, out.shape, stride, transposed, groups)
            elif func is aten.convolution_backward.default:
                grad, x, w = args[0], args[1], args[2]
                stride, transposed, groups, mask = args[4], args[7], args[9], args[10]
                # the backward of a conv: same MACs as its forward per computed gradient
                if mask[0]:
                    record("dgrad", x.shape, w.shape, grad.shape, stride, transposed, groups)
                if mask[1]:
                    record("wgrad", x.shape, w.shape, grad.shape, stride, transposed, groups)
            return out

    with _Mode():
        fn()
    return ConvCensus(calls)


def _prod(xs) -> int:
    p = 1
    for v in xs:
        p *= int(v)
    return p


# ----------------------------------------------------------------------------- switch

def set_fast_convs(module: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Turn the exact conv rewrites of every submodule that offers them (``fast_convs``) on or off.

    Parameters, buffers and ``state_dict`` keys do not change, so checkpoints load either way.
    Returns ``module``.
    """
    for m in module.modules():
        if hasattr(m, "fast_convs"):
            m.fast_convs = bool(enabled)
    return module
