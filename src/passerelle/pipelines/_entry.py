"""Runs a pipeline's Python entry point in its own process: ``function(input_path, output_dir, params)``.

Started by a run as ``python -m passerelle.pipelines._entry MODULE:FUNCTION INPUT OUTPUT PARAMS``
in the training folder, so the function can be stopped (timeout, cancel) with its process
group. A returned model object is written into the output folder in its flavor's layout, with
a manifest the run reads back; a function that returns None has written the model itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from passerelle.pipelines.runs import PREPARED_MANIFEST

MODEL_FOLDER = "model"


def _target(reference: str) -> Any:
    module_name, _, attr = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{reference} is not callable")
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(
            "usage: python -m passerelle.pipelines._entry MODULE:FUNCTION INPUT OUTPUT PARAMS",
            file=sys.stderr,
        )
        return 2
    reference, input_path, output, params_text = argv
    # The training folder is the working directory; its modules are importable as in a script.
    sys.path.insert(0, os.getcwd())
    params = json.loads(params_text)
    model = _target(reference)(input_path or None, output, params)
    if model is None:
        return 0
    from passerelle.registry import prepare_artifact

    folder = Path(output) / MODEL_FOLDER
    folder.mkdir()
    prepared = prepare_artifact(model, folder)
    manifest = {
        "folder": MODEL_FOLDER,
        "flavor": prepared.flavor,
        "saved": dataclasses.asdict(prepared.saved),
        "environment": prepared.environment,
        "lineage": prepared.lineage,
    }
    (Path(output) / PREPARED_MANIFEST).write_text(json.dumps(manifest))
    print(f"{reference} returned a {type(model).__name__}, saved as a {prepared.flavor} model")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
