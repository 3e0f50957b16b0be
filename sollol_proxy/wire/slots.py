"""Ollama's facts about parallel slots that both the proxy and the simulated node rely on."""

from __future__ import annotations

# llm/server.go (reference 5.1): these architectures run with a single slot whatever OLLAMA_NUM_PARALLEL says.
SINGLE_SLOT_FAMILIES = frozenset(
    {
        "mllama",
        "qwen3vl",
        "qwen3vlmoe",
        "qwen35",
        "qwen35moe",
        "qwen3next",
        "lfm2",
        "lfm2moe",
        "nemotron_h",
        "nemotron_h_moe",
        "nemotron_h_omni",
    }
)
