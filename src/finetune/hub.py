"""Decide once whether the Hugging Face Hub is reachable, so offline runs fail fast.

Without a network, `from_pretrained("gpt2")` and `load_dataset("nyu-mll/glue")` retry for 20-50 s
before failing. We probe the Hub endpoint with a short timeout and, when it cannot be reached,
switch the libraries to offline mode: cached files still work and anything else fails at once.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TRUE_VALUES = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    return any(os.environ.get(var, "").lower() in TRUE_VALUES for var in OFFLINE_VARS)


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def set_offline_mode(offline: bool | None) -> bool:
    """Return whether this run is offline; when it is, make every HF library fail fast."""
    if offline is None:
        offline = offline_requested() or not hub_reachable()
    if offline:
        for var in OFFLINE_VARS:
            os.environ[var] = "1"
        # huggingface_hub and datasets read these at import time; update the live constants too.
        try:
            import huggingface_hub.constants as hub_constants

            hub_constants.HF_HUB_OFFLINE = True
        except (ImportError, AttributeError):
            pass
        try:
            import datasets.config as datasets_config

            datasets_config.HF_HUB_OFFLINE = True
            datasets_config.HF_DATASETS_OFFLINE = True
        except (ImportError, AttributeError):
            pass
    return offline
