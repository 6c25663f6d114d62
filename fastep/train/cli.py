"""``fastep train``: one stage of a zoo system, or all of them (the main job).

    fastep train                                  # StEP, all stages, built-in data, device preset
    fastep train --stage 2 --data DIR --out runs/x --resolution 256 --batch 8 --kimg 250
    fastep train --preset cpu --set model.g_nf=16 --set lr_decay_start=0.5 --print-config
    fastep train --resume --out runs/x            # continue where an interrupted run stopped
    torchrun --nproc_per_node 8 -m fastep train --stage 3 --data DIR --out runs/x   # DDP

The run configuration is resolved once: the preset (``paper`` on CUDA, ``cpu`` otherwise,
unless ``--preset``), then every flag given and every ``--set KEY=VALUE`` (a run-config key,
``model.<field>`` for the networks); ``--print-config`` prints the result and exits.  An unknown
system, preset or key is a one-line error listing the valid ones.

OUT holding a run of the same stages is refused unless --resume (continue) or --overwrite
(start again) is given.  The main job (--stage all) ends with an evaluation on the validation
split (what `fastep eval` computes; --no-eval skips it) and a summary of where everything is.

Exit status: 0 done, 1 bad arguments / missing inputs, 3 a NaN/inf loss stopped training,
130 stopped by SIGTERM / Ctrl-C after writing a checkpoint (continue with --resume).
"""
from __future__ import annotations

import argparse
import sys

STAGES = ("1", "2", "3", "mapper", "all")

# flag (argparse dest) -> run-config key; a flag left out is no override (the preset decides)
_FLAG_KEYS = {
    "data": "data", "approach": "approach", "out": "out", "resolution": "model.resolution", "batch": "batch",
    "stage2_kimg": "stage2_kimg", "stage3_kimg": "stage3_kimg", "device": "device", "resume": "resume",
    "init": "init", "seed": "seed", "n_train": "n_train", "n_val": "n_val", "stage1_epochs": "stage1_epochs",
    "mapper_epochs": "mapper_epochs", "ckpt_every": "ckpt_every", "image_every": "image_every",
    "log_every": "log_every", "keep": "keep", "workers": "workers", "compile": "compile", "amp": "amp",
    "cuda_graphs": "cuda_graphs", "vgg_weights": "vgg_weights", "progress": "progress",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n", 2)[2]
    p.add_argument("--system", default="step", help="the zoo system to train (default step; see fastep.zoo)")
    p.add_argument("--preset", default=None, help="run preset: paper or cpu (default: paper on CUDA, else cpu)")
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any run-config key (model.<field> for the networks); repeatable")
    p.add_argument("--print-config", action="store_true", help="print the resolved run configuration and exit")
    p.add_argument("--stage", default="all",
                   help="which stage to train (default: all; StEP: 1, 2, 3, mapper; deepi2i: biggan, transfer)")
    p.add_argument("--data", default=None,
                   help="pix2pix AB folder (train/, val/) or A/ + B/ folders, or 'builtin' (default): "
                        "the generated shapes->styles set, made once under OUT/data")
    p.add_argument("--approach", default=None,
                   help="loss configuration: ours_v1..ours_v4, bicycle_v1, bicycle_v2 (default ours_v3)")
    p.add_argument("--out", default=None, help="output folder (default runs/fastep)")
    # StEP's preset values, read from the presets so the help never goes stale
    from ..zoo.step.config import _DEFAULT_KIMG
    from ..zoo.step.run_config import PRESETS as STEP_PRESETS

    cpu = STEP_PRESETS["cpu"]
    p.add_argument("--resolution", type=int, default=None,
                   help=f"image size (StEP: paper 256, cpu {cpu['model']['resolution']})")
    p.add_argument("--batch", type=int, default=None,
                   help=f"batch per process (StEP: paper 8, cpu {cpu['batch']})")
    p.add_argument("--kimg", type=float, default=None,
                   help=f"length of the stage in thousands of images (StEP paper: {_DEFAULT_KIMG[2]:g} for "
                        f"stage 2, {_DEFAULT_KIMG[3]:g} for stage 3; cpu {cpu['stage2_kimg']:g} and "
                        f"{cpu['stage3_kimg']:g}); with --stage all it sets stage 3 and stage 2 gets "
                        f"{_DEFAULT_KIMG[2]:g}/{_DEFAULT_KIMG[3]:g} of it")
    p.add_argument("--stage2-kimg", type=float, default=None, help="stage-2 length with --stage all")
    p.add_argument("--stage3-kimg", type=float, default=None, help="stage-3 length with --stage all")
    p.add_argument("--device", default=None, help="auto (default: cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue from the newest checkpoint in OUT (finished stages are skipped)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the outputs of the stages to run from OUT first (the built-in data cache is kept)")
    p.add_argument("--no-eval", dest="eval", action="store_false",
                   help="skip the evaluation of the finished main job (--stage all)")
    p.add_argument("--init", default=None,
                   help="checkpoint to start a single stage from (default: OUT/stage{N-1}/final.pt)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None, help="built-in set: training images")
    p.add_argument("--n-val", type=int, default=None, help="built-in set: validation images")
    p.add_argument("--stage1-epochs", type=int, default=None, help="triplet pre-training epochs")
    p.add_argument("--mapper-epochs", type=int, default=None, help="IMLE mapper epochs")
    p.add_argument("--ckpt-every", type=float, default=None, help="kimg between checkpoints")
    p.add_argument("--image-every", type=float, default=None, help="kimg between sample grids")
    p.add_argument("--log-every", type=int, default=None, help="steps between loss checks / log lines")
    p.add_argument("--keep", type=int, default=None, help="checkpoints kept per stage (default 3)")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers per process")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile the step (paper preset: on)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--amp", dest="amp", action="store_true", default=None, help="bf16 autocast (paper preset: on)")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--cuda-graphs", action="store_true", default=None, help="capture the step in CUDA graphs")
    p.add_argument("--vgg-weights", default=None,
                   help="perceptual-loss VGG weights: auto (default), imagenet, random or a file")
    p.add_argument("--width", default=None,
                   help="model widths g_nf,e_nf,d_nf (e.g. 16,16,16 for quick runs; default the paper's)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no tqdm bar")


def overrides_from_args(args) -> dict:
    """The flags and ``--set`` pairs given on the command line, as run-config keys."""
    from ..zoo.step.run_config import parse_value

    out = {key: getattr(args, dest) for dest, key in _FLAG_KEYS.items() if getattr(args, dest, None) is not None}
    if args.stage != "all":  # all: the system's own stages (its run config's default)
        out["stages"] = (args.stage,)
    if args.kimg is not None:
        if args.kimg <= 0:
            raise ValueError(f"--kimg must be > 0, got {args.kimg}")
        if getattr(args, "system", "step") != "step":
            out["kimg"] = args.kimg  # a one-stage system: one length
        elif args.stage == "2":
            out["stage2_kimg"] = args.kimg
        elif args.stage == "3":
            out["stage3_kimg"] = args.kimg
        elif args.stage == "all":
            out.setdefault("stage3_kimg", args.kimg)
            out.setdefault("stage2_kimg", args.kimg * 250.0 / 700.0)
    if getattr(args, "eval", True) is False and getattr(args, "system", "step") != "step":
        from .. import zoo

        if zoo.get(args.system).extra.get("evaluates_in_train"):
            out["eval"] = False  # a system whose train() ends with its own evaluation (run-config key eval)
    if args.width:
        try:
            g, e, d = (int(x) for x in str(args.width).split(","))
        except ValueError:
            raise ValueError(f"--width: expected three integers g_nf,e_nf,d_nf, got {args.width!r}") from None
        out.update({"model.g_nf": g, "model.e_nf": e, "model.d_nf": d})
    if args.resolution is not None and args.resolution < 16:
        raise ValueError(f"--resolution must be >= 16, got {args.resolution}")
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def options_from_args(args):
    """The resolved, validated run configuration of ``fastep train ARGS``."""
    from .. import zoo

    system = zoo.get(args.system)
    if system.run_config is None or system.train is None:
        trainable = [s for s in zoo.systems() if zoo.get(s).train is not None]
        raise ValueError(f"system {args.system!r} has no training entry yet; trainable: {', '.join(trainable)}")
    return system.run_config(args.preset, overrides_from_args(args))


def run(args) -> int:
    from .. import zoo
    from .checkpoint import CheckpointError
    from .distributed import is_main_process, shutdown_distributed
    from .run_folder import RunFolderError, prepare_run_folder
    from .trainer import NonFiniteLossError, TrainingInterrupted

    main = True
    try:
        opts = options_from_args(args)
        if args.print_config:
            print(opts.to_json())
            return 0
        prepare_run_folder(opts.out, opts.stages, resume=bool(opts.resume),
                           overwrite=getattr(args, "overwrite", False))
        summary = zoo.get(args.system).train(opts)
        main = is_main_process()
    except NonFiniteLossError as err:
        if is_main_process():
            print(f"fastep train: {err}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:
        if is_main_process():
            print(f"fastep train: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt as err:
        # Ctrl-C / SIGTERM in a stage that has no checkpoint of its own, or a second Ctrl-C
        if is_main_process():
            stage = getattr(err, "stage", None)
            where = f" during stage {stage}" if stage else ""
            print(f"fastep train: aborted{where} ({err or 'Ctrl-C'}); finished stages are kept: run the same "
                  "command with --resume to continue", file=sys.stderr, flush=True)
        return 130
    except RunFolderError as err:
        print(f"fastep train: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError) as err:
        print(f"fastep train: error: {err}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    if main:
        print(f"fastep train: done ({summary.get('wall_s', 0):.1f} s); metrics: {opts.out}/metrics.json"
              + (f"; checkpoint for eval: {summary['final_checkpoint']}" if summary.get("final_checkpoint") else ""))
        if getattr(args, "eval", True) and args.stage == "all" and summary.get("final_checkpoint") \
                and args.system == "step":  # other systems evaluate inside their own train()
            from .summary import evaluate_run, format_summary

            try:
                report = evaluate_run(summary, progress=opts.progress)
            except KeyboardInterrupt:
                print("fastep train: evaluation interrupted; the trained model is complete: "
                      f"fastep eval {summary['final_checkpoint']} --data {summary.get('data')}", file=sys.stderr)
                return 130
            print(format_summary(summary, report))
    return 0
