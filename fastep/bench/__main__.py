"""``python -m fastep.bench ...`` = ``fastep bench ...``; ``--_probe JSON`` is the worker mode of
the subprocess max-batch probes."""
import sys

if len(sys.argv) == 3 and sys.argv[1] == "--_probe":
    from fastep.bench.memory import probe_main

    sys.exit(probe_main(sys.argv[2]))

from fastep.cli import main  # noqa: E402

sys.exit(main(["bench", *sys.argv[1:]]))
