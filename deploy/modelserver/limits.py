"""The model server's request bounds, and the one shape rule every input passes before it is built.

A request is untrusted bytes: a TensorProto can declare any shape over one value, and a JSON
body can nest without end. Every input is therefore checked against the signature and these
limits from its declared shape alone, before an array is materialised, and a violation is
INVALID_ARGUMENT naming the problem (never echoing the input). No TensorFlow here.

Defaults (the MODELSERVER_* settings in stream/settings.py) and TF Serving's behaviour:
- max gRPC message 64 MiB each way; TF Serving lifts gRPC's 4 MiB to INT32_MAX (2 GiB).
- max batch (leading dimension) 1000, TF Serving's default batching `max_batch_size`.
- REST body 8 MiB (TF Serving's evhttp reads any size); JSON costs ~10x its size in memory.
- REST timeout 30 s per request, TF Serving's `--rest_api_timeout_in_ms` default.
- 16 REST and 16 gRPC worker threads (TF Serving: `--rest_api_num_threads`, `--grpc_max_threads`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from recstream.deploy.modelserver.errors import invalid

MIB = 1 << 20
GRPC_MESSAGE_CEILING = 2**31 - 1  # gRPC's own ceiling (a signed 32-bit length)
MAX_RANK = 32  # TensorFlow allows 254; no served model needs more than a handful
MAX_BROADCAST_ELEMENTS = 1024  # one value may fill at most this many elements (TensorProto broadcast)
NAME_SHOWN = 64  # longest client-chosen name (alias, key) quoted in an error message


@dataclass(frozen=True, slots=True)
class Limits:
    max_grpc_message_bytes: int = 64 * MIB
    max_batch: int = 1000
    max_string_bytes: int = 1 * MIB
    max_rest_body_bytes: int = 8 * MIB
    rest_timeout_s: float = 30.0
    rest_workers: int = 16
    grpc_workers: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.max_grpc_message_bytes <= GRPC_MESSAGE_CEILING:
            raise ValueError(f"max gRPC message bytes must be in 1..{GRPC_MESSAGE_CEILING}")
        for name in ("max_batch", "max_string_bytes", "max_rest_body_bytes", "rest_workers", "grpc_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not self.rest_timeout_s > 0:
            raise ValueError("rest_timeout_s must be > 0")

    @property
    def max_input_bytes(self) -> int:
        """Most bytes one decoded input may take: no more than a request message may carry."""
        return self.max_grpc_message_bytes


def shown(name: str) -> str:
    """A client-chosen name as quoted in an error: at most NAME_SHOWN characters."""
    return name if len(name) <= NAME_SHOWN else name[:NAME_SHOWN] + "..."


def _shape(dims: Sequence[int]) -> str:
    return "[" + ",".join("?" if d < 0 else str(d) for d in dims) + "]"


def check_dims(alias: str, dims: Sequence[int], spec: Sequence[int] | None, limits: Limits) -> int:
    """The element count of a declared shape, once it fits the signature's `spec` (None: any rank)
    and the limits: rank, no negative dimension, batch (leading dimension) <= max_batch."""
    name = shown(alias)
    if len(dims) > MAX_RANK:
        raise invalid(f"input tensor {name} has rank {len(dims)}, more than {MAX_RANK}")
    if any(d < 0 for d in dims):
        raise invalid(f"input tensor {name} has a negative dimension")
    if spec is not None:
        compatible = len(spec) == len(dims) and all(s < 0 or s == d for s, d in zip(spec, dims, strict=True))
        if not compatible:
            raise invalid(
                f"input tensor {name} has shape {_shape(dims)}, "
                f"incompatible with the signature's {_shape(spec)}"
            )
    if dims and dims[0] > limits.max_batch:
        raise invalid(f"input tensor {name} has batch size {dims[0]}, more than the limit {limits.max_batch}")
    return math.prod(dims)


def check_size(alias: str, count: int, element_bytes: int, limits: Limits) -> None:
    """An input of `count` elements of `element_bytes` each must fit in max_input_bytes."""
    if count * element_bytes > limits.max_input_bytes:
        raise invalid(
            f"input tensor {shown(alias)} would take more than {limits.max_input_bytes} bytes "
            f"({count} elements)"
        )


def check_strings(alias: str, lengths: Sequence[int], count: int, limits: Limits) -> None:
    """String elements: each at most max_string_bytes, all together at most max_input_bytes.
    `lengths` are the values present; a single one broadcast to `count` elements counts `count` times."""
    longest = max(lengths, default=0)
    if longest > limits.max_string_bytes:
        raise invalid(
            f"input tensor {shown(alias)} has a string of {longest} bytes, "
            f"more than the limit {limits.max_string_bytes}"
        )
    total = sum(lengths) if len(lengths) == count else longest * count
    check_size(alias, 1, total + 8 * count, limits)  # 8: one reference per element
