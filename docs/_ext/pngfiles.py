"""A sphinx-gallery image scraper for the PNG files a tutorial writes: rnnkit's plots
(`rnnkit.analysis`) draw on their own matplotlib canvases and save a file, so pyplot never sees them.

After each code block, the PNG files in the tutorial's folder (its working directory while it runs) are
moved into the gallery's images, oldest first, and shown below the block.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sphinx_gallery.scrapers import figure_rst


def scraper(block, block_vars, gallery_conf, **kwargs):
    folder = Path(block_vars["src_file"]).parent
    written = sorted(folder.glob("*.png"), key=lambda p: p.stat().st_mtime_ns)
    shown = []
    for png, target in zip(written, block_vars["image_path_iterator"]):
        shutil.move(png, target)
        shown.append(target)
    return figure_rst(shown, gallery_conf["src_dir"]) if shown else ""
