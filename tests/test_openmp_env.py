"""The OpenMP wait settings the package applies before torch loads (dsgl_cli/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dsgl_cli import openmp_wait_defaults


def test_unset_environment_gets_passive_policy_with_a_short_spin():
    env: dict[str, str] = {}
    openmp_wait_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}


@pytest.mark.parametrize("given", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "passive"},
                                   {"GOMP_SPINCOUNT": "300000"}])
def test_a_users_choice_is_left_alone(given):
    env = dict(given)
    openmp_wait_defaults(env)
    assert env == given        # an ACTIVE policy must not be cut short by our spin count


@pytest.mark.slow
def test_importing_the_package_sets_them_before_torch_is_loaded():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import sys, os, dsgl_cli; "
            "print('torch' in sys.modules, os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "PASSIVE", "1000"]
