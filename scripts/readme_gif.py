"""Render the README's demo GIF: a few prompts side by side, DisCa vs all-full, from a bundle.

python scripts/readme_gif.py [BUNDLE] --out docs/demo.gif
"""

from __future__ import annotations

import click
import numpy as np

from disca.cli._common import clean_errors
from disca.runtime import Pipeline, demo_bundle
from disca.runtime.video import check_path, write

PROMPTS = [
    "a red circle moving left",
    "a blue square moving up",
    "a yellow triangle moving right",
    "a green circle growing bigger",
    "a magenta square moving down",
    "a cyan triangle moving left",
]


@click.command()
@click.argument("bundle", required=False)
@click.option("--out", default="docs/demo.gif", show_default=True)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@clean_errors
def main(bundle, out, seed):
    check_path(out)  # a bad name or an unwritable place: refused before the clips are sampled
    with Pipeline.load(bundle or demo_bundle()) as pipe:
        rows = []
        for anchors in (None, "full"):  # top row: DisCa (default anchors); bottom row: every step full
            clips = [pipe.generate(p, anchors=anchors, seed=seed + i).video for i, p in enumerate(PROMPTS)]
            rows.append(np.concatenate(clips, axis=-1))  # side by side
    write(out, np.concatenate(rows, axis=-2), fps=4, upscale=3)  # DisCa above, all-full below
    click.echo(f"wrote {out}: " + "; ".join(PROMPTS) + " (top: DisCa, bottom: all-full)")


if __name__ == "__main__":
    main()
