"""Method plugins. Importing this package registers the built-in methods."""
from methods.registry import get_method, method_names, register  # noqa: F401
from methods import cfm, cfm_endpoint, dfm, dfm_uniform, purr  # noqa: F401,E402  (registers the built-ins)
