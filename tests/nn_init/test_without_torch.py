"""Without torch the package imports, lists the cnn provider as unavailable, and inverts with ME."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_and_me_inversion_without_torch():
    code = textwrap.dedent(
        """
        import importlib.abc
        import sys

        class NoTorch(importlib.abc.MetaPathFinder):
            # A finder that refuses torch: `import torch` raises ImportError. (Setting
            # sys.modules["torch"] = None instead breaks scipy, whose array-API helpers
            # getattr() on whatever sys.modules["torch"] holds.)
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch blocked for this test")
                return None

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        import stokesflow.nn_init
        import stokesflow.nn_init.training, stokesflow.nn_init.model_file, stokesflow.orchestrator.assist
        from stokesflow.nn_init import InitError, get_provider, list_providers
        from stokesflow.backends import get_backend
        ok, why = list_providers()["cnn"]
        assert not ok and "pip install" in why, why
        try:
            get_provider("cnn", {"model": "m.pt"})
        except InitError as exc:
            assert "torch==2.13.0" in str(exc), exc
        else:
            raise AssertionError("cnn provider built without torch")
        from stokesflow.orchestrator.train import train_model
        try:  # the driver checks for torch without importing it, before it reads any file
            train_model(["missing_obs.h5"], ["missing_result.h5"], "m.pt")
        except InitError as exc:
            assert "stokesflow train needs PyTorch" in str(exc), exc
        else:
            raise AssertionError("train_model ran without torch")
        me = get_backend("me", {"lines": ["FeI_6173"], "noise": 1e-3})
        wl = 6173.3433 + 1e-3 * np.array([-172.0, -103.2, -34.4, 34.4, 103.2, 172.0])
        p = np.array([[1500.0, 60.0, 30.0, 0.5, 30.0, 8.0, 0.2, 0.3, 0.7]])
        res = me.invert(me.synthesize(p, wl), wl)
        assert abs(res.params[0, 0] - 1500.0) < 5.0, res.params  # noise-free: the fit recovers B
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
