"""The README's "Using it" steps run top to bottom as written (issue 16).

The bash block of that section is taken from README.md unchanged and run with ``bash -e``, with small
sizes through the variables the README itself names (``N``, ``EPOCHS``, ``WORK``, ``SHARED``), so a
step that uses a file no earlier step made, a renamed option or a command that fails stops the test
with the step's output.  It needs the training extra and ../shared (the published weights and the
real images); without them it skips, saying which is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LENSENGINE_SHARED", REPO.parent / "shared"))

pytestmark = pytest.mark.slow


def using_it_block() -> str:
    """The bash code of README.md's "Using it" section (every ```bash block up to the next heading)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Using it\n(.*?)^#{2,3} ", text, flags=re.S | re.M)
    assert match, "README.md has no '## Using it' section followed by another heading"
    blocks = re.findall(r"^```bash\n(.*?)^```", match.group(1), flags=re.S | re.M)
    assert blocks, "README.md's 'Using it' section has no ```bash block"
    return "\n".join(blocks)


def test_the_block_names_its_sizes_and_writes_outside_the_checkout():
    """Sizes come from N/EPOCHS, outputs from WORK; the two runs on the test store write different outputs."""
    block = using_it_block()
    for variable in ("WORK", "N", "EPOCHS", "SHARED"):
        assert re.search(rf"\b{variable}=\$\{{{variable}:-", block), f"{variable} is not set with a default"
    assert "--epochs \"$EPOCHS\"" in block
    outs = re.findall(r"lensengine run .*?--out \"([^\"]+)\"", block)
    assert len(outs) == len(set(outs)) >= 2, outs
    for line in block.splitlines():
        if "--out" in line and not line.lstrip().startswith("#"):
            assert '--out "$WORK/' in line, f"an output outside $WORK: {line.strip()}"
    if not (REPO / ".git").exists():
        return  # not a git checkout: nothing to keep clean
    for folder in ("lensengine-work", "lensengine-demo"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x"], cwd=REPO)
        assert ignored.returncode == 0, f"{folder}/ (a README default) is not git-ignored"


def test_using_it_runs_top_to_bottom(tmp_path):
    missing = [m for m in ("torch", "lenstronomy", "openTSNE") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the training extra (missing: {', '.join(missing)})")
    if not (SHARED / "published-weights").is_dir() or not (SHARED / "real" / "galaxies").is_dir():
        pytest.skip(f"needs {SHARED}/published-weights and {SHARED}/real/galaxies (set LENSENGINE_SHARED)")
    script = tmp_path / "using_it.sh"
    script.write_text("set -euo pipefail\nset -x\n" + using_it_block())
    work = tmp_path / "work"
    env = {**os.environ, "WORK": str(work), "N": "24", "EPOCHS": "1", "SHARED": str(SHARED),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, (f"a README step failed (exit {result.returncode}):\n"
                                    f"{result.stderr[-6000:]}\n{result.stdout[-3000:]}")
    for made in ("candidates.fits", "candidates_scores.parquet", "published.fits", "train_scores.parquet",
                 "ou_tsne.npz", "tsne.fits", "runs/OU-66/OU_66.onnx", "report", "recall/recall.json"):
        assert (work / made).exists(), f"{made} was not made"
