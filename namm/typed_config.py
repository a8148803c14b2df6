"""A config node read into its dataclass schema, with every problem reported as one `ConfigError`.

omegaconf checks the keys and types, the dataclass its values (`__post_init__`); both entry points read the
model, task and engine nodes through here, so a bad setting fails the same way before any model loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from namm.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

Schema = TypeVar("Schema")


def typed_config(schema: type[Schema], node: DictConfig | Mapping[str, Any] | None, group: str = "") -> Schema:
    """`node` (None: the schema's defaults) as a `schema` instance; `group` (empty for a root config) names
    the node in the error."""
    # here: a schema built directly needs no omegaconf (the GPU image has none, scripts/device_check.py)
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(schema)
    OmegaConf.set_readonly(base, False)  # a frozen dataclass gives a read-only node
    try:
        return OmegaConf.to_object(OmegaConf.merge(base, node or {}))  # type: ignore[return-value]
    except ConfigError:
        raise
    except OmegaConfBaseException as error:  # a key or a type: name the full key, e.g. engine.update_interval
        key = ".".join(part for part in (group, getattr(error, "full_key", None)) if part)
        raise ConfigError(f"{key}: {str(error).splitlines()[0]}") from error  # the rest repeats the key
    except ValueError as error:  # a value the schema's __post_init__ refuses
        raise ConfigError(f"{group}: {error}" if group else str(error)) from error
