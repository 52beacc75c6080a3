"""Worker of test_kernels.py (needs TRITON_INTERPRET=1 in its environment, set before flowkernels is imported):
prints the relative error between the Triton and the torch backend on a tiny SD3 forward (fp32)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from t5lin_helpers import make_sd3, sd3_inputs

import flowkernels
from t5_linearize import LinearizeConfig, linearize


def main() -> None:
    torch.set_num_threads(1)
    # random (non-identity) convs, as after fine-tuning, so the fused key-norm + conv path is exercised
    model = linearize(make_sd3(), LinearizeConfig(conv_init="default"), generator=torch.Generator().manual_seed(0))
    model.eval()
    inputs = sd3_inputs()
    used = []
    with torch.no_grad():
        ref = model(**inputs, joint_attention_kwargs={"ttt_backend": "torch"})[0]
        used.append(flowkernels.last_backend())
        out = model(**inputs, joint_attention_kwargs={"ttt_backend": "triton"})[0]
        used.append(flowkernels.last_backend())
    rel = float((out - ref).norm() / ref.norm())
    print(json.dumps({"rel": rel, "backends": used}))


if __name__ == "__main__":
    main()
