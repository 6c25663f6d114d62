"""``fastep eval CHECKPOINT --data DIR``: metrics JSON + markdown table of a trained model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint written by `fastep train`")
    p.add_argument("--data", required=True, help="data folder (pix2pix AB or A/B folders with a val/ split; "
                                                 "a built-in data set adds style-capture metrics)")
    p.add_argument("--out", default=None, help="metrics JSON path (default: <checkpoint dir>/eval.json); "
                                               "the markdown table goes next to it")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--n-inputs", type=int, default=100)
    p.add_argument("--n-styles", type=int, default=16)
    p.add_argument("--max-recon", type=int, default=None, help="cap on validation images for PSNR/LPIPS")
    p.add_argument("--style-source", choices=("images", "mapper", "gaussian"), default="images")
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex")
    p.add_argument("--lpips-weights", default="auto",
                   help="'auto' (default: imagenet when the torchvision file is on disk, else random, with a "
                        "note), 'imagenet' (needs that file), 'random' (seeded; offline), or a path")
    p.add_argument("--inception", default=None, help="Inception-v3 weights file for IS / FID")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--no-oracle", action="store_true",
                   help="skip the style-oracle metrics (built-in data only; the oracle trains once, cached)")
    p.add_argument("--oracle-steps", type=int, default=None,
                   help="training steps of the style oracle when it is not cached yet (default 500; fewer is "
                        "faster and less accurate: its held-out accuracy is printed with the metrics)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args: argparse.Namespace) -> int:
    import sys

    from ..train.checkpoint import CheckpointError
    from .evaluate import EvalConfig, evaluate_checkpoint, markdown_report, write_report
    from .oracle import OracleConfig

    auto_random = False
    try:
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {args.checkpoint!r} does not exist")
        if not Path(args.data).is_dir():
            raise FileNotFoundError(f"--data: {args.data!r} is not a folder (the data set the model was trained "
                                    "on, with a val/ split; the main job's is OUT/data/builtin-...)")
        if args.lpips_weights == "auto":
            from ..train.summary import _lpips_weights

            args.lpips_weights = _lpips_weights(args.lpips_net)
            auto_random = args.lpips_weights == "random"
        cfg = EvalConfig(n_inputs=args.n_inputs, n_styles=args.n_styles, max_recon=args.max_recon,
                         style_source=args.style_source, lpips_net=args.lpips_net,
                         lpips_weights=args.lpips_weights, inception_weights=args.inception, ema=not args.no_ema,
                         oracle=not getattr(args, "no_oracle", False),
                         **({"oracle_config": OracleConfig(steps=args.oracle_steps)} if args.oracle_steps else {}))
        report = evaluate_checkpoint(args.checkpoint, args.data, cfg, args.device,
                                     progress=getattr(args, "progress", True))
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"fastep eval: error: {err}", file=sys.stderr)
        return 1
    if auto_random:
        print(f"fastep eval: note: no ImageNet {args.lpips_net} weights on disk: LPIPS used a seeded random "
              "backbone (--lpips-weights PATH for real ones)", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval.json"
    write_report(report, out)
    print(markdown_report([report]))
    if "oracle" in report:
        from .oracle import summary_lines

        print("\n".join(summary_lines(report["oracle"])))
    print(json.dumps({k: report[k] for k in ("reconstruction", "diversity") if k in report}, indent=1))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
