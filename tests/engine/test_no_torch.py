"""The engine, the catalogues and the plugin core import and run without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_engine_imports_without_torch():
    code = textwrap.dedent(
        """
        import sys
        for blocked in ("torch", "lenstronomy", "skypy", "skimage"):
            sys.modules[blocked] = None   # any import of them now raises ImportError
        import pkgutil, importlib
        import lensengine.engine, lensengine.catalogs, lensengine.plugins
        for pkg in (lensengine.engine, lensengine.catalogs, lensengine.plugins):
            for mod in pkgutil.iter_modules(pkg.__path__):
                if mod.name != "__main__":
                    importlib.import_module(f"{pkg.__name__}.{mod.name}")
        from lensengine.engine.cli import cli, _register_plugin_commands
        _register_plugin_commands()
        from lensengine.engine.preprocess import resize_matrix
        assert resize_matrix(200, 66).shape == (66, 200)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
