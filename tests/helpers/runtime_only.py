"""Running a console script as on the runtime-only install (training and model-building
libraries missing), in a subprocess that blocks their imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKED = ("timm", "albumentations", "pandas", "skimage", "onnx", "onnxslim", "matplotlib")
#: What `pip install ".[cpu,headless]"` lacks: the libraries above, plus click (typer 0.2x
#: vendors its own and no longer brings it; the dev install gets it through timm's hub).
RUNTIME_ONLY_MISSING = (*BLOCKED, "click", "psutil")
#: The console scripts, by module; every one must start (at least --help) on that install.
ENTRY_MODULES = {
    "eamstcn-run": "eamstcn.runtime.cli",
    "eamstcn-export": "eamstcn.export.cli",
    "eamstcn-eval": "eamstcn.runtime.eval_cli",
    "eamstcn-bench": "eamstcn.bench.cli",
    "eamstcn-train": "eamstcn.training.cli",
    "eamstcn-synth": "eamstcn.data.synth_cli",
}

#: Runs ``sys.argv[1]``'s ``main()`` with the rest as its arguments, those libraries blocked.
_RUNTIME_ONLY = textwrap.dedent(
    f"""
    import importlib, sys
    from importlib.abc import MetaPathFinder

    class Block(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {RUNTIME_ONLY_MISSING!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    module, prog = sys.argv[1], sys.argv[2]
    sys.argv = [prog, *sys.argv[3:]]
    importlib.import_module(module).main()
    """
)


def run_runtime_only(prog: str, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``prog args`` as on the runtime-only install (the missing libraries blocked)."""
    command = [sys.executable, "-c", _RUNTIME_ONLY, ENTRY_MODULES[prog], prog, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)
