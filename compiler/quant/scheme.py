"""Quantization schemes (named, self-validating) and the per-tensor plan the compiler follows.

Linear weights of the transformer blocks go to the LUT kernel formats (uniform 1-4 bit or HLQ 2-4
bit); token embeddings and the output head stay 8-bit (``q8``: int8 with one scale per group of
32) unless asked otherwise; norms, biases and routers stay float32.

Widths are counted in stored bits per weight (codes plus float16 group parameters,
:func:`edgert.format.lut.bits_per_weight`). An HLQ width whose group parameters make it weigh as
much as uniform with one more bit at the same group size (HLQ 3-bit at group 32: 5.0 bits, as
uniform 4-bit) is not offered: it would cost the bytes of the better format.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgert.errors import EdgertError
from edgert.format.lut import GROUP_SIZES, HLQ_BITS, UNIFORM_BITS, bits_per_weight

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
        if not offered(self.fmt, self.bits, self.group_size):
            bigger = [g for g in GROUP_SIZES if offered(self.fmt, self.bits, g)]
            raise EdgertError(
                f"{self.fmt} {self.bits}-bit at group size {self.group_size} weighs "
                f"{self.bpw:.2f} bits per weight, as much as uniform {self.bits + 1}-bit",
                f"use --group-size {bigger[0]} or uniform --bits {self.bits + 1}",
            )

    @property
    def bpw(self) -> float:
        """Stored bits per weight of this scheme's LUT tensors."""
        return bits_per_weight(self.fmt, self.bits, self.group_size)

    def with_bits(self, bits: int) -> "QuantScheme":
        return QuantScheme(self.fmt, bits, self.group_size)

    def widths(self) -> tuple[int, ...]:
        """The widths this format offers at this group size (bit allocation's candidates)."""
        return tuple(b for b in FORMAT_BITS[self.fmt] if offered(self.fmt, b, self.group_size))


def offered(fmt: str, bits: int, group_size: int) -> bool:
    """False where uniform with one more bit at the same group size weighs no more."""
    if fmt == "uniform" or bits + 1 not in UNIFORM_BITS:
        return True
    return bits_per_weight(fmt, bits, group_size) < bits_per_weight("uniform", bits + 1, group_size)


#: named presets (``--preset``), the way users usually ask
PRESETS = {
    "q4": QuantScheme("uniform", 4, 32),
    "q3": QuantScheme("uniform", 3, 32),
    "q2": QuantScheme("uniform", 2, 32),
    "hlq2": QuantScheme("hlq", 2, 32),
    "hlq3": QuantScheme("hlq", 3, 64),
}
