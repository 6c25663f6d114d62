"""``fastep sample CHECKPOINT --input IMG... [--styles IMG...] --out grid.png``.

With ``--styles``: a style-transfer grid (inputs x style images).  Without: random samples from
the mapper and N(mu, sigma).  With ``--interpolate STYLE_A STYLE_B``: interpolation strips.
A file twice as wide as high is a pix2pix AB pair, read as training reads it (the A half as an
input, the B half as a style); ``--whole`` reads files whole.  Every user error (a missing or
foreign checkpoint, a missing image or folder) is one line on stderr and exit status 1.

BridgeGAN checkpoints take edits instead: ``--set palette=pastel`` (label-based: ``-n`` outputs
over the noise) or ``--ref IMG --attrs texture`` (reference-based: the named groups from the
reference).  The inputs' attributes come from the model's classifier, or from ``--attr-file``
(CelebA's list_attr_celeba.txt format).  An unknown attribute, two values of one group or a
missing attribute file is one line on stderr and exit status 1.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--input", nargs="+", required=True, help="input image file(s) or folder(s) (A)")
    p.add_argument("--styles", nargs="+", default=None, help="style image file(s) or folder(s) (B)")
    p.add_argument("--interpolate", nargs=2, metavar=("STYLE_A", "STYLE_B"), default=None)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--ab", action="store_true", help="the files are pix2pix AB pairs: inputs use the A half, "
                                                     "styles the B half (default: a file twice as wide as "
                                                     "high is read so, as training reads AB data)")
    p.add_argument("--whole", action="store_true", help="read every file whole, even one twice as wide as high")
    p.add_argument("-n", type=int, default=8, help="samples per input when sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", dest="edits", action="append", default=None, metavar="GROUP=VALUE",
                   help="BridgeGAN: label-based edit, e.g. palette=pastel (repeatable)")
    p.add_argument("--ref", default=None, help="BridgeGAN: reference image of a reference-based edit")
    p.add_argument("--attrs", default=None, help="BridgeGAN: the groups --ref gives, e.g. texture or palette,texture")
    p.add_argument("--attr-file", default=None,
                   help="BridgeGAN: the inputs' attributes (list_attr_celeba.txt format; default: the model's "
                        "classifier predicts them)")


def run(args: argparse.Namespace) -> int:
    import sys

    from ..train.checkpoint import CheckpointError
    from . import sample as S

    in_half, st_half = ("A", "B") if args.ab else ("full", "full") if args.whole else ("auto", "auto")
    if args.edits or args.ref or args.attrs or args.attr_file:
        return _bridge(args)
    try:
        if args.ab and args.whole:
            raise ValueError("--ab and --whole contradict each other; give one")
        args.input = S.expand_image_paths(args.input, "input")
        if args.styles:
            args.styles = S.expand_image_paths(args.styles, "styles")
        if args.interpolate:
            S.expand_image_paths(args.interpolate, "interpolate")
        if args.interpolate:
            path = S.interpolate(args.checkpoint, args.input, *args.interpolate, args.out, device=args.device)
        elif args.styles:
            path = S.transfer(args.checkpoint, args.input, args.styles, args.out, input_half=in_half,
                              style_half=st_half, device=args.device)
        else:
            path = S.sample(args.checkpoint, args.input, args.out, n=args.n, input_half=in_half, seed=args.seed,
                            device=args.device)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"fastep sample: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def _bridge(args: argparse.Namespace) -> int:
    """The BridgeGAN edits (``--set`` or ``--ref`` + ``--attrs``)."""
    import sys

    from ..train.checkpoint import CheckpointError
    from ..zoo.bridgegan import sample as B
    from . import sample as S

    try:
        if args.edits and (args.ref or args.attrs):
            raise ValueError("give either --set (label-based edit) or --ref with --attrs (reference-based), not both")
        if bool(args.ref) != bool(args.attrs):
            raise ValueError("--ref and --attrs go together: --ref IMG --attrs GROUP[,GROUP]")
        if not (args.edits or args.ref):
            raise ValueError("--attr-file gives the inputs' attributes of an edit: add --set or --ref/--attrs")
        if args.attr_file and not __import__("os").path.isfile(args.attr_file):
            raise FileNotFoundError(f"--attr-file: {args.attr_file!r} does not exist")
        inputs = S.expand_image_paths(args.input, "input")
        if args.edits:
            path = B.label_edit_grid(args.checkpoint, inputs, " ".join(args.edits), args.out, n=args.n,
                                     seed=args.seed, attr_file=args.attr_file, device=args.device)
        else:
            S.expand_image_paths([args.ref], "ref")
            path = B.reference_edit_grid(args.checkpoint, inputs, args.ref, args.attrs, args.out,
                                         attr_file=args.attr_file, device=args.device)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"fastep sample: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
