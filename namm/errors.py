"""Errors whose message is the whole story: they name the setting and the fix, so entry points print them
without a traceback. Kept free of Hydra and omegaconf so every layer (and the GPU device check) can raise them."""


class ConfigError(ValueError):
    """A setting is wrong; the message names the key and the fix. Raised before any model loads."""
