"""Channel rules, one module per family of ops; importing registers them all."""
from . import elementwise, layers, shape  # noqa: F401
