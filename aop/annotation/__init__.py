"""Assisted class annotation in the browser (paper II-C, Fig. 1 step 5).

The instances of a data set's ``labels/`` are shown one after another, each in its neighbourhood
(orthogonal slices through the centroid and a maximum projection per channel, outlines drawn), and
the operator only names the class with one key. Every key press is one atomic write of the data
set's ``annotations.csv`` (:mod:`aop.instances.annotations`). :mod:`aop.annotation.render` draws the
pictures, :mod:`aop.annotation.session` holds the state and the rules, :mod:`aop.annotation.server`
serves the page (``static/``: plain HTML, CSS and JavaScript) with FastAPI and uvicorn.

Examples
--------
>>> from aop.annotation import AnnotationSession, AnnotationServer      # doctest: +SKIP
>>> session = AnnotationSession("data/real", classes=["myotube", "schwann"], annotator="ana")
>>> AnnotationServer(session).run()    # open the printed http://127.0.0.1:PORT/  # doctest: +SKIP
"""

from aop.annotation.render import (
    InstanceBox,
    RenderedInstance,
    channel_limits,
    crop_box,
    index_instances,
    render_instance,
)
from aop.annotation.server import AnnotationServer, create_app, is_loopback, page_url
from aop.annotation.session import ORDERS, AnnotationSession, RequestError, resolve_classes

__all__ = [
    "ORDERS",
    "AnnotationServer",
    "AnnotationSession",
    "InstanceBox",
    "RenderedInstance",
    "RequestError",
    "channel_limits",
    "create_app",
    "crop_box",
    "index_instances",
    "is_loopback",
    "page_url",
    "render_instance",
    "resolve_classes",
]
