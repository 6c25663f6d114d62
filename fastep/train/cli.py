"""``fastep train``: one StEP stage, or all of them (the main job).

    fastep train                                  # all stages, built-in data, CPU-sized defaults
    fastep train --stage 2 --data DIR --out runs/x --resolution 256 --batch 8 --kimg 250
    fastep train --resume --out runs/x            # continue where an interrupted run stopped
    torchrun --nproc_per_node 8 -m fastep train --stage 3 --data DIR --out runs/x   # DDP

Exit status: 0 done, 1 bad arguments / missing inputs, 3 a NaN/inf loss stopped training,
130 stopped by SIGTERM / Ctrl-C after writing a checkpoint (continue with --resume).
"""
from __future__ import annotations

import argparse
import sys

STAGES = ("1", "2", "3", "mapper", "all")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n", 2)[2]
    p.add_argument("--stage", default="all", choices=STAGES,
                   help="which stage to train (default: all = 1, 2, 3, mapper)")
    p.add_argument("--data", default="builtin",
                   help="pix2pix AB folder (train/, val/) or A/ + B/ folders, or 'builtin' (default): "
                        "the generated shapes->styles set, made once under OUT/data")
    p.add_argument("--approach", default="ours_v3",
                   help="loss configuration: ours_v1..ours_v4, bicycle_v1, bicycle_v2 (default ours_v3)")
    p.add_argument("--out", default="runs/fastep", help="output folder (default runs/fastep)")
    p.add_argument("--resolution", type=int, default=None, help="image size (default 256 on CUDA, 64 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="batch per process (default 8 on CUDA, 4 on CPU)")
    p.add_argument("--kimg", type=float, default=None,
                   help="length of the stage in thousands of images (default 250 for stage 2, 700 for "
                        "stage 3 on CUDA; 0.16 each on CPU); with --stage all it sets stage 3 and stage 2 "
                        "gets 250/700 of it")
    p.add_argument("--stage2-kimg", type=float, default=None, help="stage-2 length with --stage all")
    p.add_argument("--stage3-kimg", type=float, default=None, help="stage-3 length with --stage all")
    p.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in OUT (finished stages are skipped)")
    p.add_argument("--init", default=None,
                   help="checkpoint to start a single stage from (default: OUT/stage{N-1}/final.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=None, help="built-in set: training images")
    p.add_argument("--n-val", type=int, default=None, help="built-in set: validation images")
    p.add_argument("--stage1-epochs", type=int, default=None, help="triplet pre-training epochs")
    p.add_argument("--mapper-epochs", type=int, default=None, help="IMLE mapper epochs")
    p.add_argument("--ckpt-every", type=float, default=None, help="kimg between checkpoints")
    p.add_argument("--image-every", type=float, default=None, help="kimg between sample grids")
    p.add_argument("--log-every", type=int, default=None, help="steps between loss checks / log lines")
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept per stage (default 3)")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers per process")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile the step (default on CUDA)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--amp", dest="amp", action="store_true", default=None, help="bf16 autocast (default on CUDA)")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--cuda-graphs", action="store_true", help="capture the step in CUDA graphs")
    p.add_argument("--vgg-weights", default="auto",
                   help="perceptual-loss VGG weights: auto, imagenet, random or a file")
    p.add_argument("--width", default=None,
                   help="model widths g_nf,e_nf,d_nf (e.g. 16,16,16 for quick runs; default the paper's)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")


def options_from_args(args):
    from ..zoo.step.pipeline import PipelineOptions

    stages = ("1", "2", "3", "mapper") if args.stage == "all" else (args.stage,)
    s2, s3 = args.stage2_kimg, args.stage3_kimg
    if args.kimg is not None:
        if args.kimg <= 0:
            raise ValueError(f"--kimg must be > 0, got {args.kimg}")
        if args.stage == "2":
            s2 = args.kimg
        elif args.stage == "3":
            s3 = args.kimg
        elif args.stage == "all":
            s3 = args.kimg if s3 is None else s3
            s2 = args.kimg * 250.0 / 700.0 if s2 is None else s2
    overrides = {}
    if args.width:
        try:
            g, e, d = (int(x) for x in str(args.width).split(","))
        except ValueError:
            raise ValueError(f"--width: expected three integers g_nf,e_nf,d_nf, got {args.width!r}") from None
        overrides = {"g_nf": g, "e_nf": e, "d_nf": d}
    if args.resolution is not None and args.resolution < 16:
        raise ValueError(f"--resolution must be >= 16, got {args.resolution}")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    return PipelineOptions(out=args.out, data=args.data, approach=args.approach, stages=stages,
                           device=args.device, resolution=args.resolution, batch=args.batch, stage2_kimg=s2,
                           stage3_kimg=s3, n_train=args.n_train, n_val=args.n_val,
                           stage1_epochs=args.stage1_epochs, mapper_epochs=args.mapper_epochs,
                           ckpt_every=args.ckpt_every, image_every=args.image_every, log_every=args.log_every,
                           workers=args.workers, keep=args.keep, seed=args.seed, resume=args.resume,
                           init=args.init, compile=args.compile, amp=args.amp, cuda_graphs=args.cuda_graphs,
                           vgg_weights=args.vgg_weights, model_overrides=overrides, progress=args.progress)


def run(args) -> int:
    from .checkpoint import CheckpointError
    from ..zoo.step.pipeline import run_pipeline
    from .distributed import is_main_process
    from .trainer import NonFiniteLossError, TrainingInterrupted

    main = True
    try:
        opts = options_from_args(args)
        summary = run_pipeline(opts)
        main = is_main_process()
    except NonFiniteLossError as err:
        if is_main_process():
            print(f"fastep train: {err}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:
        if is_main_process():
            print(f"fastep train: {err}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError) as err:
        print(f"fastep train: error: {err}", file=sys.stderr)
        return 1
    finally:
        _shutdown()
    if main:
        print(f"fastep train: done ({summary.get('wall_s', 0):.1f} s); metrics: {opts.out}/metrics.json"
              + (f"; checkpoint for eval: {summary['final_checkpoint']}" if summary.get("final_checkpoint") else ""))
    return 0


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
