"""Build step of deploy/docker/Dockerfile: lay out at build time what the services image would
otherwise write at run time, so that it runs with a read-only root filesystem.

    layout.py MODELS_DIR

- the Triton home (LLMOPS_TRITON_HOME: tritonserver and the Python backend with the stub for this
  interpreter), which the local runtime then finds complete;
- a Triton model repository per bundled model in MODELS_DIR/<distribution>/ (the `llm` or
  `embedding` model, as the local runtime writes it), for a serving pod that runs this image.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "services"), str(ROOT / "deploy" / "scripts")]

from bundled_models import BUNDLED  # noqa: E402
from deployment.domain import ModelSnapshot  # noqa: E402
from deployment.runtimes import triton  # noqa: E402
from shared.settings import get_settings  # noqa: E402


def bundled_snapshot(spec: dict) -> ModelSnapshot:
    """A bundled model as the catalog registers it (bundled_models.BUNDLED)."""
    return ModelSnapshot(id=spec["name"], name=spec["name"], version=spec["version"], type=spec["type"],
                         runtime=spec["runtime"], artifact_uri=spec["artifactUri"], metadata=spec["metadata"])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    home = triton.prepare_triton_home(get_settings().triton_home)
    print(f"triton home: {home.root}")
    for spec in BUNDLED:
        dest = Path(argv[0]) / spec["artifactUri"].removeprefix("pkg://")
        name = triton.write_model_repository(dest, bundled_snapshot(spec))
        print(f"model repository: {dest} ({name})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
