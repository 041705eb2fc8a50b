"""Packaging stand-ins apply only when the real component is missing. Each check runs in a fresh interpreter."""

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_detectron2_stand_in_applies_when_extension_missing():
    # whether the compiled extension loads, asked of a separate interpreter that never imports eva_transfer_projects.compat
    probe = subprocess.run(
        [sys.executable, "-c", "import detectron2._C"], capture_output=True, text=True, timeout=300
    )
    real = probe.returncode == 0
    out = _run("""
        import eva_transfer_projects.compat as c
        applied = c.apply_detectron2()
        import detectron2.layers  # imports once the extension (or its stand-in) is there
        from detectron2 import _C
        if applied:
            try:
                _C.deform_conv_forward()
            except NotImplementedError as e:
                assert "deform_conv_forward" in str(e)
            else:
                raise AssertionError("stand-in did not raise")
        print(applied)
    """)
    assert out == str(not real), (out, probe.stderr[-500:])


def test_stand_ins_not_applied_when_real_component_present():
    out = _run("""
        import sys, types
        sys.modules["detectron2._C"] = types.ModuleType("detectron2._C")  # a loadable extension
        sys.modules["mmcv._ext"] = types.ModuleType("mmcv._ext")
        import eva_transfer_projects.compat as c
        print(c.apply_detectron2(), c.apply_mmcv())
    """)
    assert out == "False False"


def test_mmcv_stand_in_lets_pure_pytorch_ops_run():
    out = _run("""
        import importlib
        try:
            importlib.import_module("mmcv._ext")
            real = True
        except ImportError:
            real = False
        import eva_transfer_projects.compat as c
        assert c.apply_mmcv() == (not real)
        import torch
        from mmcv.ops import point_sample
        out = point_sample(torch.rand(1, 2, 8, 8), torch.rand(1, 5, 2))
        assert out.shape == (1, 2, 5)
        print("ok")
    """)
    assert out == "ok"


def test_lvis_numpy_alias():
    out = _run("""
        import numpy as np
        import eva_transfer_projects.compat as c
        applied = c.apply_lvis_numpy()
        assert applied == (not hasattr(np, "float"))
        import lvis.eval
        assert lvis.eval.np.float is float
        assert not applied or not hasattr(np, "float")  # numpy itself is left alone
        print("ok")
    """)
    assert out == "ok"


def test_detectron2_environment_report_runs_with_stand_in():
    out = _run("""
        import eva_transfer_projects.compat as c
        c.apply_detectron2()
        from detectron2.utils.collect_env import collect_env_info
        info = collect_env_info()
        assert "detectron2" in info
        print("ok")
    """)
    assert out == "ok"


def test_known_third_party_warnings_are_silenced_by_the_tools_not_by_importing():
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    imports = "import eva_transfer_projects.detection, eva_transfer_projects.segmentation, mmseg.models"
    tool = (
        "from eva_transfer_projects.compat import silence_known_warnings; silence_known_warnings(); "
        + imports
    )
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONWARNINGS": "default"}
    env.pop("EVA_SHOW_ALL_WARNINGS", None)

    def stderr(code, **extra):
        run = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, cwd=repo
        )
        assert run.returncode == 0, run.stderr
        return run.stderr

    assert "torch.jit.script" in stderr(imports)  # importing the plug-ins leaves the filters alone
    assert "torch.jit.script" not in stderr(tool)
    assert "torch.jit.script" in stderr(tool, EVA_SHOW_ALL_WARNINGS="1")  # the filter removed it
