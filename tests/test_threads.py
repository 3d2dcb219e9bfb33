"""fedsim's thread policy: OpenMP threads sleep rather than spin while they wait (a busy core must
not stall the others: docs/performance.md, "Quiet and with one core busy")."""

import os
import subprocess
import sys


def _policy(env: dict) -> str:
    code = "import fedsim, os; print(os.environ['OMP_WAIT_POLICY'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_import_sets_a_passive_wait_policy_and_a_user_value_wins():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy(env).strip() == "PASSIVE"
    assert _policy(env | {"OMP_WAIT_POLICY": "ACTIVE"}).strip() == "ACTIVE"


def test_the_cli_sets_it_before_torch_loads():
    code = ("import sys; import fedsim.cli; import os; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "False"]  # set, and torch not yet loaded: OpenMP will read it
