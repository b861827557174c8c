#!/usr/bin/env bash
# Install the SER service (non-editable) into a virtual environment: torch first, then the project.
#
# Usage: docker/install.sh VENV [EXTRAS]
#   VENV     the virtual environment folder; created with $PYTHON when it has no bin/python yet
#   EXTRAS   optional extras of pyproject.toml, comma-separated (for example "onnx")
#
# Environment:
#   TORCH_VERSION    torch release to install (default 2.13.0). A torch already importable in VENV at this
#                    release (any local label: +cpu, +cu128) is kept, so a second run skips the download.
#   TORCH_INDEX      index URL for torch (default: the PyTorch CPU index). Set it empty to use pip's own
#                    index and configuration: PyPI's default Linux wheel is the CUDA build.
#   PYTHON           interpreter that creates VENV (default python3)
#   PROJECT_DIR      the project to install (default: the folder above this script)
#   INSTALL_PROJECT  set to 0 to install torch only (the Dockerfile does this for a cacheable layer)
#
# Used by docker/Dockerfile and by docker/smoke_test.sh, so CI runs the exact steps the image runs.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 VENV [EXTRAS]" >&2
    exit 2
fi

venv=$1
extras=${2:-}
project_dir=${PROJECT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
torch_version=${TORCH_VERSION:-2.13.0}
torch_index=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
python=${PYTHON:-python3}
install_project=${INSTALL_PROJECT:-1}

# Wheels in docker/wheels/ are offered before any index, and certificates in docker/build-ca/ are
# trusted for HTTPS (a TLS-inspecting proxy); both folders are empty in the repository.
shopt -s nullglob
local_wheels=("$project_dir"/docker/wheels/*.whl)
if ((${#local_wheels[@]})); then
    export PIP_FIND_LINKS="$project_dir/docker/wheels"
    echo "install.sh: offering ${#local_wheels[@]} local wheel(s) from docker/wheels"
fi
extra_ca=("$project_dir"/docker/build-ca/*.crt)
if ((${#extra_ca[@]})); then
    cat "${extra_ca[@]}" >"${TMPDIR:-/tmp}/ser-build-ca.pem"
    export PIP_CERT="${TMPDIR:-/tmp}/ser-build-ca.pem"
    echo "install.sh: trusting ${#extra_ca[@]} certificate file(s) from docker/build-ca"
fi
shopt -u nullglob

if [[ ! -x $venv/bin/python ]]; then
    echo "install.sh: creating virtual environment $venv with $python"
    "$python" -m venv "$venv"
fi
vpython=$venv/bin/python

# Exit 0 when torch imports and its release (local label stripped) equals $1.
torch_is() {
    "$vpython" - "$1" <<'EOF' 2>/dev/null
import sys

import torch

sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
EOF
}

if torch_is "$torch_version"; then
    echo "install.sh: torch $torch_version already installed, keeping it"
else
    index_args=()
    if [[ -n $torch_index ]]; then
        index_args=(--index-url "$torch_index")
    fi
    echo "install.sh: installing torch==$torch_version${torch_index:+ from $torch_index}"
    "$vpython" -m pip install "${index_args[@]}" "torch==$torch_version"
fi

if [[ $install_project != 0 ]]; then
    target=$project_dir
    if [[ -n $extras ]]; then
        target="${project_dir}[${extras}]"
    fi
    echo "install.sh: installing $target"
    # The torch pin keeps pip's resolver from swapping the wheel chosen above for another build.
    "$vpython" -m pip install "$target" "torch==$torch_version"
    "$vpython" -m pip check
fi

"$vpython" -c 'import torch; print(f"install.sh: torch {torch.__version__}, CUDA build: {torch.version.cuda}")'
