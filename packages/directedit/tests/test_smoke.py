"""The smallest end-to-end run: needs only directedit and its declared dependencies (no transformers).

A toy-flux architecture with random weights (the "ci" preset) edits a 32×32 image: the snapped reconstruction
is exact, the NFE is 2N, and the naive baseline runs on the same inversion.
"""

from __future__ import annotations

import torch

import directedit
from directedit import DirectEditConfig, baselines, direct_edit


def test_smoke_direct_edit_on_a_random_toy():
    from directedit._toy import toy_bundle

    model = toy_bundle("toy-flux", random_init=True, preset="ci").adapter()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    config = DirectEditConfig(num_steps=4, injection=directedit.ValueInjection(steps=1))
    result = direct_edit(model, image, "a red circle on a blue background",
                         "a green circle on a blue background", config=config)
    assert result.nfe.calls == 8 and len(result.images) == 1 and result.images[0].shape == (3, 32, 32)
    assert torch.equal(result.reconstruction, result.cache.z0)
    assert float((result.reconstruction_image[0] - image[0]).abs().max()) < 1e-5
    naive = baselines.naive_euler(model, result.cache.z0, None, model.encode_prompt(["a green circle"]),
                                  cache=result.cache)
    assert naive.nfe.calls == 8 and not torch.equal(naive.reconstruction, result.cache.z0)
