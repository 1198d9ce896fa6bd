"""A stand-in for a folder of your own photos, made from the CIFAR-10 ImageFolder tree: each image upscaled to a
size of its own (shorter side 120-420 px, aspect 3:4 to 4:3), saved as RGB JPEG, grayscale PNG, RGBA PNG, CMYK
JPEG or as a JPEG stored sideways with its EXIF orientation tag, as photos from phones and cameras come.

    python bench/photo_folder.py --out /tmp/photos            # 100 training and 50 test images per class
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

KINDS = ("rgb", "rgb", "rgb", "rgb", "rgb", "rgb", "gray", "rgba", "cmyk", "exif")  # what a share of them is
EXIF_ORIENTATION = 0x0112
ROTATE_CW_TO_DISPLAY = 6  # the orientation tag of a photo taken with the phone upright


def save_as_photo(image: Image.Image, path: Path, rng: np.random.Generator) -> Path:
    """``image`` resized to a random photo size and saved as one of :data:`KINDS`; returns the file written."""
    short = int(rng.integers(120, 421))
    aspect = float(rng.uniform(0.75, 4 / 3))
    size = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
    photo = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    kind = KINDS[int(rng.integers(len(KINDS)))]
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "gray":
        photo.convert("L").save(path := path.with_suffix(".png"))
    elif kind == "rgba":
        alpha = Image.new("L", photo.size, int(rng.integers(128, 256)))
        Image.merge("RGBA", (*photo.split(), alpha)).save(path := path.with_suffix(".png"))
    elif kind == "cmyk":
        photo.convert("CMYK").save(path := path.with_suffix(".jpg"), quality=90)
    elif kind == "exif":  # stored sideways; the tag says how to turn it upright
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = ROTATE_CW_TO_DISPLAY
        photo.transpose(Image.Transpose.ROTATE_90).save(path := path.with_suffix(".jpg"), quality=90,
                                                        exif=exif.tobytes())
    else:
        photo.save(path := path.with_suffix(".jpg"), quality=90)
    return path


def make_photo_folder(source: Path, out: Path, train_per_class: int, test_per_class: int, seed: int) -> int:
    """Write ``out/train`` and ``out/test`` from the first images of each class of ``source``; returns how many."""
    rng = np.random.default_rng(seed)
    written = 0
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            for file in sorted(class_dir.iterdir())[:count]:
                with Image.open(file) as image:
                    save_as_photo(image, out / split / class_dir.name / file.stem, rng)
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("EFFRANK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--source", type=Path, default=shared / "cifar10", help="an ImageFolder tree")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out: {args.out} is not empty; give a new folder")
    print(f"{make_photo_folder(args.source, args.out, args.train_per_class, args.test_per_class, args.seed)} "
          f"photos in {args.out}")


if __name__ == "__main__":
    main()
