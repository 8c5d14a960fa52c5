"""Inference speed of an encoder + head in instances per second (Table IV of the paper).

The paper gives seconds per image; aop measures instances (crops) per second at batch 1 and batch
32 on the current device, which also shows what batching buys. Weights are random: speed does not
depend on them.

:func:`latency_ms` times any classifier the same way (the median of repeated calls on one batch,
after untimed ones), as milliseconds per instance: a classifier study with a ``latency_ms``
objective measures each trial's own model with it, on a batch of its validation instances
(:func:`batch_of`).

Example
-------
>>> speed = inference_speed("test_resnet", in_chans=1, crop_size=(2, 32, 32), batch_sizes=(1,),
...                         repeats=1, warmup=0)
>>> speed["instances_per_s"][1] > 0
True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from aop.classification.module import CropClassifier

__all__ = ["batch_of", "inference_speed", "latency_ms"]

#: The batch size of :func:`latency_ms` in a classifier study (Table IV's batch).
LATENCY_BATCH = 32


def batch_of(count: int, size: int = LATENCY_BATCH) -> np.ndarray:
    """Indices of one batch of ``size`` out of ``count`` instances: ``0, 1, ...`` cycled.

    >>> batch_of(3, 7).tolist()
    [0, 1, 2, 0, 1, 2, 0]
    """
    if count < 1:
        raise ValueError("batch_of: no instances to make a batch of")
    return np.arange(size) % count


def latency_ms(
    run_batch: Callable[[], Any],
    batch_size: int = LATENCY_BATCH,
    *,
    repeats: int = 5,
    warmup: int = 1,
    synchronize: Callable[[], Any] | None = None,
) -> float:
    """Milliseconds per instance of ``run_batch()``, a call that classifies ``batch_size`` ones.

    Parameters
    ----------
    run_batch : callable
        Classifies one batch (e.g. a network's forward pass on a tensor already on its device).
    batch_size : int
        Instances per call.
    repeats, warmup : int
        Timed and untimed calls; the median (upper) of the timed ones counts.
    synchronize : callable, optional
        Called before and after each timed call (``torch.cuda.synchronize`` on a GPU, whose
        calls return before the work is done).

    Examples
    --------
    >>> latency_ms(lambda: time.sleep(0.032), batch_size=32, repeats=1, warmup=0) >= 1.0
    True
    """
    times = []
    for index in range(warmup + repeats):
        if synchronize is not None:
            synchronize()
        start = time.perf_counter()
        run_batch()
        if synchronize is not None:
            synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median_high(times) / batch_size


def inference_speed(
    encoder: str,
    *,
    head: str = "slice",
    in_chans: int = 3,
    crop_size: Sequence[int] = (16, 64, 64),
    num_classes: int = 4,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, Any]:
    """Instances per second of ``encoder`` + ``head`` at each batch size, on the current device.

    Parameters
    ----------
    encoder, head : str
        The classifier to time.
    in_chans, crop_size, num_classes
        Crop channels, crop size ``(Z, Y, X)`` and classes.
    batch_sizes : sequence of int
        Batch sizes to time (Table IV of aop: 1 and 32).
    repeats, warmup : int
        Timed and untimed forward passes per batch size; the median of the timed ones counts.

    Returns
    -------
    dict
        ``encoder``, ``head``, ``device`` (CUDA when available, else CPU; on CUDA the forward runs
        in float16 autocast, as the study trains: ``16-mixed``), ``parameters`` (encoder + head),
        ``crop_size``, ``seconds_per_batch`` and ``instances_per_s`` keyed by batch size.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    model = CropClassifier(
        encoder, in_chans=in_chans, crop_size=crop_size, num_classes=num_classes, head=head
    ).to(device).eval()
    seconds: dict[int, float] = {}
    with torch.inference_mode():
        for batch in batch_sizes:
            x = torch.randn(int(batch), in_chans, *crop_size, device=device)
            times = []
            for i in range(warmup + repeats):
                if on_gpu:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                with torch.autocast(device.type, torch.float16, enabled=on_gpu):
                    model(x)
                if on_gpu:
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
            seconds[int(batch)] = statistics.median_high(times)
    return {
        "encoder": encoder,
        "head": head,
        "device": str(device),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "crop_size": list(crop_size),
        "seconds_per_batch": seconds,
        "instances_per_s": {b: b / s for b, s in seconds.items()},
    }
