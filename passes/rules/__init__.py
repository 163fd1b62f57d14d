"""Channel rules, one module per family of ops; importing registers them all."""
from . import attention, elementwise, layers, shape  # noqa: F401
