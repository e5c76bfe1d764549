"""Method and sampler plugins. Importing this package registers the built-in methods and samplers."""

from methods import (  # noqa: F401  (registers the built-in methods, then the samplers beyond euler)
    cfm,
    cfm_endpoint,
    dfm,
    dfm_uniform,
    maskgit,
    ode_samplers,
    purr,
)
from methods.registry import get_method, method_names, register  # noqa: F401
from methods.sampling import Sampler, build_sampler, get_sampler, register_sampler, sampler_names  # noqa: F401
