"""The 1000 ImageNet class names, shipped in ``core/models/data`` (read without network).

Keras' ``decode_predictions`` downloads this index at run time; every ImageNet classifier
here (``resnet50``, ``imagenet-lite``) names its classes from the shipped copy instead, so
their labels are the same strings (``tabby``, ``espresso``, ``missile``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

CLASS_INDEX = "data/imagenet_class_index.json"  # inside core.models (package data)


@lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, in class-number order."""
    index = json.loads(
        resources.files("core.models").joinpath(CLASS_INDEX).read_text(encoding="utf-8")
    )
    return [index[str(i)][1] for i in range(len(index))]
