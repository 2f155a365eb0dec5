"""Quantization schemes (named, self-validating) and the per-tensor plan the compiler follows.

Linear weights of the transformer blocks go to the LUT kernel formats (uniform 1-4 bit or HLQ 2-4
bit); token embeddings and the output head stay 8-bit (``q8``: int8 with one scale per group of
32) unless asked otherwise; norms, biases and routers stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgert.errors import EdgertError
from edgert.format.lut import GROUP_SIZES, HLQ_BITS, UNIFORM_BITS

FORMAT_BITS = {"uniform": UNIFORM_BITS, "hlq": HLQ_BITS}


@dataclass(frozen=True)
class QuantScheme:
    fmt: str = "uniform"
    bits: int = 4
    group_size: int = 32

    def __post_init__(self) -> None:
        if self.fmt not in FORMAT_BITS:
            raise EdgertError(
                f"unknown format {self.fmt!r}", f"use --format {' or '.join(FORMAT_BITS)}"
            )
        if self.bits not in FORMAT_BITS[self.fmt]:
            ok = ", ".join(map(str, FORMAT_BITS[self.fmt]))
            raise EdgertError(
                f"--bits {self.bits} is not supported by the {self.fmt} format", f"use one of {ok}"
            )
        if self.group_size not in GROUP_SIZES:
            raise EdgertError(
                f"--group-size {self.group_size} is not supported",
                f"use one of {', '.join(map(str, GROUP_SIZES))}",
            )

    def with_bits(self, bits: int) -> "QuantScheme":
        return QuantScheme(self.fmt, bits, self.group_size)


#: named presets (``--preset``), the way users usually ask
PRESETS = {
    "q4": QuantScheme("uniform", 4, 32),
    "q3": QuantScheme("uniform", 3, 32),
    "q2": QuantScheme("uniform", 2, 32),
    "hlq2": QuantScheme("hlq", 2, 32),
    "hlq3": QuantScheme("hlq", 3, 32),
}
