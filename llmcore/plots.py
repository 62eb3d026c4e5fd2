"""matplotlib, the optional `plots` extra, for every figure llmcore draws (loss curves,
frontiers, sensitivity): imported only when a figure is drawn, on the file-only Agg backend."""

from __future__ import annotations

from llmcore.errors import ConfigError


def pyplot(what: str, hint: str = ""):
    """matplotlib.pyplot on the Agg backend (files only, never a window), or a ConfigError
    saying that `what` needs it and how to get it (`hint`: how to do without, e.g. a flag)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(f"{what} needs matplotlib, which is not installed: pip install 'llmcore[plots]'"
                          f"{hint}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
