"""Errors whose message is the whole story: they name the setting and the fix, so entry points print them
without a traceback. Kept free of Hydra and omegaconf so every layer (and the GPU device check) can raise them."""


class ConfigError(ValueError):
    """A setting is wrong; the message names the key and the fix. Raised before any model loads."""


class CorruptFileError(ConfigError):
    """A file read back (a cache, an exported NAMM, a status record) cannot be parsed or holds invalid values;
    the message names the file, the field and the fix. Caches catch it to set the file aside and recompute."""
