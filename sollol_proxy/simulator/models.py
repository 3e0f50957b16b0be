"""Model records and Ollama's model-name rules (§2.1).

Names are matched the way Ollama matches them: ``llama3.2``, ``llama3.2:latest``,
``library/llama3.2`` and ``registry.ollama.ai/library/llama3.2:latest`` are the same model,
compared case-insensitively, and shown in the ``DisplayShortest`` form.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import NamedTuple

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Ollama's name parts allow letters, digits, '_', '-', '.' (and the host may carry a port).
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(:[0-9]+)?$")


class ModelName(NamedTuple):
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def key(self) -> str:
        """Lookup key: Ollama compares names case-insensitively."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".lower()

    @property
    def display(self) -> str:
        """``model.Name.DisplayShortest()``: drop the default host and namespace."""
        prefix = ""
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"


def parse_name(name: str) -> ModelName | None:
    """Parse a model name with Ollama's defaults; None when it is not a valid name."""
    if not name:
        return None
    base = name.split("@", 1)[0]  # a trailing @digest does not take part in lookup
    parts = base.split("/")
    if len(parts) > 3 or any(p == "" for p in parts):
        return None
    last = parts[-1]
    model, tag = last.rsplit(":", 1) if ":" in last else (last, DEFAULT_TAG)
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace = parts[0], parts[1]
    elif len(parts) == 2:
        namespace = parts[0]
    if not (
        _HOST.match(host) and _PART.match(namespace) and _PART.match(model) and _PART.match(tag)
    ):
        return None
    return ModelName(host, namespace, model, tag)


def display_name(name: str) -> str:
    """Normalised display form, or the input unchanged when it does not parse."""
    parsed = parse_name(name)
    return parsed.display if parsed else name


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class SimModel:
    """One model on the simulated node's disk (or in its fake registry)."""

    name: str
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    size: int = 2019393189
    digest: str = ""
    modified_at: str = "2025-05-04T17:37:44.706015396-07:00"
    context_length: int = 131072
    embedding_length: int = 3072
    capabilities: tuple[str, ...] = ("completion", "tools")
    embedding_only: bool = False
    families: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # Frozen, so derived defaults are filled in through object.__setattr__.
        object.__setattr__(self, "name", display_name(self.name))
        if not self.digest:
            object.__setattr__(self, "digest", sha256_hex(f"manifest:{self.name}"))
        if not self.families:
            object.__setattr__(self, "families", (self.family,))
        if self.embedding_only and self.capabilities == ("completion", "tools"):
            object.__setattr__(self, "capabilities", ("embedding",))

    @property
    def key(self) -> str:
        parsed = parse_name(self.name)
        return parsed.key if parsed else self.name.lower()

    @property
    def namespace(self) -> str:
        parsed = parse_name(self.name)
        return parsed.namespace if parsed else DEFAULT_NAMESPACE

    def renamed(self, name: str, modified_at: str) -> SimModel:
        return replace(self, name=name, modified_at=modified_at)

    def layers(self) -> list[tuple[str, int]]:
        """(digest, size) of the blobs a pull or push transfers: weights plus a template layer."""
        template = 1429
        return [
            ("sha256:" + sha256_hex(f"weights:{self.digest}"), max(self.size - template, 1)),
            ("sha256:" + sha256_hex(f"template:{self.digest}"), template),
        ]

    def details(self, *, with_lengths: bool = True) -> dict[str, object]:
        """``ModelDetails`` in Go field order (types.go:933)."""
        out: dict[str, object] = {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": list(self.families),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }
        if with_lengths:
            if self.context_length:
                out["context_length"] = self.context_length
            if self.embedding_length:
                out["embedding_length"] = self.embedding_length
        return out


def default_catalog() -> dict[str, SimModel]:
    """A few well-known models, keyed by display name."""
    models = [
        SimModel(
            name="llama3.2:latest",
            digest="a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
        ),
        SimModel(
            name="qwen2.5:7b",
            family="qwen2",
            parameter_size="7.6B",
            size=4683087332,
            digest="845dbda0ea48ed749caafd9e6037047aa19acfcfd82e704d7ca97d631a0b697e",
            modified_at="2025-04-12T09:13:52.123456789-07:00",
            context_length=32768,
            embedding_length=3584,
        ),
        SimModel(
            name="mistral:latest",
            family="llama",
            parameter_size="7.2B",
            quantization_level="Q4_0",
            size=4113301824,
            digest="f974a74358d62a017b37c6f424fcdf2744ca02926c4f952513ddf474b2fa5091",
            modified_at="2025-03-01T11:02:03.5-08:00",
            context_length=32768,
            embedding_length=4096,
        ),
        SimModel(
            name="all-minilm:latest",
            family="bert",
            parameter_size="23M",
            quantization_level="F16",
            size=45960996,
            digest="1b226e2802dbb772b5fc32a58f103ca1804ef7501331012de126ab22f67475ef",
            modified_at="2025-02-20T08:00:00.25-08:00",
            context_length=512,
            embedding_length=384,
            embedding_only=True,
        ),
        SimModel(
            name="nomic-embed-text:latest",
            family="nomic-bert",
            parameter_size="137M",
            quantization_level="F16",
            size=274302450,
            digest="0a109f422b47e3a30ba2b10eca18548e944e8a23073ee3f3e947efcf3c45e59f",
            modified_at="2025-01-15T16:45:10.987654321-08:00",
            context_length=2048,
            embedding_length=768,
            embedding_only=True,
        ),
    ]
    return {m.name: m for m in models}
