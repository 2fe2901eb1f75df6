"""The notebooks run top to bottom in a real Jupyter kernel, in smoke mode (DDPM_SMOKE=1: few steps).

Each notebook is executed with nbclient from notebooks/ (its working directory, as in Jupyter), with a
timeout per cell; any exception in any cell fails the test with the cell's traceback. The notebooks are
committed without outputs, which is checked too.
"""

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 300


def test_all_seven_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs before committing"
    assert 'SMOKE = os.environ.get("DDPM_SMOKE") == "1"' in code[0].source
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, "DDPM_SMOKE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny workloads; two spinning threads only slow a shared CPU down
    env.pop("PYTHONPATH", None)  # the notebook must find ddpm on its own (it adds the repository root)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    try:
        client.execute(env=env)
    except CellExecutionError as e:
        pytest.fail(f"{path.name} failed in smoke mode:\n{e}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 3, f"{path.name} drew only {images} figures"
