"""mednets: classic 3D medical-image networks, built and explained.

``import mednets`` is deliberately light: it imports neither TensorFlow, Keras nor
PyTorch. Framework code lives in :mod:`mednets.keras` and :mod:`mednets.torch`, which
are imported only when you ask for them.
"""

__all__ = ["__version__"]

__version__ = "0.2.0"
