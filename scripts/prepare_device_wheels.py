"""Fill ``.whl/`` with the wheels a lent GPU machine needs to run ``rlhf sft|reward|ppo``: those its image lacks.

    python scripts/prepare_device_wheels.py      # here, where pip reaches PyPI; then docs/gpu-check.md

Why. The GPU machine reaches no package registry, so ``pip install -e .`` cannot run there; its image
(Python 3.12 on x86-64 Linux) already holds torch 2.11 built for CUDA 13, transformers, accelerate, PEFT,
pyarrow and about two hundred more (``IMAGE``), but not TRL, bitsandbytes or datasets. Carrying wheels of
only what is missing, installed with ``--no-deps``, keeps the image's CUDA torch (a torch wheel from here would
be another build, and too large to carry) and fits the 64 MiB that travels with a device command.

What. ``ROOTS`` are the distributions the training stages import that the image lacks; the wheels are their
closure over ``Requires-Dist`` (the device's Python and platform decide the markers; extras are not followed),
less what the image has: trl, datasets, bitsandbytes, dill and multiprocess today. Each at the version
``constraints.txt`` pins (the one CI tests), as the wheel for CPython 3.12 on manylinux x86-64. bitsandbytes'
wheel (41 MiB) carries its CUDA 11.8-13.2, ROCm and XPU libraries; it fits as it is (the script checks the total),
so it travels unmodified.

The script prints the total that would travel (tracked and untracked files, and ``.whl``) and the device command.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / ".whl"
LIMIT_MIB = 64  # what travels with one device command: the working tree and the carried paths
SITE = "/tmp/site"

# What `rlhf sft|reward|ppo` import that the image has not: rlhf/arguments.py imports trl, rlhf/models.py
# bitsandbytes, rlhf/data.py datasets. Everything else they import (torch, transformers, peft, accelerate,
# yaml, tqdm, safetensors, numpy, ...) is in IMAGE.
ROOTS = ("trl", "bitsandbytes", "datasets")

# The device image's Python packages, as a session read them there on 2026-11-17 (the device tool's KINDS.md,
# "Python packages already there"). Versions seen: torch 2.11.0+cu130, transformers 5.17.0, accelerate 1.15.0,
# huggingface_hub 1.33.0, numpy 2.5.2, safetensors 0.8.0, tokenizers 0.23.2; gpu_check.py's pre-flight prints
# the rest.
IMAGE = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
    llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
    multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
    nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
    patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
    py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
    setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
    torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
    typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
    """.split()  # noqa: SIM905 (a list literal of 200 quoted names would be harder to check against KINDS.md)
)

# The device's interpreter and platform, for pip and for the dependency markers.
PYTHON_VERSION = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (35, 34, 31, 28, 27, 24, 17)] + ["manylinux2014_x86_64"]
MARKERS = {
    "python_version": PYTHON_VERSION,
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}

DEVICE_COMMAND = (
    f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target {SITE} "
    f".whl/*.whl && export PYTHONPATH={SITE}:$PWD PYTHONUNBUFFERED=1 || exit; "
    "python3 benchmarks/gpu_check.py --out $OUT"
)


def normalize(name: str) -> str:
    """A distribution's name as PyPI compares names (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path = REPO / "constraints.txt") -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of the constraints file."""
    found = {}
    for line in constraints.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            found[normalize(name)] = version.strip()
    return found


def needed(requires: Callable[[str], list[str]], roots: tuple[str, ...] = ROOTS) -> list[str]:
    """The roots and everything they require on the device, less what the image has (sorted, normalized).

    ``requires(name)`` gives a distribution's ``Requires-Dist`` lines (``importlib.metadata.requires`` for the
    installed one, or a downloaded wheel's METADATA).
    """
    from packaging.requirements import Requirement

    wanted: list[str] = []
    queue = [normalize(root) for root in roots]
    while queue:
        name = queue.pop()
        if name in wanted or name in IMAGE:
            continue
        wanted.append(name)
        for line in requires(name):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(MARKERS):
                queue.append(normalize(requirement.name))
    return sorted(wanted)


def _wheel_requires(name: str, version: str) -> list[str]:
    """``Requires-Dist`` of the wheel of ``name``, downloaded into ``.whl`` for the device's Python and platform."""
    platforms = [item for platform in PLATFORMS for item in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms, "-d", str(WHEELS)]
    subprocess.run([*command, f"{name}=={version}"], check=True)
    (wheel,) = [w for w in WHEELS.glob("*.whl") if normalize(w.name.split("-")[0]) == name]
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(metadata).decode())
    return message.get_all("Requires-Dist") or []


def travelling_mib() -> float:
    """MiB that travel with a device command carrying ``.whl``: tracked and untracked-not-ignored files, and it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    tree = sum((REPO / name).stat().st_size for name in listed.split("\0") if name and (REPO / name).is_file())
    wheels = sum(path.stat().st_size for path in WHEELS.glob("*.whl"))
    return (tree + wheels) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("*.whl"):  # one version of each: two would stop the install on the device
        old.unlink()
    versions = pins()

    def requires(name: str) -> list[str]:
        if name not in versions:
            sys.exit(f"prepare_device_wheels: {name} is needed on the device but constraints.txt pins no version")
        return _wheel_requires(name, versions[name])

    names = needed(requires)
    total = travelling_mib()
    print(f"{len(names)} wheels in {WHEELS}: " + ", ".join(f"{n}=={versions[n]}" for n in names))
    print(f"travels with a device command carrying .whl: {total:.1f} MiB (limit {LIMIT_MIB})")
    if total > LIMIT_MIB:
        sys.exit(f"prepare_device_wheels: {total:.1f} MiB is over the {LIMIT_MIB} MiB that travels")
    print(f"device command (carry: .whl):\n  {DEVICE_COMMAND}")


if __name__ == "__main__":
    main()
