"""flowcore.images: conversions, validation, padding, mask loading and morphology (scipy as the reference)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from flowcore.images import (
    PadInfo,
    check_image,
    crop,
    dilate,
    erode,
    load_mask,
    mask_to_grid,
    pad_to_multiple,
    to_pil,
    to_tensor,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- to_tensor
def test_to_tensor_rgb_pil_values_and_shape():
    arr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    t = to_tensor(Image.fromarray(arr, "RGB"))
    assert t.shape == (1, 3, 4, 5) and t.dtype == torch.float32
    assert torch.allclose(t[0].permute(1, 2, 0), torch.from_numpy(arr).float() / 255)


def test_to_tensor_rgba_composites_over_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent → white
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black → mid grey
    t = to_tensor(Image.fromarray(rgba, "RGBA"))[0]
    assert torch.allclose(t[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(t[:, 0, 1], torch.ones(3))
    assert torch.allclose(t[:, 1, 0], torch.full((3,), 1 - 128 / 255), atol=1 / 255)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1"])
def test_to_tensor_other_modes_give_rgb(mode):
    base = Image.fromarray((_rand(6, 7, 3).numpy() * 255).astype(np.uint8), "RGB")
    img = base.convert(mode)
    t = to_tensor(img)
    assert t.shape == (1, 3, 6, 7)
    expected = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    assert torch.allclose(t[0], expected, atol=1e-6)
    if mode in ("L", "1"):
        assert torch.equal(t[0, 0], t[0, 1]) and torch.equal(t[0, 1], t[0, 2])


def test_to_tensor_sixteen_bit_grey_is_scaled_by_65535():
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    t = to_tensor(img)
    assert torch.allclose(t[0, 0], torch.from_numpy(arr.astype(np.float32) / 65535), atol=1e-6)


def test_to_tensor_applies_exif_orientation(tmp_path):
    arr = np.zeros((2, 3, 3), dtype=np.uint8)
    arr[0, 0] = 255  # top-left white on a 3-wide, 2-high image
    img = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    t = to_tensor(path)
    assert t.shape == (1, 3, 3, 2)  # displayed upright: 2 wide, 3 high


def test_to_tensor_numpy_tensor_and_lists():
    hw = _rand(5, 6).numpy()
    assert to_tensor(hw).shape == (1, 3, 5, 6)
    assert to_tensor((hw * 255).astype(np.uint8)[..., None].repeat(3, axis=2)).shape == (1, 3, 5, 6)
    chw = _rand(3, 5, 6)
    assert torch.equal(to_tensor(chw), chw[None])
    assert torch.allclose(to_tensor((chw * 255).round().to(torch.uint8)), (chw * 255).round()[None] / 255)
    stacked = to_tensor([Image.new("RGB", (6, 5)), Image.new("RGB", (6, 5), (255, 255, 255))])
    assert stacked.shape == (2, 3, 5, 6) and float(stacked[1].min()) == 1.0
    with pytest.raises(ValueError, match="share one size"):
        to_tensor([Image.new("RGB", (6, 5)), Image.new("RGB", (5, 5))])


def test_to_tensor_missing_path_and_bad_type():
    with pytest.raises(FileNotFoundError, match="not found"):
        to_tensor("/definitely/not/here.png")
    with pytest.raises(TypeError, match="cannot convert"):
        to_tensor(42)


def test_to_pil_round_trip_and_masks():
    x = _rand(2, 3, 8, 9)
    images = to_pil(x)
    assert len(images) == 2 and images[0].mode == "RGB" and images[0].size == (9, 8)
    assert (to_tensor(images) - x).abs().max() <= 0.5 / 255 + 1e-6
    masks = to_pil((_rand(1, 1, 4, 4) > 0.5).float())
    assert masks[0].mode == "L"
    with pytest.raises(ValueError, match="NaN"):
        to_pil(torch.full((1, 3, 2, 2), float("nan")))


# ---------------------------------------------------------------------------------------- check_image
def test_check_image_messages_name_the_fix():
    with pytest.raises(ValueError, match=r"pass pad=True \(pads to 112×144\) or resize to 96×128"):
        check_image(torch.zeros(1, 3, 131, 97), multiple=16)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        check_image(torch.full((1, 3, 4, 4), -0.5))
    with pytest.raises(ValueError, match="divide by 255"):
        check_image(torch.full((1, 3, 4, 4), 200.0))
    with pytest.raises(ValueError, match="NaN"):
        check_image(torch.full((1, 3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="16 channels"):
        check_image(torch.zeros(1, 16, 4, 4), name="latents")
    ok = check_image(torch.rand(1, 3, 32, 32), multiple=16)
    assert ok.shape == (1, 3, 32, 32)


# -------------------------------------------------------------------------------------------- padding
def test_pad_white_bottom_right_and_crop_round_trip():
    x = _rand(2, 3, 13, 10)
    padded, info = pad_to_multiple(x, 8)
    assert padded.shape == (2, 3, 16, 16)
    assert info == PadInfo(13, 10, 16, 16) and (info.bottom, info.right) == (3, 6)
    assert torch.equal(padded[..., :13, :10], x)
    assert float(padded[..., 13:, :].min()) == 1.0 and float(padded[..., :, 10:].min()) == 1.0
    assert torch.equal(crop(padded, info), x)
    latent = torch.zeros(2, 4, 2, 2)  # the 8× grid of the padded image
    assert crop(latent, info).shape == (2, 4, 2, 2)  # ceil(13/8), ceil(10/8)


def test_pad_zero_and_noop():
    mask = torch.ones(1, 1, 5, 5)
    padded, _ = pad_to_multiple(mask, 4, mode="zero")
    assert padded.sum() == 25 and padded.shape == (1, 1, 8, 8)
    same, info = pad_to_multiple(mask, 5)
    assert same is mask and info.is_noop


def test_pad_reflect_matches_numpy_and_handles_wide_pads():
    x = _rand(1, 3, 7, 6)
    padded, _ = pad_to_multiple(x, 8, mode="reflect")  # pads 1 row, 2 columns: plain reflection
    expected = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 1), (0, 2)), mode="reflect")
    assert np.allclose(padded.numpy(), expected)
    tiny = _rand(1, 3, 3, 2)
    wide, info = pad_to_multiple(tiny, 16, mode="reflect")
    assert wide.shape == (1, 3, 16, 16) and torch.equal(crop(wide, info), tiny)
    assert set(wide.flatten().tolist()) <= set(tiny.flatten().tolist())  # only mirrored content


def test_pad_errors():
    with pytest.raises(ValueError, match="positive integer"):
        pad_to_multiple(torch.zeros(1, 3, 4, 4), 0)
    with pytest.raises(ValueError, match="unknown pad mode"):
        pad_to_multiple(torch.zeros(1, 3, 3, 3), 2, mode="edge")


# ---------------------------------------------------------------------------------------------- masks
def _png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def test_load_mask_from_file_alpha_invert_threshold(tmp_path):
    arr = np.zeros((8, 8), dtype=np.uint8)
    arr[2:5, 3:6] = 255
    arr[0, 0] = 100
    path = tmp_path / "m.png"
    path.write_bytes(_png_bytes(Image.fromarray(arr, "L")))
    m = load_mask(path, (8, 8))
    assert m.shape == (1, 1, 8, 8) and m.dtype == torch.float32
    assert m.sum() == pytest.approx(9 + 100 / 255)
    assert torch.equal(load_mask(path, (8, 8), threshold=0.5), (m > 0.5).float())
    assert torch.allclose(load_mask(path, (8, 8), invert=True), 1 - m)
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white everywhere; the alpha carries the selection
    rgba[1:3, 1:3, 3] = 255
    from_alpha = load_mask(Image.fromarray(rgba, "RGBA"), (8, 8))
    assert from_alpha.sum() == 4 and from_alpha[0, 0, 1, 1] == 1


def test_load_mask_missing_file_raises():
    with pytest.raises(FileNotFoundError, match="mask file not found"):
        load_mask("/no/such/mask.png", (8, 8))


def test_load_mask_size_policy():
    small = torch.zeros(4, 6, dtype=torch.bool)
    small[1, 2] = True
    up = load_mask(small, (8, 12))
    assert up.shape == (1, 1, 8, 12) and set(up.unique().tolist()) == {0.0, 1.0}
    assert up[0, 0, 2:4, 4:6].sum() == 4 and up.sum() == 4
    with pytest.raises(ValueError, match=r"mask is 6×4 \(W×H\) but the image is 6×6"):
        load_mask(small, (6, 6))


def test_dilate_single_pixel_square_is_7x7():
    m = torch.zeros(1, 1, 16, 16)
    m[0, 0, 8, 8] = 1
    d = dilate(m, 3)
    assert d.sum() == 49 and d[0, 0, 5:12, 5:12].min() == 1


@pytest.mark.parametrize("px", [1, 2, 4])
def test_dilate_erode_match_scipy(px):
    m = (_rand(2, 1, 19, 23, seed=px) > 0.8).float() * _rand(2, 1, 19, 23, seed=10 + px)
    disk = np.add.outer(np.arange(-px, px + 1) ** 2, np.arange(-px, px + 1) ** 2) <= px * px
    for shape, footprint in (("square", np.ones((2 * px + 1,) * 2, bool)), ("disk", disk)):
        for b in range(2):
            ref_d = ndimage.grey_dilation(m[b, 0].numpy(), footprint=footprint, mode="nearest")
            ref_e = ndimage.grey_erosion(m[b, 0].numpy(), footprint=footprint, mode="nearest")
            assert np.allclose(dilate(m, px, shape=shape)[b, 0].numpy(), ref_d), shape
            assert np.allclose(erode(m, px, shape=shape)[b, 0].numpy(), ref_e), shape


def test_morphology_keeps_dtype_and_border():
    m = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    m[0, 0, :3, :3] = True
    assert dilate(m, 1).dtype == torch.bool and erode(m, 1).dtype == torch.bool
    assert erode(m, 1)[0, 0, 0, 0]  # the image border does not erode
    assert erode(m, 1).sum() == 4
    assert torch.equal(dilate(m, 0), m)
    with pytest.raises(ValueError, match=">= 0"):
        dilate(m, -1)


def test_mask_to_grid_modes():
    m = torch.zeros(1, 1, 16, 16)
    m[0, 0, 5, 9] = 1
    any_grid = mask_to_grid(m, (4, 4))
    assert any_grid.sum() == 1 and any_grid[0, 0, 1, 2] == 1
    area = mask_to_grid(m, 4, mode="area")
    assert area[0, 0, 1, 2] == pytest.approx(1 / 16) and area.sum() == pytest.approx(1 / 16)
    soft = _rand(2, 1, 16, 16)
    assert torch.equal(mask_to_grid(soft, (6, 5), mode="bilinear"),
                       F.interpolate(soft, size=(6, 5), mode="bilinear", align_corners=False))
    assert torch.equal(mask_to_grid(soft, (8, 8), mode="nearest"), soft[..., ::2, ::2])
    odd = mask_to_grid(m, (3, 3))  # non-dividing grid: overlapping cells, any coverage still counts
    assert odd.shape == (1, 1, 3, 3) and odd.sum() >= 1
    with pytest.raises(ValueError, match="unknown mask_to_grid mode"):
        mask_to_grid(m, 4, mode="max")
