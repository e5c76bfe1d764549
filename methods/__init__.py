"""Method plugins. Importing this package registers the built-in methods."""
from methods.registry import get_method, method_names, register  # noqa: F401
