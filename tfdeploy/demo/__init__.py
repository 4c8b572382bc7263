"""The demo: a small DeepLab-v3 trained on synthetic scenes, the scene generator, and
the example images.  The checkpoint and images ship inside the package, so the commands'
defaults work after a plain ``pip install`` as well as in a source checkout (where
``checkpoints/demo`` and the images in ``examples/`` point here)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

#: The bundled demo checkpoint (tfdeploy format: model.ckpt* + config.json).
DEMO_CHECKPOINT = _HERE / "checkpoint"
#: Folder of the bundled demo images (synthetic scenes, JPEG).
DEMO_IMAGES = _HERE / "images"


def demo_images() -> list[Path]:
    """The bundled demo images, in name order."""
    return sorted(DEMO_IMAGES.glob("*.jpg"))


def images() -> list[Path]:
    """The bundled demo images (absolute paths, in name order): usable from any
    directory, after a plain ``pip install`` too (``tfdeploy.demo.images()[0]``)."""
    return demo_images()
