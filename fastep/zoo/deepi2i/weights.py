"""BigGAN checkpoints in the BigGAN-PyTorch folder format: read strictly, write bit-exactly.

A BigGAN-PyTorch run folder holds ``G.pth``, ``G_ema.pth`` (when trained with an EMA of G),
``D.pth`` -- plain state dicts -- plus ``state_dict.pth`` (``itr``, ``epoch``, best scores and
``config``, the run's arguments: ``G_ch``, ``dim_z``, ``resolution``, ``n_classes``, ...) and the
optimiser states ``G_optim.pth``/``D_optim.pth``.  DeepI2I initialises its generator from
``G_ema.pth`` and both its discriminator and its encoder from ``D.pth``.

* :func:`load_biggan` reads such a folder with ``torch.load(weights_only=True)`` and loads the
  weights into fastep's :class:`Generator`/:class:`Discriminator` key for key; a missing,
  unexpected or mis-shaped tensor is a :class:`BigGANFormatError` of one line naming the file,
  the key and both shapes.  Optimiser states are never read (a fine-tune starts fresh Adam
  moments; with another class count their shapes would not even fit).
* A class count other than the checkpoint's is explicit: ``class_map`` picks the embedding rows
  (``"first"``: rows 0..N-1, as DeepI2I does) or ``reinit_embedding=True`` starts both class
  embeddings fresh.
* :func:`save_biggan` writes the same folder (atomically, file by file); loading it back gives
  every tensor bit for bit.

Generator-only checkpoints (e.g. pytorch-pretrained-BigGAN's ``pytorch_model.bin``, a
BigGAN-deep generator ported from TF Hub) are refused: DeepI2I's encoder is the pretrained
discriminator's trunk, so without a discriminator there is nothing to transfer it from.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ...config import ConfigError
from ...io import atomic_write
from .biggan import Discriminator, Generator, init_weights
from .config import DeepI2IConfig
from .nets import Adaptor, Encoder

__all__ = ["BigGANFormatError", "BigGANWeights", "load_biggan", "save_biggan", "biggan_run_config",
           "config_from_biggan", "GENERATOR_FILES"]

PathLike = Union[str, os.PathLike]

#: ``generator=`` choice -> file
GENERATOR_FILES = {"ema": "G_ema.pth", "raw": "G.pth"}
_FOLDER_HINT = "a BigGAN-PyTorch folder (G.pth and/or G_ema.pth, D.pth, state_dict.pth)"
_NO_D = ("DeepI2I needs the pretrained discriminator too: its encoder is the discriminator's trunk and its "
         "discriminator starts from it, so a generator-only checkpoint cannot initialise them")


class BigGANFormatError(ValueError):
    """A folder that is not a usable BigGAN-PyTorch checkpoint for the requested networks."""


def _shape(t) -> str:
    return str(list(t.shape)) if isinstance(t, Tensor) else type(t).__name__


# ----------------------------------------------------------------------------- config mapping

def biggan_run_config(cfg: DeepI2IConfig) -> Dict[str, Any]:
    """``cfg`` as the BigGAN-PyTorch run arguments ``state_dict.pth['config']`` stores (plain values)."""
    return {"model": "BigGAN", "resolution": cfg.resolution, "n_classes": cfg.n_classes,
            "G_ch": cfg.g_ch, "D_ch": cfg.d_ch, "dim_z": cfg.dim_z, "shared_dim": cfg.shared_dim,
            "hier": True, "G_shared": True,
            "G_attn": "_".join(map(str, cfg.g_attention)) or "0", "D_attn": "_".join(map(str, cfg.d_attention)) or "0",
            "SN_eps": cfg.sn_eps, "BN_eps": cfg.bn_eps, "G_nl": "relu", "D_nl": "relu", "D_wide": True,
            "num_G_SVs": 1, "num_D_SVs": 1, "num_G_SV_itrs": 1, "num_D_SV_itrs": 1, "norm_style": "bn",
            "G_param": "SN", "D_param": "SN", "mybn": False, "cross_replica": False,
            "G_kernel_size": 3, "D_kernel_size": 3, "G_init": cfg.init, "D_init": cfg.init}


#: run arguments fastep's BigGAN cannot reproduce: key -> accepted values
_SUPPORTED = {"model": ("BigGAN",), "hier": (True,), "G_shared": (True,), "D_wide": (True,),
              "num_G_SVs": (1,), "num_D_SVs": (1,), "num_G_SV_itrs": (1,), "num_D_SV_itrs": (1,),
              "norm_style": ("bn",), "G_param": ("SN",), "D_param": ("SN",), "G_kernel_size": (3,),
              "D_kernel_size": (3,), "G_nl": ("relu", "inplace_relu", "ir"), "D_nl": ("relu", "inplace_relu", "ir")}


def _attention(value, key: str, src: str) -> Tuple[int, ...]:
    try:
        sides = tuple(int(s) for s in str(value).split("_"))
    except ValueError:
        raise BigGANFormatError(f"{src}: config[{key!r}] = {value!r} is not a '_'-separated list of sides") from None
    return tuple(s for s in sides if s > 0)


def config_from_biggan(run: Mapping[str, Any], src: str = "state_dict.pth", **overrides) -> DeepI2IConfig:
    """The :class:`DeepI2IConfig` of a BigGAN-PyTorch run configuration (``state_dict.pth['config']``)."""
    for key, ok in _SUPPORTED.items():
        if key in run and run[key] not in ok:
            raise BigGANFormatError(f"{src}: config[{key!r}] = {run[key]!r}, but fastep's BigGAN supports only "
                                    f"{' or '.join(map(repr, ok))}")
    missing = [k for k in ("resolution", "n_classes", "G_ch", "D_ch", "dim_z") if k not in run]
    if missing:
        raise BigGANFormatError(f"{src}: the run configuration lacks {', '.join(missing)} (not a BigGAN-PyTorch "
                                f"state_dict.pth?); pass config= to load_biggan")
    dim_z = int(run["dim_z"])
    kw = dict(resolution=int(run["resolution"]), n_classes=int(run["n_classes"]), g_ch=int(run["G_ch"]),
              d_ch=int(run["D_ch"]), dim_z=dim_z, shared_dim=int(run.get("shared_dim") or dim_z),
              g_attention=_attention(run.get("G_attn", "64"), "G_attn", src),
              d_attention=_attention(run.get("D_attn", "64"), "D_attn", src))
    for key, name in (("SN_eps", "sn_eps"), ("BN_eps", "bn_eps")):
        if key in run:
            kw[name] = float(run[key])
    kw.update(overrides)
    try:
        return DeepI2IConfig(**kw)
    except ConfigError as err:
        raise BigGANFormatError(f"{src}: {err}") from None


# ----------------------------------------------------------------------------- reading

def _torch_load(path: Path, device, allow: Sequence[type] = ()) -> Any:
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        m = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"a Python object `{m.group(1)}`" if m else "Python objects"
        raise BigGANFormatError(f"{path}: holds {what}, which a BigGAN-PyTorch checkpoint does not "
                                f"(refused: loading it could run code)") from None
    except Exception as err:  # noqa: BLE001 - a torn or foreign file fails in many ways inside torch.load
        first = (str(err).splitlines() or [""])[0]
        raise BigGANFormatError(f"{path}: unreadable, not a complete torch.save file "
                                f"({type(err).__name__}: {first})") from None


def _state_dict_file(path: Path, device) -> Dict[str, Tensor]:
    sd = _torch_load(path, device)
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise BigGANFormatError(f"{path}: not a state dict (a mapping of names to tensors), got {type(sd).__name__}")
    if any(k.endswith(("weight_orig", "weight_u", "weight_v")) for k in sd):
        raise BigGANFormatError(f"{path}: uses torch.nn.utils.spectral_norm names (weight_orig/weight_u/weight_v), "
                                f"not BigGAN-PyTorch's (weight/u0/sv0); {_FOLDER_HINT} is needed")
    return dict(sd)


def _check_folder(folder: Path, g_file: str) -> None:
    if not folder.exists():
        raise BigGANFormatError(f"{folder}: no such folder; load_biggan reads {_FOLDER_HINT}")
    if folder.is_file():
        kind = ("a pytorch-pretrained-BigGAN generator (BigGAN-deep, no discriminator)"
                if folder.name == "pytorch_model.bin" else "a single file")
        raise BigGANFormatError(f"{folder} is {kind}; load_biggan reads {_FOLDER_HINT}. {_NO_D}")
    names = {p.name for p in folder.iterdir()}
    if "D.pth" not in names:
        if "pytorch_model.bin" in names:
            raise BigGANFormatError(f"{folder} is a pytorch-pretrained-BigGAN checkpoint (pytorch_model.bin + "
                                    f"config.json: a BigGAN-deep generator, no discriminator). {_NO_D}; use "
                                    f"{_FOLDER_HINT}")
        raise BigGANFormatError(f"{folder} has no D.pth. {_NO_D}; load_biggan reads {_FOLDER_HINT}")
    if g_file not in names:
        have = [n for n in GENERATOR_FILES.values() if n in names]
        alt = (f"; it has {have[0]}: pass generator="
               f"{next(k for k, v in GENERATOR_FILES.items() if v == have[0])!r}") if have else ""
        raise BigGANFormatError(f"{folder} has no {g_file}{alt}")


def _block_count(sd: Mapping[str, Tensor]) -> int:
    return len({int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})


def _strict_load(module: nn.Module, sd: Dict[str, Tensor], src: str, what: str) -> None:
    """``module.load_state_dict(sd)`` with a one-line error for the first problem (all are counted)."""
    own = module.state_dict()
    problems = []
    for k, v in own.items():
        if k not in sd:
            problems.append(f"key {k} (shape {_shape(v)} in the model) is missing from the file")
        elif tuple(sd[k].shape) != tuple(v.shape):
            problems.append(f"{k} has shape {_shape(sd[k])} in the file but {_shape(v)} in the model")
    for k, v in sd.items():
        if k not in own:
            problems.append(f"unexpected key {k} (shape {_shape(v)} in the file; the model has no such tensor)")
    if problems:
        extra = len(problems) - 1
        more = f" (and {extra} more mismatch{'es' if extra > 1 else ''})" if extra else ""
        raise BigGANFormatError(f"{src}: {problems[0]}{more}; the model is {what}")
    module.load_state_dict(sd, strict=True)


def _describe(cfg: DeepI2IConfig) -> str:
    return (f"{cfg.resolution} x {cfg.resolution}, G_ch {cfg.g_ch}, D_ch {cfg.d_ch}, {cfg.n_classes} classes, "
            f"dim_z {cfg.dim_z}")


@dataclass
class BigGANWeights:
    """A BigGAN loaded from a BigGAN-PyTorch folder.

    Attributes:
        G: the generator (from ``G_ema.pth`` or ``G.pth``, see ``generator_file``), train mode.
        D: the discriminator (from ``D.pth``), train mode.
        config: the networks' configuration.
        itr, epoch: the training position ``state_dict.pth`` records (0 without one).
        folder, generator_file: where they came from.
        class_map: the checkpoint rows behind each class (``None``: the checkpoint's own order;
            ``()``: the embeddings were re-initialised).
        run_config: ``state_dict.pth['config']`` as plain values (objects such as activation
            modules replaced by their names).
    """

    G: Generator
    D: Discriminator
    config: DeepI2IConfig
    itr: int = 0
    epoch: int = 0
    folder: str = ""
    generator_file: str = "G_ema.pth"
    class_map: Optional[Tuple[int, ...]] = None
    run_config: Dict[str, Any] = field(default_factory=dict)

    def encoder(self) -> Encoder:
        """DeepI2I's encoder Y initialised from ``D`` (strictly: Y keeps D's head)."""
        with torch.device(next(self.D.parameters()).device):
            enc = Encoder(self.config)
        enc.load_state_dict(self.D.state_dict(), strict=True)
        return enc

    def transfer_nets(self) -> Dict[str, nn.Module]:
        """DeepI2I's networks for transfer: ``{"G": G, "D": D, "E": encoder(), "A": fresh adaptor}``."""
        with torch.device(next(self.D.parameters()).device):
            adaptor = init_weights(Adaptor(self.config), self.config.adaptor_init)
        return {"G": self.G, "D": self.D, "E": self.encoder(), "A": adaptor}


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return type(value).__name__


def _resolve_class_map(class_map, n_file: int, n_model: int, reinit: bool, src: str) -> Optional[Tuple[int, ...]]:
    if reinit:
        if class_map is not None:
            raise BigGANFormatError("pass class_map or reinit_embedding=True, not both")
        return ()
    if class_map is None:
        if n_file != n_model:
            raise BigGANFormatError(f"{src}: the checkpoint has {n_file} classes, the config {n_model}: pass "
                                    f"class_map (\"first\", or {n_model} checkpoint rows) or reinit_embedding=True")
        return None
    if isinstance(class_map, str):
        if class_map != "first":
            raise BigGANFormatError(f"class_map must be 'first' or a sequence of row indices, got {class_map!r}")
        if n_model > n_file:
            raise BigGANFormatError(f"{src}: class_map='first' needs at most {n_file} classes (the checkpoint's), "
                                    f"the config has {n_model}")
        return tuple(range(n_model))
    rows = list(class_map.tolist() if isinstance(class_map, Tensor) else class_map)
    if len(rows) != n_model or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows):
        raise BigGANFormatError(f"class_map must hold {n_model} integer rows (one per class of the config), "
                                f"got {len(rows)} entries")
    bad = [r for r in rows if not 0 <= r < n_file]
    if bad:
        raise BigGANFormatError(f"class_map row {bad[0]} is outside the checkpoint's {n_file} classes")
    return tuple(rows)


def _apply_class_map(sd: Dict[str, Tensor], keys: Sequence[str], u_key: Optional[str],
                     rows: Tuple[int, ...]) -> None:
    idx = torch.tensor(rows, dtype=torch.long)
    for k in keys:
        if k in sd:
            sd[k] = sd[k].index_select(0, idx.to(sd[k].device)).clone()
    if u_key and u_key in sd:
        sd[u_key] = sd[u_key].index_select(1, idx.to(sd[u_key].device)).clone()


def load_biggan(folder: PathLike, config: Optional[DeepI2IConfig] = None, *, generator: str = "ema",
                class_map: Union[None, str, Sequence[int], Tensor] = None, reinit_embedding: bool = False,
                read_state: bool = True, device: Union[str, torch.device] = "cpu") -> BigGANWeights:
    """Read a BigGAN-PyTorch folder into fastep's BigGAN networks, strictly.

    Args:
        folder: the run folder (``G_ema.pth``/``G.pth``, ``D.pth``, ``state_dict.pth``).
        config: the networks to build; default: the one ``state_dict.pth['config']`` records
            (then ``state_dict.pth`` is required).
        generator: ``"ema"`` reads ``G_ema.pth`` (what DeepI2I transfers), ``"raw"`` ``G.pth``.
        class_map: when the config's class count differs from the checkpoint's (or to reorder):
            ``"first"`` or one checkpoint row per class; applied to G's ``shared`` and D's
            ``embed`` (rows of the table and of its ``u0``).
        reinit_embedding: start both class embeddings fresh (``config.init``) instead.
        read_state: ``False`` ignores ``state_dict.pth`` (then ``config`` is required and
            ``itr``/``epoch`` are 0): for folders whose ``state_dict.pth`` pickles objects of an
            old PyTorch that ``weights_only`` loading refuses.
        device: where the networks live.

    Raises:
        BigGANFormatError: one line naming the file and the first problem (with both shapes).
    """
    folder = Path(folder)
    if generator not in GENERATOR_FILES:
        raise BigGANFormatError(f"unknown generator {generator!r}; valid: {', '.join(GENERATOR_FILES)}")
    g_file = GENERATOR_FILES[generator]
    _check_folder(folder, g_file)
    state: Dict[str, Any] = {}
    state_path = folder / "state_dict.pth"
    if not read_state and config is None:
        raise BigGANFormatError("read_state=False needs config= (the networks the weights are for)")
    if read_state and state_path.is_file():
        try:
            loaded = _torch_load(state_path, "cpu", allow=(nn.ReLU,))  # BigGAN-PyTorch pickles its activation
        except BigGANFormatError as err:
            raise BigGANFormatError(f"{err}; to load the weights without it pass config= and "
                                    f"read_state=False") from None
        if not isinstance(loaded, Mapping):
            raise BigGANFormatError(f"{state_path}: expected a dict (itr, epoch, config), got {type(loaded).__name__}")
        state = _plain(dict(loaded))
    elif config is None:
        raise BigGANFormatError(f"{folder} has no state_dict.pth (BigGAN-PyTorch writes the run configuration "
                                f"there); pass config= to say which networks the weights are for")
    run = state.get("config") or {}
    if config is None:
        if not isinstance(run, Mapping):
            raise BigGANFormatError(f"{state_path}: 'config' is not a dict of run arguments")
        config = config_from_biggan(run, str(state_path))
    g_sd = _state_dict_file(folder / g_file, device)
    d_sd = _state_dict_file(folder / "D.pth", device)

    n_g = len(config.g_in)
    if _block_count(g_sd) and _block_count(g_sd) != n_g:
        k = _block_count(g_sd)
        raise BigGANFormatError(f"{folder / g_file}: has {k} generator blocks (a {4 * 2 ** k} x {4 * 2 ** k} BigGAN), "
                                f"the config builds {n_g} ({config.resolution} x {config.resolution})")
    n_file = int(g_sd["shared.weight"].shape[0]) if "shared.weight" in g_sd else config.n_classes
    if "embed.weight" in d_sd and int(d_sd["embed.weight"].shape[0]) != n_file:
        raise BigGANFormatError(f"{folder}: {g_file} has {n_file} classes (shared.weight) but D.pth "
                                f"{int(d_sd['embed.weight'].shape[0])} (embed.weight)")
    rows = _resolve_class_map(class_map, n_file, config.n_classes, reinit_embedding, str(folder))

    device = torch.device(device)
    with device:
        G, D = Generator(config), Discriminator(config)
    if rows == ():
        init_weights(G.shared, config.init)
        init_weights(D.embed, config.init)
        for k in ("shared.weight",):
            g_sd[k] = G.state_dict()[k]
        for k in ("embed.weight", "embed.u0", "embed.sv0"):
            d_sd[k] = D.state_dict()[k]
    elif rows is not None:
        _apply_class_map(g_sd, ("shared.weight",), None, rows)
        _apply_class_map(d_sd, ("embed.weight",), "embed.u0", rows)
    what = _describe(config)
    _strict_load(G, g_sd, str(folder / g_file), what)
    _strict_load(D, d_sd, str(folder / "D.pth"), what)
    return BigGANWeights(G=G, D=D, config=config, itr=int(state.get("itr", 0) or 0),
                         epoch=int(state.get("epoch", 0) or 0), folder=str(folder), generator_file=g_file,
                         class_map=rows, run_config=dict(run) if isinstance(run, Mapping) else {})


# ----------------------------------------------------------------------------- writing

def save_biggan(folder: PathLike, G: Generator, D: Discriminator, *, G_ema: Optional[Generator] = None,
                config: Optional[DeepI2IConfig] = None, itr: int = 0, epoch: int = 0) -> Path:
    """Write ``G.pth``, ``G_ema.pth`` (when ``G_ema``), ``D.pth`` and ``state_dict.pth`` in the
    BigGAN-PyTorch format (each file atomically; ``state_dict.pth`` last).  ``config`` defaults
    to ``G.cfg``.  Returns the folder."""
    folder = Path(folder)
    config = config or G.cfg
    for name, net, kind in (("G", G, Generator), ("G_ema", G_ema, Generator), ("D", D, Discriminator)):
        if net is not None and not isinstance(net, kind):
            raise TypeError(f"save_biggan: {name} must be a fastep {kind.__name__}, got {type(net).__name__}")
    folder.mkdir(parents=True, exist_ok=True)
    state = {"itr": int(itr), "epoch": int(epoch), "save_num": 0, "save_best_num": 0, "best_IS": 0,
             "best_FID": 999999, "config": biggan_run_config(config)}
    files = [("G.pth", G.state_dict()), ("D.pth", D.state_dict())]
    if G_ema is not None:
        files.insert(1, ("G_ema.pth", G_ema.state_dict()))
    for name, obj in files + [("state_dict.pth", state)]:
        atomic_write(folder / name, lambda fh, obj=obj: torch.save(obj, fh))
    return folder
