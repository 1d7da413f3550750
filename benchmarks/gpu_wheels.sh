#!/usr/bin/env bash
# Download the Python wheels that the GPU check (benchmarks/gpu_check.sh) carries to the GPU
# machine, which reaches no package index. Run it here, once, from any folder:
#
#     benchmarks/gpu_wheels.sh            # -> .whl/ (ignored: /.whl/ in .git/info/exclude)
#
# Which wheels: the runtime dependencies in pyproject.toml and theirs (markers evaluated for
# CPython 3.12 on Linux x86_64, extras followed), at the versions installed in this checkout's
# .venv (what `pip list --format=freeze` shows), minus
#   * what the GPU machine's image already holds (the package list of the nvidia-h200 kind,
#     /work/.library/device/KINDS.md, "Python packages already there", read 2026-11-17), and
#   * what ome-zarr pulls in but bigrestore never imports: fsspec[s3] (s3fs, aiobotocore,
#     botocore, jmespath, aioitertools; botocore alone is ~14 MB) and rangehttpserver (its
#     `ome_zarr view` server). Checked: importing the CLI, run, convert, train, the tests'
#     conftest and ome_zarr.{io,reader,writer,format} loads none of them.
# typing-extensions is carried although the image has it: pydantic 2.12 needs >= 4.14.1 and the
# image's version is not recorded. The project itself travels as source (the checkout is the
# working tree there) and is imported with PYTHONPATH=. (no setuptools build, no download).
#
# Each wheel is fetched with `pip download --no-deps --only-binary=:all:` for cp312 and the
# manylinux tags of the device README; a package without such a wheel is named and the script
# exits 1. It prints every wheel with its size and the total, and exits 1 when the total is
# over ${MAX_MIB:-40} MiB (the device tool carries 64 MiB in all: the checkout, gpu_data/ and
# .whl/ together).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$repo/.whl}
python=${PYTHON:-$repo/.venv/bin/python}
max_mib=${MAX_MIB:-40}

requirements=$("$python" - "$repo/pyproject.toml" <<'EOF'
import importlib.metadata as md
import re
import sys
import tomllib

from packaging.requirements import Requirement

ON_GPU_MACHINE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
NEVER_IMPORTED = {"s3fs", "aiobotocore", "botocore", "jmespath", "aioitertools", "rangehttpserver"}
CARRY_ANYWAY = {"typing-extensions"}
ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
}


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def wanted(req, extras):
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**ENV, "extra": e}) for e in (extras or {""}))


with open(sys.argv[1], "rb") as f:
    todo = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
versions, seen = {}, set()
while todo:
    req = todo.pop()
    name = norm(req.name)
    key = (name, frozenset(req.extras))
    if key in seen or name in NEVER_IMPORTED:
        continue
    seen.add(key)
    try:
        dist = md.distribution(req.name)
    except md.PackageNotFoundError:
        sys.exit(f"{req.name} is not installed in this venv: install the project first")
    versions[name] = dist.version.split("+")[0]
    todo += [r for r in map(Requirement, dist.requires or []) if wanted(r, req.extras)]
carry = sorted(n for n in versions if n not in ON_GPU_MACHINE or n in CARRY_ANYWAY)
print("\n".join(f"{n}=={versions[n]}" for n in carry))
EOF
)

rm -rf "$dest"
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
  manylinux1_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 \
  manylinux_2_35_x86_64; do
  platforms+=(--platform "$p")
done
missing=()
for req in $requirements; do
  if ! "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$dest" "$req" >/dev/null 2>&1; then
    missing+=("$req")
  fi
done
echo "wheels in $dest (cp312, manylinux x86_64 or pure Python):"
( cd "$dest" && ls -l -- *.whl | awk '{printf "  %8.2f MiB  %s\n", $5 / 1048576, $9}' )
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
printf 'total: %.2f MiB in %d wheels (limit %s MiB)\n' "$(echo "$total / 1048576" | bc -l)" \
  "$(ls "$dest"/*.whl | wc -l)" "$max_mib"
if [ ${#missing[@]} -gt 0 ]; then
  echo "no cp312 manylinux x86_64 (or pure Python) wheel for: ${missing[*]}" >&2
  exit 1
fi
if [ "$total" -gt $((max_mib * 1048576)) ]; then
  echo "the wheels exceed $max_mib MiB" >&2
  exit 1
fi
