"""The Hugging Face Hub as users meet it: one quick reachability check, and the hints every message uses.

huggingface_hub retries a failed download five times with backoff (five "Retrying in Ns" lines and about
25 s) before giving up. Without a network that is only a slow way to fail, so callers ask `unreachable()`
first: a single HEAD of the file they want, without retries, through huggingface_hub's own session
(proxies, HF_ENDPOINT and tokens apply). An HTTP answer of any status counts as reachable: gated,
missing and private repositories keep their own precise errors.
"""

from __future__ import annotations

import os

from automodel.catalog.errors import UserError

LOGIN = "`hf auth login` (or export HF_TOKEN=...)"
OFFLINE_HINT = ("set HF_HUB_OFFLINE=1 to use what is already cached, or point at a local model directory "
                "(or config.json) instead of a Hub id")
PROBE_TIMEOUT_S = 2.0  # one connect + HEAD; a working link answers well within it


def offline() -> bool:
    """True in offline mode: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub read it at import,
    or as set since (a caller may set the variable after the import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's network-level errors (huggingface_hub 2.x ships httpx2, 1.x httpx)."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def unreachable(repo_id: str, filename: str = "config.json", *, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the Hub answers for `repo_id/filename` (any HTTP status); otherwise the network error in
    one line. Never retries, never downloads."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=timeout)
    except HfHubHTTPError:
        return None  # the Hub answered; the caller's download reports what it said
    except _transport_errors() as err:
        return (str(err).splitlines() or [type(err).__name__])[0] or type(err).__name__
    return None


def require_reachable(repo_id: str, *, field: str) -> None:
    """Fail at once, naming HF_HUB_OFFLINE=1 and the local alternative, when the Hub cannot be reached and
    offline mode is not set (in offline mode transformers reads the cache without asking the Hub)."""
    if offline():
        return
    problem = unreachable(repo_id)
    if problem is not None:
        raise UserError(f"cannot reach the Hugging Face Hub for {repo_id!r} ({problem})", field=field,
                        hint=OFFLINE_HINT)
