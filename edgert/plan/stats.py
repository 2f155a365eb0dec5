"""What streaming did since an engine loaded: the counters the flash reader, the layer streamer,
the expert cache and the neuron cache keep, as plain data (the planner's replays count the same
things to predict them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgert.plan.sizes import fmt_size

#: how a mixture's next experts are guessed (edgert.plan.moe.ExpertPolicy)
PREDICTORS = ("router", "coact")


@dataclass
class FlashStats:
    bytes: int = 0
    reads: int = 0
    retries: int = 0
    seconds: float = 0.0


@dataclass
class StreamStats:
    """Since load: forward calls (a call reads each streamed layer once, so in decode the flash
    bytes per call are the bytes per token), tokens, seconds waiting for reads."""

    calls: int = 0
    tokens: int = 0
    stall_seconds: float = 0.0
    flash: FlashStats = field(default_factory=FlashStats)

    @property
    def bytes_per_call(self) -> float:
        return self.flash.bytes / max(self.calls, 1)

    def describe(self) -> str:
        return (
            f"{fmt_size(self.bytes_per_call)} read from flash per step, "
            f"{self.stall_seconds:.2f} s waiting for reads"
        )

    def to_dict(self) -> dict:
        d = {"calls": self.calls, "tokens": self.tokens, "stall_seconds": self.stall_seconds}
        d.update({f"flash_{k}": v for k, v in asdict(self.flash).items()})
        d["flash_bytes_per_call"] = self.bytes_per_call
        return d


@dataclass
class ExpertStats:
    """Since load. ``lookups`` = experts a layer computed; ``hits`` found them in the cache
    (ready or read ahead); ``prefetched`` reads started ahead, ``prefetch_used`` of those the
    next layer computed; ``predicted``/``predicted_right`` per predictor: experts the next layer
    was predicted to use / of those it used; ``stall_seconds``: compute waiting for reads."""

    calls: int = 0
    tokens: int = 0
    lookups: int = 0
    hits: int = 0
    prefetched: int = 0
    prefetch_used: int = 0
    prefetch_cancelled: int = 0
    evictions: int = 0
    stall_seconds: float = 0.0
    read_bytes: int = 0
    predicted: dict = field(default_factory=lambda: dict.fromkeys(PREDICTORS, 0))
    predicted_right: dict = field(default_factory=lambda: dict.fromkeys(PREDICTORS, 0))

    @property
    def bytes_per_call(self) -> float:
        return self.read_bytes / max(self.calls, 1)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def prefetch_accuracy(self) -> float:
        """Of the experts read ahead (not cancelled before their read started), the share the
        next layer used."""
        done = self.prefetched - self.prefetch_cancelled
        return self.prefetch_used / done if done > 0 else 0.0

    def predictor_accuracy(self) -> dict[str, float]:
        return {
            k: self.predicted_right[k] / self.predicted[k] if self.predicted[k] else 0.0
            for k in PREDICTORS
        }

    def describe(self) -> str:
        acc = ", ".join(f"{k} {v:.0%}" for k, v in self.predictor_accuracy().items())
        return (
            f"expert hit rate {self.hit_rate:.0%} ({self.prefetch_used} of them read ahead), "
            f"prefetch accuracy {self.prefetch_accuracy:.0%}, predictors: {acc}; "
            f"{fmt_size(self.bytes_per_call)} read from flash per step, "
            f"{self.stall_seconds:.2f} s waiting for reads"
        )

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "hit_rate": self.hit_rate,
            "prefetch_accuracy": self.prefetch_accuracy,
            "predictor_accuracy": self.predictor_accuracy(),
        }


@dataclass
class SparseStats(StreamStats):
    """What :class:`StreamStats` counts, and: neurons asked for (summed over
    layers), how many of them the window cache held; ``decode_*`` count the single-token calls
    only (prompts read more: a batch's tokens activate more neurons)."""

    active: int = 0
    hits: int = 0
    layer_calls: int = 0
    decode_calls: int = 0
    decode_active: int = 0
    decode_hits: int = 0
    decode_bytes: int = 0
    decode_requests: int = 0
    #: bytes of every bundle (reading all neurons of every layer), and their number
    all_bytes: int = 0
    neurons: int = 0

    @property
    def bytes_per_call(self) -> float:
        """Flash bytes per decode step (per call when nothing was decoded yet)."""
        if self.decode_calls:
            return self.decode_bytes / self.decode_calls
        return super().bytes_per_call

    @property
    def hit_rate(self) -> float:
        if self.decode_calls:
            return self.decode_hits / max(self.decode_active, 1)
        return self.hits / max(self.active, 1)

    @property
    def active_fraction(self) -> float:
        """Active neurons per layer and token over ffn_dim, decode steps."""
        return self.decode_active / max(self.decode_calls * self.neurons, 1)

    @property
    def flash_fraction(self) -> float:
        """Flash bytes per decode step over all bundles' bytes."""
        return self.bytes_per_call / self.all_bytes if self.all_bytes else 0.0

    def describe(self) -> str:
        return (
            f"{fmt_size(self.bytes_per_call)} read from flash per token "
            f"({100 * self.flash_fraction:.1f}% of the bundles), "
            f"{100 * self.active_fraction:.0f}% of neurons active, "
            f"{100 * self.hit_rate:.1f}% of them in the window cache, "
            f"{self.stall_seconds:.2f} s waiting for reads"
        )

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update({k: v for k, v in asdict(self).items() if k != "flash"})
        d.update(
            neuron_hit_rate=self.hit_rate,
            active_fraction=self.active_fraction,
            flash_fraction=self.flash_fraction,
        )
        return d
