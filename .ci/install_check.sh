#!/usr/bin/env bash
# A user's install: a fresh virtual environment with torch, then plain `pip install <checkout>`
# (pip's default isolated build, which cannot see torch, so the wheel carries the C++ sources),
# then fastep._C is built on first use, once, even by two processes started together, and a C++
# op runs.  Takes minutes (torch into a new venv, one compile): run by .ci/run, not by pytest.
# Usage: .ci/install_check.sh [CHECKOUT]   (FASTEP_INSTALL_CHECK_DIR: the scratch folder;
# FASTEP_INSTALL_CHECK_VENV: reuse a virtual environment that already holds torch)
set -euo pipefail
checkout=$(cd "${1:-$(dirname "$0")/..}" && pwd)
work=${FASTEP_INSTALL_CHECK_DIR:-$(mktemp -d)}
mkdir -p "$work"
venv=${FASTEP_INSTALL_CHECK_VENV:-$work/venv}
export FASTEP_CACHE="$work/cache"   # a fresh build cache: the first use must compile
unset PYTHONPATH
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip uninstall -q -y fastep >/dev/null 2>&1 || true
"$venv/bin/python" -m pip install -q torch==2.14.1
"$venv/bin/python" -m pip install -q "$checkout" 2>"$work/pip.err" || { cat "$work/pip.err"; exit 1; }
cd "$work"  # away from the checkout: the installed package is what runs
py="$venv/bin/python"
"$py" - <<'PY'
import importlib.util, sys
import fastep
assert "site-packages" in fastep.__file__, fastep.__file__
spec = importlib.util.find_spec("fastep._C")
assert spec is None, f"the isolated build was not expected to compile fastep._C ({spec.origin})"
assert importlib.util.find_spec("fastep.csrc") is not None, "the wheel lacks fastep/csrc"
print("installed without fastep._C, sources shipped: ok")
PY
# two processes at once: one builds, the other waits and loads the result
probe='
import torch
from fastep import _ext
from fastep.ops.mining import pair_sqdist
assert _ext.has_C(), _ext.C_error()
assert _ext.backend_for("pair_sqdist", "cpu") == "cpp"
x, y = torch.randn(7, 33), torch.randn(5, 33)
i, j = torch.randint(0, 7, (11,)), torch.randint(0, 5, (11,))
got = pair_sqdist(x, y, i, j)
exp = (x.double()[i] - y.double()[j]).square().sum(1)
torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-12)
print("C++ op pair_sqdist ran: ok")
'
"$py" -c "$probe" 2>"$work/a.err" & a=$!
"$py" -c "$probe" 2>"$work/b.err" & b=$!
wait $a || { cat "$work/a.err"; exit 1; }
wait $b || { cat "$work/b.err"; exit 1; }
cat "$work/a.err" "$work/b.err"
builds=$(cat "$work/a.err" "$work/b.err" | grep -c "building it once" || true)
[ "$builds" = 1 ] || { echo "expected exactly one build, saw $builds"; exit 1; }
"$venv/bin/fastep" info | grep "fastep._C" | tee "$work/info.txt"
grep -q "built on first use at $FASTEP_CACHE" "$work/info.txt"
# a third process loads the cached build silently
"$py" -c "$probe" 2>"$work/c.err"
! grep -q "building" "$work/c.err" || { cat "$work/c.err"; exit 1; }
echo "install check passed ($work)"
