"""Run ``fastep`` with a signal sent from inside a chosen function (a test helper, not a test).

    python _hooked.py MODULE FUNC SIGNALS MODE -- fastep arguments...

``FUNC`` of ``MODULE`` (``Class.method`` allowed) is wrapped: its first calls send the signals
of ``SIGNALS`` (comma-separated names, one per call, e.g. ``SIGINT,SIGINT``) to this process.
``MODE`` ``wait``: after sending, sleep (the interrupt lands inside the function, as it would
in a long stage); ``go``: carry on (a stage that stops at its next log interval).
"""
import importlib
import os
import signal
import sys
import time


def main():
    module, func, sigs, mode = sys.argv[1:5]
    assert sys.argv[5] == "--"
    argv = sys.argv[6:]
    sigs = [getattr(signal, s) for s in sigs.split(",")]
    obj = importlib.import_module(module)
    owner, name = obj, func
    if "." in func:
        cls, name = func.split(".")
        owner = getattr(obj, cls)
    orig = getattr(owner, name)
    calls = [0]

    def hooked(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= len(sigs):
            os.kill(os.getpid(), sigs[calls[0] - 1])
            if mode == "wait":
                time.sleep(60)
        return orig(*args, **kwargs)

    setattr(owner, name, hooked)
    from fastep.cli import main as fastep_main

    sys.exit(fastep_main(argv))


if __name__ == "__main__":
    main()
