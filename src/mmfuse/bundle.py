"""Saving and loading a trained model bundle: plain JSON and safetensors, never pickle.

A bundle is a folder holding ``config.json`` (the fully resolved config), ``preprocessors.json``
(vocabularies, statistics, labels), ``model.safetensors`` (weights) and ``manifest.json``
(format version, mmfuse version, sha256 and size of each file). Loading checks every hash before
reading anything. Saving writes a complete new folder beside the target and swaps it in with
renames, so a crash mid-save never leaves a bundle that loads with wrong contents.

The manifest and atomic-folder helpers are shared with the ONNX export (``mmfuse.export``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .atomic import replace_folder
from .errors import BundleError

FORMAT_VERSION = 1
FILES = ("config.json", "preprocessors.json", "model.safetensors")
ONNX_FORMAT = "mmfuse-onnx"  # the manifest "format" of an ONNX export (mmfuse.export)


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


def write_json(path: Path, data, indent: int | None = 2) -> None:
    """Write ``data`` as UTF-8 JSON and flush it to disk."""
    _write(path, json.dumps(data, indent=indent, ensure_ascii=False).encode())


def file_entries(folder: Path, names: Iterable[str]) -> dict[str, dict]:
    """The manifest's ``files``: ``{name: {"sha256", "bytes"}}`` of the files in ``folder``."""
    return {name: {"sha256": sha256(folder / name), "bytes": (folder / name).stat().st_size}
            for name in names}


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` to fill; when the block ends without an error
    it replaces ``target`` (renames, so readers never see a half-written folder), and on an
    error ``target`` is left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, target)


def save_bundle(directory: str | Path, config: dict, preprocessors: dict,
                state_dict: dict[str, torch.Tensor], extra: dict[str, bytes] | None = None
                ) -> Path:
    """Write a bundle to ``directory`` atomically (replacing any bundle there).

    Args:
        extra: more files, ``{relative path: bytes}`` (a classic predictor's
            ``predictors/NAME.skops``), hashed in the manifest like the rest.
    """
    from safetensors.torch import save_file

    from . import __version__

    target = Path(directory)
    with atomic_folder(target) as tmp:
        write_json(tmp / "config.json", config)
        write_json(tmp / "preprocessors.json", preprocessors, indent=None)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        for name, data in (extra or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            _write(tmp / name, data)
        write_json(tmp / "manifest.json", {
            "format_version": FORMAT_VERSION,
            "mmfuse_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": file_entries(tmp, [*FILES, *(extra or {})]),
        })
    return target


def find_bundle(path: str | Path) -> Path:
    """The bundle folder given a bundle or a run directory (which holds ``model/``)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise BundleError(f"no model bundle in {str(path)!r}: expected manifest.json there or in "
                      f"{str(path / 'model')!r}; pass the RUN_DIR that 'mmfuse train --out' wrote")


def read_manifest(folder: Path, newest: int, what: str = "bundle") -> dict:
    """The manifest of ``folder`` (a ``what``), whose ``format_version`` is at most ``newest``.

    Raises:
        BundleError: the manifest is not valid JSON or lacks ``files`` / ``format_version``,
            or its format is newer than this mmfuse reads.
    """
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files, version = manifest["files"], manifest["format_version"]
        if not isinstance(files, dict) or not isinstance(version, int):
            raise TypeError("'files' must be an object and 'format_version' an integer")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"{folder}/manifest.json is damaged ({exc}); save (or export) the "
                          "model again") from None
    if version > newest:
        raise BundleError(f"{folder}: {what} format {version} is newer than this mmfuse reads "
                          f"({newest}); upgrade mmfuse")
    return manifest


def check_files(folder: Path, manifest: dict, names: Iterable[str], what: str,
                remedy: str) -> None:
    """Check that each of ``names`` is in ``folder`` with the sha256 the manifest records.

    Raises:
        BundleError: a file is missing, or differs from the manifest (``remedy`` says what to
            do about it).
    """
    files = manifest["files"]
    for name in names:
        file = folder / name
        if not file.is_file():
            raise BundleError(f"{folder}: {name} is missing; the {what} is incomplete")
        entry = files.get(name)
        if not isinstance(entry, dict) or sha256(file) != entry.get("sha256"):
            raise BundleError(
                f"{file} does not match the sha256 in manifest.json: the file was altered or "
                f"corrupted after saving. Refusing to load it; {remedy}."
            )


def load_bundle(path: str | Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """Verify and read a bundle: ``(config, preprocessors, state_dict)``.

    Raises:
        BundleError: a file is missing, or its sha256 differs from the manifest (altered or
            corrupted), or the format version is newer than this mmfuse understands, or the
            folder is an ONNX export rather than a bundle.
    """
    from safetensors.torch import load_file

    folder = find_bundle(path)
    manifest = read_manifest(folder, FORMAT_VERSION)
    if manifest.get("format") == ONNX_FORMAT:
        raise BundleError(f"{folder} is an ONNX export, not a model bundle; load it with "
                          "mmfuse.export.load_exported, or pass the run it was exported from")
    check_files(folder, manifest, FILES, "bundle", "restore the bundle or retrain")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    preprocessors = json.loads((folder / "preprocessors.json").read_text(encoding="utf-8"))
    return config, preprocessors, load_file(str(folder / "model.safetensors"))


def bundle_file(path: str | Path, name: str) -> bytes:
    """The bytes of a bundle's extra file ``name`` (e.g. ``predictors/price.skops``), checked
    against the manifest.

    Raises:
        BundleError: the file is missing, not in the manifest, or altered.
    """
    folder = find_bundle(path)
    manifest = read_manifest(folder, FORMAT_VERSION)
    if name not in manifest["files"]:
        raise BundleError(f"{folder}: manifest.json does not list {name}, which the config "
                          "needs; the bundle is incomplete: retrain or restore it")
    check_files(folder, manifest, [name], "bundle", "restore the bundle or retrain")
    return (folder / name).read_bytes()
