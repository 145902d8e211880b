"""Gather the photographs the bundled ×2 weights were trained on into one folder.

    apt-get install opencv-doc            # or: apt-get download opencv-doc && dpkg-deb -x opencv-doc_*.deb DIR
    python tools/training_photos.py runs/photos [--opencv-doc DIR/usr/share/doc/opencv-doc/examples]
    ddet train --config configs/ddet_x2_stage6.yaml

The folder holds scikit-image's training photographs (``ddet.data.SKIMAGE_TRAIN_PHOTOS``, as PNG)
and the natural photographs among the examples of Debian's ``opencv-doc`` package (copied byte for
byte): 32 more scenes — streets, buildings, fruit, animals, aerial views — where scikit-image has
ten natural photos. Charts, drawings, renders, paintings, stereo twins and images blurred on
purpose are left out. No validation photo (coffee, chelsea, camera) is among them.
"""

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ddet.data import SKIMAGE_TRAIN_PHOTOS, skimage_photos

DEFAULT_OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples")
# Paths under opencv-doc's examples folder → the name the photo gets (without suffix).
OPENCV_DOC_PHOTOS = {
    "alphamat/input_images/plant.jpg": "plant",
    "hfs/data/000.jpg": "robin",
    "reg/home.png": "home_reg",
    **{
        f"data/{name}": Path(name).stem
        for name in (
            "aero1.jpg",
            "aero3.jpg",
            "aloeL.jpg",
            "apple.jpg",
            "baboon.jpg",
            "basketball1.png",
            "board.jpg",
            "box_in_scene.png",
            "building.jpg",
            "butterfly.jpg",
            "chicky_512.png",
            "ela_original.jpg",
            "fruits.jpg",
            "graf1.png",
            "home.jpg",
            "left.jpg",
            "leuvenA.jpg",
            "messi5.jpg",
            "orange.jpg",
            "rubberwhale1.png",
            "smarties.png",
            "squirrel_cls.jpg",
            "stuff.jpg",
        )
    },
    **{f"text/scenetext0{index}.jpg": f"scenetext0{index}" for index in range(1, 7)},
}


def gather(out, opencv_doc=DEFAULT_OPENCV_DOC, force=False):
    """Write the training photographs into ``out``; returns the written paths."""
    out, opencv_doc = Path(out), Path(opencv_doc)
    missing = [relative for relative in OPENCV_DOC_PHOTOS if not (opencv_doc / relative).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} opencv-doc photos not found under {opencv_doc} (first: {missing[0]}); "
            "install Debian's opencv-doc (apt-get install opencv-doc) or pass --opencv-doc with the "
            "examples folder of an extracted package"
        )
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty; pass --force to add to it")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, photo in skimage_photos(SKIMAGE_TRAIN_PHOTOS).items():
        path = out / f"skimage_{name}.png"
        Image.fromarray(np.round(photo * 255).astype(np.uint8)).save(path)
        written.append(path)
    for relative, name in OPENCV_DOC_PHOTOS.items():
        source = opencv_doc / relative
        path = out / f"opencv_{name}{source.suffix}"
        shutil.copyfile(source, path)
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write the photographs into")
    parser.add_argument(
        "--opencv-doc",
        default=str(DEFAULT_OPENCV_DOC),
        help=f"opencv-doc's examples folder (default {DEFAULT_OPENCV_DOC})",
    )
    parser.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    args = parser.parse_args(argv)
    try:
        written = gather(args.out, args.opencv_doc, args.force)
    except (FileNotFoundError, FileExistsError) as error:
        sys.exit(f"error: {error}")
    print(f"{len(written)} photographs in {args.out}")


if __name__ == "__main__":
    main()
