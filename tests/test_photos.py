"""A folder of real photos: any size and shape, grayscale, RGBA, palette, CMYK, 16-bit and EXIF-rotated images,
resized on loading by one rule, through a timm ViT at 224 px."""

import json

import numpy as np
import pytest
from PIL import Image

from effrank_utils.report.analysis import analyze, save_results
from effrank_utils.report.study import load_study
from effrank_utils.run.entry import load_preset
from effrank_utils.run.sweep import run_sweep
from effrank_utils.training.data import RESIZE_ON_LOADING_UP_TO, load_data, read_image, stored_side
from effrank_utils.training.loading import load_data_for
from effrank_utils.training.preprocessing import Preprocessing

MODES = ["RGB", "L", "RGBA", "P", "CMYK", "I;16"]


def _photo(path, width, height, mode, seed):
    """A photo-like image: smooth colour gradients plus noise, saved in ``mode``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                    np.full_like(xx, seed * 37 % 256)], axis=-1)
    rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L"), dtype=np.uint16) * 257))
    elif mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path.with_suffix(".jpg" if mode in ("CMYK",) else ".png"))


def make_photo_folder(root, per_class=4, classes=("cat", "dog"), test_per_class=2):
    """train/ and test/ class folders of photos from 120 to 420 px, of every mode in :data:`MODES`."""
    sizes = [(120, 160), (420, 300), (224, 224), (300, 200), (160, 420), (250, 250)]
    n = 0
    for split, count in (("train", per_class), ("test", test_per_class)):
        for c in classes:
            for i in range(count):
                width, height = sizes[n % len(sizes)]
                _photo(root / split / c / f"{i}", width, height, MODES[n % len(MODES)], n)
                n += 1
    return root


def test_every_kind_of_photo_decodes_to_rgb_of_one_size(tmp_path):
    make_photo_folder(tmp_path)
    geometry = Preprocessing("test", (0.5,) * 3, (0.5,) * 3, "bicubic", 0.9, 224, 248)
    data = load_data("imagefolder", root=tmp_path, preprocessing=geometry)
    assert data.train_images.shape == (8, 3, 248, 248) and data.test_images.shape == (4, 3, 248, 248)
    assert data.train_images.dtype.is_floating_point is False


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high: the left half black, the right half white
    stored[:, 10:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display (a phone held upright)
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = read_image(tmp_path / "rotated.jpg", None)
    assert upright.shape == (3, 20, 10)  # displayed 10 wide, 20 high
    assert upright[:, :10].mean() < 30 and upright[:, 10:].mean() > 225  # the left half is now the top


def test_grayscale_rgba_and_16_bit_become_rgb(tmp_path):
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.full((8, 8), 200 * 257, np.uint16)).save(tmp_path / "gray16.png")
    Image.fromarray(np.full((8, 8, 4), (10, 20, 30, 128), np.uint8), "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.full((8, 8, 3), (10, 20, 30), np.uint8)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert read_image(tmp_path / "gray.png", None)[:, 0, 0].tolist() == [200, 200, 200]
    assert read_image(tmp_path / "gray16.png", None)[:, 0, 0].tolist() == [200, 200, 200]
    assert read_image(tmp_path / "alpha.png", None)[:, 0, 0].tolist() == [10, 20, 30]
    assert np.abs(read_image(tmp_path / "cmyk.jpg", None)[:, 0, 0].astype(int) - [10, 20, 30]).max() <= 6


@pytest.mark.parametrize("input_size, sizes, side", [
    (8, {(120, 160), (30, 30)}, 8),              # a small input: resized to it on loading
    (RESIZE_ON_LOADING_UP_TO, {(32, 32)}, RESIZE_ON_LOADING_UP_TO),
    (224, {(32, 32)}, None),                     # CIFAR at 224: kept small, upscaled per batch
    (224, {(256, 256)}, None),                   # one square size up to the resize size: as decoded
    (224, {(300, 300)}, 256),                    # larger than the resize size: down to it on loading
    (224, {(32, 32), (40, 40)}, 256),            # sizes differ: resized
    (224, {(200, 300)}, 256),                    # not square: shorter side to the resize size, center square
])
def test_the_size_rule(input_size, sizes, side):
    geometry = Preprocessing("test", (0.5,), (0.5,), "bilinear", 0.875, input_size, round(input_size / 0.875))
    assert stored_side(geometry, lambda: sizes) == side


def test_a_small_input_reads_no_image_headers():
    geometry = Preprocessing("test", (0.5,), (0.5,), "bilinear", 0.875, 32, 37)
    assert stored_side(geometry, lambda: pytest.fail("read the sizes")) == 32


def test_shorter_side_resize_keeps_the_center(tmp_path):
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255  # the middle third is white: the center square
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = read_image(tmp_path / "wide.png", 50)
    assert out.shape == (3, 50, 50) and out.min() > 200


def test_a_timm_vit_at_224_runs_the_sweep_on_a_photo_folder(tmp_path):
    make_photo_folder(tmp_path / "photos")
    config = load_preset("smoke", dataset="imagefolder", data_root=str(tmp_path / "photos"),
                         model="vit_tiny_patch16_224", image_size=224, normalization="model", train_subset=None,
                         teacher_epochs=1, ranks=[2, 8], student_epochs=1, teacher_batch_size=4,
                         student_batch_size=4, eval_batch_size=8)
    data = load_data_for(config)
    assert data.train_images.shape[1:] == (3, 248, 248)  # timm: floor(224 / 0.9), cropped to 224 per batch
    table = run_sweep(config, tmp_path / "run", data=data)
    assert sorted(table["rank"]) == [2, 8] and table["status"].eq("ok").all()
    study = load_study(tmp_path / "run")
    save_results(study, analyze(study), "teacher")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert summary["preprocessing"] == record["preprocessing"] == {
        "source": "timm resolve_model_data_config(vit_tiny_patch16_224)", "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "crop_pct": 0.9, "input_size": 224, "resize_size": 248}
