"""The runtime imports on a machine without training or model-building libraries."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.assets import write_mask
from tests.helpers.runtime_only import BLOCKED, ENTRY_MODULES, run_runtime_only


def test_runtime_imports_without_training_libraries() -> None:
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        from importlib.abc import MetaPathFinder

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ModuleNotFoundError(f"blocked for this test: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import eamstcn.runtime
        names = [m.name for m in pkgutil.walk_packages(eamstcn.runtime.__path__, "eamstcn.runtime.")]
        for name in names:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        assert not leaked, leaked
        print(len(names))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 1


def test_subpackages_install_under_eamstcn() -> None:
    import importlib.util

    for name in ("eamstcn.export", "eamstcn.runtime", "eamstcn.bench"):
        assert importlib.util.find_spec(name) is not None, name
    # Never as top-level modules that would shadow other projects.
    for name in ("runtime", "bench"):
        spec = importlib.util.find_spec(name)
        assert spec is None or "eamstcn" not in str(spec.origin or ""), name


def test_importing_the_library_leaves_the_process_environment_alone() -> None:
    """The commands set what they need (eamstcn.entry_points); importing any module of the
    four packages changes no environment variable."""
    code = textwrap.dedent(
        """
        import importlib, os, pkgutil
        import cv2  # opencv-python's own import sets LD_LIBRARY_PATH: not ours to judge
        before = dict(os.environ)
        import eamstcn, eamstcn.bench, eamstcn.export, eamstcn.runtime
        for package in (eamstcn, eamstcn.runtime, eamstcn.export, eamstcn.bench):
            for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(module.name)
        print(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)))
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("OMP_WAIT_POLICY", "OPENCV_"))}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


#: Runs console script ``argv[1]`` as pip's wrapper does (import its function, call it),
#: with --help; prints OMP_WAIT_POLICY as it was when torch was first imported (or at the
#: end when nothing imported torch) and whether torch was imported.
_CONSOLE_SCRIPT = textwrap.dedent(
    """
    import importlib, os, sys
    from importlib.abc import MetaPathFinder

    seen = []

    class Watch(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" and not seen:
                seen.append(os.environ.get("OMP_WAIT_POLICY"))
            return None

    sys.meta_path.insert(0, Watch())
    prog, target = sys.argv[1], sys.argv[2]
    module, _, function = target.partition(":")
    sys.argv = [prog, "--help"]
    try:
        getattr(importlib.import_module(module), function)()
    except SystemExit:
        pass
    print(seen[0] if seen else os.environ.get("OMP_WAIT_POLICY"), bool(seen))
    """
)


def console_scripts() -> dict[str, str]:
    """pyproject.toml's [project.scripts]: name -> "module:function"."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["scripts"]


def test_every_console_script_is_known_here() -> None:
    assert set(console_scripts()) == set(ENTRY_MODULES)


@pytest.mark.parametrize("prog", sorted(ENTRY_MODULES))
def test_console_scripts_make_idle_openmp_threads_sleep(prog: str) -> None:
    """Set by the command before its module imports torch (OpenMP reads it once, when torch
    loads it); eamstcn-run measured 7.3 FPS spinning vs 20.2 passive on 2 cores."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    command = [sys.executable, "-c", _CONSOLE_SCRIPT, prog, console_scripts()[prog]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout, done.stdout
    assert done.stdout.strip().splitlines()[-1].split()[0] == "PASSIVE"


def test_a_users_openmp_wait_policy_wins() -> None:
    env = {**__import__("os").environ, "OMP_WAIT_POLICY": "ACTIVE"}
    command = [sys.executable, "-c", _CONSOLE_SCRIPT, "eamstcn-run", console_scripts()["eamstcn-run"]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "ACTIVE True"


@pytest.mark.parametrize("prog", sorted(ENTRY_MODULES))
def test_every_cli_starts_on_the_runtime_only_install(prog: str) -> None:
    result = run_runtime_only(prog, "--help")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Usage" in result.stdout


@pytest.mark.parametrize(
    ("prog", "args", "library"),
    [
        ("eamstcn-export", ["--out", "never-written"], "onnx"),  # export needs the model extra
        ("eamstcn-bench", ["--size", "64x64", "--frames-count", "4"], "timm"),
    ],
)
def test_commands_needing_an_extra_say_which(prog: str, args: list[str], library: str, tmp_path: Path) -> None:
    result = run_runtime_only(prog, *args, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and library in lines[0] and "pip install" in lines[0], result.stderr
    assert not (tmp_path / "never-written").exists()


def test_run_and_eval_work_on_the_runtime_only_install(runtime_assets, tmp_path: Path) -> None:
    """Exported engines run through eamstcn-run (video) and eamstcn-eval with none of the
    model, training or bench libraries (nor click) importable."""
    from eamstcn.data.davis_io import write_frame
    from eamstcn.data.synth import generate_sequence, write_video

    clip = generate_sequence(seed=3, frames=4, height=64, width=64, objects=1)
    video = write_video(tmp_path / "clip.mp4", clip.frames, fps=8)
    mask = write_mask(tmp_path / "first.png", clip.masks[0])
    result = run_runtime_only("eamstcn-run", "--video", video, "--mask", mask, "--engines", runtime_assets.engines,
                              "--output", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 4

    sequence = tmp_path / "davis" / "JPEGImages" / "480p" / "blob"
    for t, frame in enumerate(clip.frames):
        write_frame(sequence / f"{t:05d}.jpg", frame)
    write_mask(tmp_path / "davis" / "Annotations" / "480p" / "blob" / "00000.png", clip.masks[0])
    for t in range(1, len(clip.frames)):
        write_mask(tmp_path / "davis" / "Annotations" / "480p" / "blob" / f"{t:05d}.png", clip.masks[t])
    result = run_runtime_only("eamstcn-eval", "--data", tmp_path / "davis", "--engines", runtime_assets.engines,
                              "--out", tmp_path / "eval", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "ALL" in result.stdout and "Traceback" not in result.stderr


def test_demo_runs_on_the_runtime_only_install(tmp_path: Path) -> None:
    """`eamstcn-run --demo` with the bundled engines: ONNX Runtime only, no timm."""
    from eamstcn.default_model import BundledModelError, bundled_model

    try:
        model = bundled_model()
    except BundledModelError:
        pytest.skip("no bundled model in this install")
    if model.engines is None:
        pytest.skip("the bundled model ships no engines: the demo needs timm for its checkpoint")
    result = run_runtime_only("eamstcn-run", "--demo", "--output", tmp_path / "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "mean IoU" in result.stdout and (tmp_path / "demo" / "overlay.mp4").is_file()
