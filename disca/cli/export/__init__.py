"""`disca-export`: turn a model into a deployable bundle, and look inside bundles.

One module per command group: `bundle` (onnx, inspect), `engines` (build), `calibration` (calibrate,
teacache, schedule), `validate`, `triton`. torch is imported only by the commands that need it.
"""

from __future__ import annotations

import click

from disca.cli.export._common import PRECISIONS, PRESET_NAMES
from disca.cli.export.bundle import inspect_cmd, onnx_cmd
from disca.cli.export.calibration import calibrate_cmd, schedule_cmd, teacache_cmd
from disca.cli.export.engines import build_cmd, default_graphs
from disca.cli.export.triton import triton_cmd
from disca.cli.export.validate import validate_cmd

__all__ = ["PRECISIONS", "PRESET_NAMES", "default_graphs", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="disca")
def main():
    """Export DisCa models to bundles of two ONNX graphs, and inspect bundles.

    A BUNDLE argument is a bundle directory, or `demo` for the demo model shipped with disca
    (a directory named `demo` in the current directory takes precedence). The shipped demo is
    read-only: the commands that write into a bundle need a copy of it.
    """


for _cmd in (onnx_cmd, build_cmd, calibrate_cmd, teacache_cmd, schedule_cmd, validate_cmd, inspect_cmd, triton_cmd):
    main.add_command(_cmd)
