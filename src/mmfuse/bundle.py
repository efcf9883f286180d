"""Saving and loading a trained model bundle: plain JSON and safetensors, never pickle.

A bundle is a folder holding ``config.json`` (the fully resolved config), ``preprocessors.json``
(vocabularies, statistics, labels), ``model.safetensors`` (weights) and ``manifest.json``
(format version, mmfuse version, sha256 and size of each file). Loading checks every hash before
reading anything. Saving writes a complete new folder beside the target and swaps it in with
renames, so a crash mid-save never leaves a bundle that loads with wrong contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

from .errors import BundleError

FORMAT_VERSION = 1
FILES = ("config.json", "preprocessors.json", "model.safetensors")


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_bundle(directory: str | Path, config: dict, preprocessors: dict,
                state_dict: dict[str, torch.Tensor]) -> Path:
    """Write a bundle to ``directory`` atomically (replacing any bundle there)."""
    from safetensors.torch import save_file

    from . import __version__

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write(tmp / "config.json", json.dumps(config, indent=2, ensure_ascii=False).encode())
    _write(tmp / "preprocessors.json", json.dumps(preprocessors, ensure_ascii=False).encode())
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(tmp / "model.safetensors"))
    manifest = {
        "format_version": FORMAT_VERSION,
        "mmfuse_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {name: {"sha256": sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                  for name in FILES},
    }
    _write(tmp / "manifest.json", json.dumps(manifest, indent=2).encode())
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def find_bundle(path: str | Path) -> Path:
    """The bundle folder given a bundle or a run directory (which holds ``model/``)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise BundleError(f"no model bundle in {str(path)!r}: expected manifest.json there or in "
                      f"{str(path / 'model')!r}; pass the RUN_DIR that 'mmfuse train --out' wrote")


def load_bundle(path: str | Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """Verify and read a bundle: ``(config, preprocessors, state_dict)``.

    Raises:
        BundleError: a file is missing, or its sha256 differs from the manifest (altered or
            corrupted), or the format version is newer than this mmfuse understands.
    """
    from safetensors.torch import load_file

    folder = find_bundle(path)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["files"]
        version = manifest["format_version"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"{folder}/manifest.json is damaged ({exc}); re-save the model") from None
    if version > FORMAT_VERSION:
        raise BundleError(f"{folder}: bundle format {version} is newer than this mmfuse reads "
                          f"({FORMAT_VERSION}); upgrade mmfuse")
    for name in FILES:
        file = folder / name
        if not file.is_file():
            raise BundleError(f"{folder}: {name} is missing; the bundle is incomplete")
        if name not in files or sha256(file) != files[name]["sha256"]:
            raise BundleError(
                f"{file} does not match the sha256 in manifest.json: the file was altered or "
                "corrupted after saving. Refusing to load it; restore the bundle or retrain."
            )
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    preprocessors = json.loads((folder / "preprocessors.json").read_text(encoding="utf-8"))
    return config, preprocessors, load_file(str(folder / "model.safetensors"))
