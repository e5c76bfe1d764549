"""Method and sampler plugins. Importing this package registers the built-in methods and samplers."""
from methods import cfm, cfm_endpoint, dfm, dfm_uniform, purr  # noqa: F401  (registers the built-in methods)
from methods.registry import get_method, method_names, register  # noqa: F401
from methods.sampling import Sampler, get_sampler, register_sampler, sampler_names  # noqa: F401
