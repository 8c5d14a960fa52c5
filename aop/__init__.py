"""aop: the 3D data Analysis Optimization Pipeline.

Bayesian optimisation of 3D microscopy segmentation post-processing and classifier design, run as
Ray Tune trials and recorded in MLflow. The core (``aop.metrics``, ``aop.segmentation.postprocess``,
``aop.synth``, ``aop.io``) works on NumPy arrays and imports neither Ray nor MLflow.
"""

from aop.errors import AopError

__version__ = "0.1.0"
__all__ = ["AopError", "__version__"]
