"""Put a GPU training run's result (``scripts/train_classroom_gpu.sh``) into the package's shipped weights.

    python scripts/unpack_classroom_run.py DIR     # DIR holds weights.tar, unet.safetensors, curve.json

Replaces the model files under ``diffviz/classroom/weights`` (TRAINING.md stays) and writes the per-snapshot
quality as ``quality_curve.json`` beside ``training_log.json``. Checks that the result loads before replacing.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[1] / "diffviz" / "classroom" / "weights"


def main(src: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / "weights"
        with tarfile.open(src / "weights.tar") as tar:
            tar.extractall(new, filter="data")
        shutil.copy2(src / "unet.safetensors", new / "unet" / "diffusion_pytorch_model.safetensors")
        curve = json.loads((src / "curve.json").read_text())
        (new / "quality_curve.json").write_text(json.dumps(curve["snapshots"], indent=1))
        install(new)


def install(new: Path) -> None:
    """Replace the package's model files with those in ``new`` (TRAINING.md stays), once ``new`` loads."""
    sys.path.insert(0, str(WEIGHTS.parents[2]))
    from diffviz.classroom.model import load_pipeline

    pipe = load_pipeline(new)  # refuses a broken run before anything is replaced
    print(f"loaded: {pipe.unet.config.sample_size * pipe.vae_scale_factor} px, "
          f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f} M UNet parameters")
    for item in sorted(new.iterdir()):
        dest = WEIGHTS / item.name
        if dest.is_dir():
            shutil.rmtree(dest)
        shutil.copytree(item, dest) if item.is_dir() else shutil.copy2(item, dest)
    print(f"shipped to {WEIGHTS}; now re-run the notebooks and update TRAINING.md")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
