"""Search algorithms by name (`evo=<name>`): one module and one `conf/evo/<name>.yaml` each.

Importing this package loads no EvoTorch: a searcher's module is imported when it is first asked for, so the
evaluation side (which reads `namm.evolution.config`) never pays for it.
"""

from namm.evolution.searchers.registry import available_searchers, build_searcher, register_searcher, searcher_class

__all__ = ["available_searchers", "build_searcher", "register_searcher", "searcher_class"]
