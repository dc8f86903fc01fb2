"""The install the README promises: what pyproject.toml pulls in, and that CI runs the README's commands."""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s;<>=!~\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_default_install_brings_no_second_set_of_cuda_libraries():
    """faiss-gpu pulled its own CUDA 12 runtimes (1.4 GB) beside torch's; the GPU search runs in torch."""
    names = _names(PROJECT["dependencies"])
    assert "faiss-cpu" in names and "faiss-gpu" not in names
    assert not any(n.startswith("nvidia-") or n.startswith("cupy") for n in names)
    for extra, requirements in PROJECT["optional-dependencies"].items():
        assert "faiss-gpu" not in _names(requirements), extra


def test_torch_is_left_to_the_installer():
    """No version pins on torch/torchvision: an index chosen by the user (the CPU build) satisfies them."""
    for requirement in PROJECT["dependencies"]:
        if _names([requirement]) & {"torch", "torchvision"}:
            assert re.fullmatch(r"torch(vision)?", requirement.strip()), requirement


def test_the_readme_gives_the_cpu_only_install_before_the_package_install():
    lines = [line.strip() for line in README.splitlines()]
    cpu = next(i for i, line in enumerate(lines) if line.startswith("pip install torch torchvision")
               and CPU_INDEX in line)
    package = next(i for i, line in enumerate(lines) if line == 'pip install ".[test]"' and i > cpu)
    assert package > cpu


def test_ci_runs_the_readme_install_and_test_commands_and_the_linters():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line.strip() for line in ci if line.strip() and not line.lstrip().startswith("#")]
    readme_lines = {line.strip() for line in README.splitlines()}
    install = next(c for c in commands if c.startswith("pip install"))
    test = next(c for c in commands if c.startswith("pytest"))
    assert install in readme_lines and test in readme_lines
    assert "ruff check ." in commands and "mypy" in commands
    assert commands.index(install) < commands.index(test)


def test_the_test_extra_holds_the_tools_ci_runs():
    names = _names(PROJECT["optional-dependencies"]["test"])
    assert {"pytest", "ruff", "mypy", "onnx", "onnxruntime"} <= names
