"""Re-export of :mod:`nbssm.tolerances`, the one tolerance table (tests import it as ``tolerances``)."""

from nbssm.tolerances import *  # noqa: F403
from nbssm.tolerances import MODEL_F32_RTOL, MODEL_F64_RTOL, TOL, TOLERANCES, max_rel_err, tol  # noqa: F401
