"""The engine, the catalogues and the plugin core import and run without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_engine_imports_without_torch():
    code = textwrap.dedent(
        """
        import sys

        class Block:
            # makes the training-only packages unimportable, as in an engine-only install
            blocked = ("torch", "lenstronomy", "skypy", "skimage")

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.blocked:
                    raise ImportError(f"{name} is not installed (blocked by the test)")
                return None

        sys.meta_path.insert(0, Block())
        import pkgutil, importlib
        import lensengine.engine, lensengine.catalogs, lensengine.plugins
        for pkg in (lensengine.engine, lensengine.catalogs, lensengine.plugins):
            for mod in pkgutil.iter_modules(pkg.__path__):
                # the private helpers of torch plugins (interpretability) may need torch; their
                # public plugin modules, which the CLI loads, must not
                private_plugin = pkg is lensengine.plugins and mod.name.startswith("_")
                if mod.name != "__main__" and not private_plugin:
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
