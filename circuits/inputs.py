"""Model inputs as the analyses see them: a tensor, or a tuple / list / dict holding tensors.

Patching and attribution both compare a clean and a corrupted input and stack copies of inputs
along the batch (`repeat`, and `split` for the outputs), so the checks live here, below both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from circuits.errors import InputError, ModelError, ShapeMismatchError


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


def repeat(inputs: Any, k: int) -> Any:
    """`inputs` repeated k times along the batch axis: variant i is rows i*B .. (i+1)*B - 1.

    Tensors are repeated; tuples, lists and dicts are walked; other values inside them pass through.
    """
    if k == 1:
        return inputs
    if isinstance(inputs, Tensor):
        return inputs.repeat(k, *([1] * (inputs.ndim - 1)))
    if isinstance(inputs, tuple | list):
        return type(inputs)(repeat(x, k) if _holds_tensors(x) else x for x in inputs)
    if isinstance(inputs, dict):
        return {n: repeat(x, k) if _holds_tensors(x) else x for n, x in inputs.items()}
    raise InputError(f"cannot batch inputs of type {type(inputs).__name__}; pass tensors")


def split(output: Any, k: int, batch: int) -> list[Any]:
    """The stacked output of k variants cut back into k outputs of `batch` rows each."""
    if k == 1:
        return [output]
    if isinstance(output, Tensor):
        if output.ndim == 0 or output.shape[0] != k * batch:
            raise ModelError(
                f"the model's output {tuple(output.shape)} does not keep the batch axis first "
                f"({k * batch} rows), so stacked variants cannot be told apart; pass "
                f"max_batch={batch} to run one variant per forward pass"
            )
        return list(output.split(batch))
    if isinstance(output, tuple | list):
        parts = [split(x, k, batch) for x in output]
        return [type(output)(p[i] for p in parts) for i in range(k)]
    if isinstance(output, dict):
        parts_by_key = {n: split(x, k, batch) for n, x in output.items()}
        return [{n: parts_by_key[n][i] for n in output} for i in range(k)]
    raise ModelError(
        f"cannot split a model output of type {type(output).__name__} into variants; pass "
        f"max_batch={batch} to run one variant per forward pass"
    )


def describe(inputs: Any) -> str:
    """A short description of inputs for error messages: type, shape and dtype."""
    if isinstance(inputs, Tensor):
        return f"a tensor of shape {tuple(inputs.shape)} and dtype {inputs.dtype}"
    return f"a {type(inputs).__name__}"


def _holds_tensors(inputs: Any) -> bool:
    return next(tensors(inputs), None) is not None


def check_gray_images(images: object, model: str) -> Tensor:
    """`images` if it is a batch x 1 x h x w tensor, else InputError; `model` names the taker."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 1:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(
            f"{model} takes grayscale images of shape batch x 1 x h x w, got {got}; add the "
            "channel axis with images.unsqueeze(1)"
        )
    return images
