"""Adapters: flowcore.sample through each adapter reproduces the stock pipeline's latents; bad input errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from flowcore.adapters import Conditioning, ControlInput, ModelNotFoundError, adapter_from_pipe, load_model
from flowcore.guidance import guided
from flowcore.sampling import sample
from flowcore.testing import qwen_edit_resolution, tiny_pipeline

SIZE, STEPS, PROMPT = 64, 3, "a red square on a blue background"


def run_flowcore(model, *, scale, guidance=None, sigmas=None, reference=None, seed=0, cond_kw=None):
    cond = model.encode_prompt([PROMPT], **(cond_kw or {}))
    uncond = model.encode_prompt([""], **(cond_kw or {})) if scale != 1.0 else None
    sched = model.schedule(STEPS, height=SIZE, width=SIZE, sigmas=sigmas)
    x = model.prepare_noise(1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    pred = guided(model, cond, uncond=uncond, scale=scale, guidance=guidance, reference=reference)
    with torch.no_grad():
        return sample(pred, x, sched)


def assert_close(ours, ref, tol=1e-5):
    assert ours.shape == ref.shape
    err = (ours.float() - ref.float()).abs().max().item()
    print(f"max abs difference vs the stock pipeline: {err:.3g}")
    assert err <= tol, f"max abs difference {err:.3g} > {tol}"


def test_sd3_sample_matches_pipeline():
    pipe = tiny_pipeline("sd3")
    ref = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=5.0, height=SIZE, width=SIZE,
               generator=torch.Generator().manual_seed(0), output_type="latent").images
    ours = run_flowcore(adapter_from_pipe(pipe), scale=5.0)
    assert_close(ours, ref)


def test_flux_sample_matches_pipeline():
    pipe = tiny_pipeline("flux")
    ref = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=3.5, height=SIZE, width=SIZE,
               generator=torch.Generator().manual_seed(0), output_type="latent").images
    ours = run_flowcore(adapter_from_pipe(pipe), scale=1.0, guidance=3.5, sigmas="pipeline")
    assert_close(ours, ref)


def test_kontext_sample_matches_pipeline():
    pipe = tiny_pipeline("flux-kontext")
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    pil = Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    ref = pipe(image=pil, prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=2.5, height=SIZE, width=SIZE,
               max_area=SIZE * SIZE, _auto_resize=False, generator=torch.Generator().manual_seed(0),
               output_type="latent").images
    model = adapter_from_pipe(pipe)
    from flowcore.images import to_tensor

    reference = model.encode_image(to_tensor(pil))
    ours = run_flowcore(model, scale=1.0, guidance=2.5, sigmas="pipeline", reference=reference)
    assert_close(ours, ref)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_unet_sample_matches_pipeline(kind):
    pipe = tiny_pipeline(kind)
    ref = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5, height=SIZE, width=SIZE,
               generator=torch.Generator().manual_seed(0), output_type="latent").images
    ours = run_flowcore(adapter_from_pipe(pipe), scale=7.5)
    assert_close(ours, ref)


def test_unet_controlnet_sample_matches_pipeline():
    pipe = tiny_pipeline("sd15-controlnet")
    control = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    ref = pipe(PROMPT, image=control, num_inference_steps=STEPS, guidance_scale=7.5, height=SIZE, width=SIZE,
               controlnet_conditioning_scale=0.8, generator=torch.Generator().manual_seed(0),
               output_type="latent").images
    model = adapter_from_pipe(pipe)
    cond, uncond = model.encode_prompt([PROMPT]), model.encode_prompt([""])
    x = model.prepare_noise(1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    pred = guided(model, cond, uncond=uncond, scale=7.5, control=ControlInput(image=control, scale=0.8))
    with torch.no_grad():
        ours = sample(pred, x, model.schedule(STEPS, height=SIZE, width=SIZE))
    assert_close(ours, ref)


def test_controlnet_rows_and_per_row_scale():
    model = adapter_from_pipe(tiny_pipeline("sd15-controlnet"))
    control = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = Conditioning.cat([model.encode_prompt([PROMPT])] * 2)
    with torch.no_grad():
        plain = model.predict(x, 500.0, cond)
        both = model.predict(x, 500.0, cond, control=ControlInput(image=control))
        first = model.predict(x, 500.0, cond, control=ControlInput(image=control, rows=torch.tensor([0])))
        zero_second = model.predict(x, 500.0, cond, control=ControlInput(image=control,
                                                                         scale=torch.tensor([1.0, 0.0])))
    assert torch.allclose(first[0], both[0], atol=1e-6) and torch.allclose(first[1], plain[1], atol=1e-6)
    assert torch.allclose(zero_second[1], plain[1], atol=1e-6)
    assert (both[1] - plain[1]).abs().max() > 1e-4


def test_qwen_edit_sample_matches_pipeline():
    pipe = tiny_pipeline("qwen-image-edit")
    image = Image.new("RGB", (SIZE, SIZE), (200, 30, 30))
    with qwen_edit_resolution(SIZE * SIZE):
        ref = pipe(image=image, prompt=PROMPT, negative_prompt="", true_cfg_scale=4.0, num_inference_steps=STEPS,
                   height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(0), output_type="latent").images
    model = adapter_from_pipe(pipe)
    from flowcore.images import to_tensor

    reference = model.encode_image(to_tensor(image))
    cond = model.encode_prompt([PROMPT], image=image)
    uncond = model.encode_prompt([""], image=image)
    sched = model.schedule(STEPS, height=SIZE, width=SIZE, sigmas="pipeline")
    x = model.prepare_noise(1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))

    def pred(x, i):  # Qwen's pipeline runs cond and uncond as separate calls and rescales the CFG norm
        t = sched.t(i)
        c = model.predict(x, t, cond, reference=reference)
        u = model.predict(x, t, uncond, reference=reference)
        return model.combine_cfg(u, c, 4.0)

    with torch.no_grad():
        ours = sample(pred, x, sched)
    assert_close(ours, ref, tol=1e-4)


def test_encode_decode_round_trip_shapes_and_bad_sizes():
    model = adapter_from_pipe(tiny_pipeline("flux"))
    img = torch.rand(2, 3, SIZE, SIZE)
    z = model.encode_image(img)
    assert z.shape == (2, (SIZE // 16) ** 2, 16)
    assert model.to_grid(z, SIZE, SIZE).shape == (2, 4, SIZE // 8, SIZE // 8)
    assert torch.equal(model.from_grid(model.to_grid(z, SIZE, SIZE)), z)
    assert model.decode_image(z).shape == (2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="multiples of 16"):
        model.encode_image(torch.rand(1, 3, 40, 64))


def test_predict_rejects_nan_device_and_row_mismatch():
    model = adapter_from_pipe(tiny_pipeline("sd3"))
    cond = model.encode_prompt([PROMPT])
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(FloatingPointError, match="NaN"):
        model.predict(torch.full_like(x, float("nan")), 500.0, cond)
    with pytest.raises(ValueError, match="rows"):
        model.predict(torch.randn(2, 4, 8, 8), 500.0, cond)
    with pytest.raises(TypeError, match="floating"):
        model.predict(x.long(), 500.0, cond)


def test_flux_guidance_distilled_needs_guidance():
    model = adapter_from_pipe(tiny_pipeline("flux"))
    with pytest.raises(ValueError, match="guidance="):
        model.predict(torch.randn(1, 16, 16), 500.0, model.encode_prompt([PROMPT]))


def test_unknown_model_offline_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download"):
        load_model("nobody/does-not-exist")
    with pytest.raises(ModelNotFoundError, match=r"model_index\.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="unknown toy"):
        load_model("toy-nothing")


def test_conditioning_rows_cat_and_bind():
    model = adapter_from_pipe(tiny_pipeline("sd3"))
    c = model.encode_prompt(["a", "b", "c"])
    assert len(c) == 3 and c[1].prompts == ("b",) and len(Conditioning.cat([c, c[0]])) == 4
    assert c[torch.tensor([True, False, True])].prompts == ("a", "c")
    bound = model.bind(attention_kwargs=None)
    assert bound.denoiser is model.denoiser and bound is not model


def test_guided_cfg_doubles_per_row_reference_tokens():
    model = adapter_from_pipe(tiny_pipeline("flux-kontext"))
    cond = Conditioning.cat([model.encode_prompt([PROMPT])] * 2)
    uncond = Conditioning.cat([model.encode_prompt([""])] * 2)
    x = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(1))
    sched = model.schedule(2, height=SIZE, width=SIZE)
    pred = guided(model, cond, uncond=uncond, scale=2.0, guidance=3.5, reference=ref, schedule=sched)
    with torch.no_grad():
        out = pred(x, 0)
        one = guided(model, cond[1], uncond=uncond[1], scale=2.0, guidance=3.5, reference=ref[1:],
                     schedule=sched)(x[1:], 0)
    assert torch.allclose(out[1:], one, atol=1e-5)


def test_token_positions_on_a_toy_and_a_clip_tokenizer():
    from flowcore.toy import build

    toy = build("toy-sd3", preset="ci").adapter()
    # [BOS] a large red circle ... : "red" is word 3 -> position 3, "circle" -> 4
    assert toy.token_positions("a large red circle on a blue background", ["red", "circle"]) == [3, 4]
    with pytest.raises(ValueError, match="not found"):
        toy.token_positions("a red circle", ["square"])
    unet = adapter_from_pipe(tiny_pipeline("sd15"))
    pos = unet.token_positions("a red square", ["square"])
    assert len(pos) >= 1 and all(p > 0 for p in pos)
