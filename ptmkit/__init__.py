"""ptmkit: pre-train language models with every classic objective on one shared backbone."""

__version__ = "0.1.0"
