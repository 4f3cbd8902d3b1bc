"""Multislice electron ptychography by mini-batch gradient descent (CPU, Numba).

Public API: :func:`reconstruct`, :class:`ReconstructionParameters`, :class:`ReconstructionResult`;
the engine (:class:`MultisliceEngine`) and the forward-model maths (:mod:`.forward`) for tests and
other backends.
"""

from .engine import MultisliceEngine, affine_fit, prepare_amplitudes, reconstruct
from .parameters import ReconstructionParameters, ReconstructionResult

__all__ = ["reconstruct", "ReconstructionParameters", "ReconstructionResult", "MultisliceEngine",
           "affine_fit", "prepare_amplitudes"]
