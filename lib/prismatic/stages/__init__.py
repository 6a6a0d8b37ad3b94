"""Stages: each a small class (``prismatic.stages.<name>``) that reads tables, calls one module's logic, MERGEs
its output and reports counts; the registry lists them in pipeline order. See :mod:`prismatic.stages.base`.

Transitional: the stage functions of the former ``prismatic/stages.py`` live in ``_core`` and are re-exported
here until each moves into its stage module.
"""

from prismatic.stages._core import *  # noqa: F403  (transitional, see above)
from prismatic.stages._core import (  # noqa: F401  (private names some callers use)
    _chunks_by_bucket,
    _pool_where,
)
from prismatic.stages.base import Context, Option, Report, Stage  # noqa: F401
