"""Model inputs as the analyses see them: a tensor, or a tuple / list / dict holding tensors.

Patching and attribution both compare a clean and a corrupted input and stack copies of inputs
along the batch, so the checks live here, below both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from circuits.errors import InputError, ShapeMismatchError


def tensors(inputs: Any) -> Iterator[Tensor]:
    """Every tensor in `inputs`, depth first (a tensor, or nested tuples / lists / dicts)."""
    if isinstance(inputs, Tensor):
        yield inputs
    elif isinstance(inputs, tuple | list):
        for x in inputs:
            yield from tensors(x)
    elif isinstance(inputs, dict):
        for x in inputs.values():
            yield from tensors(x)


def batch_size(inputs: Any) -> int:
    """The batch size of a model input: the first axis of its first tensor."""
    for t in tensors(inputs):
        if t.ndim > 0:
            return int(t.shape[0])
        break
    raise InputError(
        "inputs need a batch axis: a tensor (or a tuple / dict of tensors) whose first axis is "
        "the batch"
    )


def check_pair(clean: Any, corrupt: Any) -> None:
    """Clean and corrupted inputs must have the same structure and tensor shapes, with a batch."""
    a = [tuple(t.shape) for t in tensors(clean)]
    b = [tuple(t.shape) for t in tensors(corrupt)]
    if type(clean) is not type(corrupt) or a != b:
        raise ShapeMismatchError(
            f"clean and corrupted inputs must have the same shapes, got {a} and {b}; they are "
            "compared position by position and example by example, so pad or trim both to one "
            "length and batch size"
        )
    batch_size(clean)


def repeat_rows(inputs: Any, k: int) -> Any:
    """Every tensor in `inputs` repeated k times along dim 0 (variant-major: rows i*B..)."""
    if isinstance(inputs, Tensor):
        return inputs.repeat(k, *([1] * (inputs.ndim - 1)))
    if isinstance(inputs, tuple | list):
        return type(inputs)(repeat_rows(x, k) for x in inputs)
    if isinstance(inputs, dict):
        return {key: repeat_rows(x, k) for key, x in inputs.items()}
    return inputs


def check_gray_images(images: object, model: str) -> Tensor:
    """`images` if it is a batch x 1 x h x w tensor, else InputError; `model` names the taker."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 1:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(
            f"{model} takes grayscale images of shape batch x 1 x h x w, got {got}; add the "
            "channel axis with images.unsqueeze(1)"
        )
    return images
