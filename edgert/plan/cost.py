"""Predicted decode speed and memory of a model under a DRAM plan (a dense model's
:class:`edgert.plan.dram.DramPlan`, a mixture of experts' :class:`edgert.plan.moe.MoePlan`) on a
device, from the device's figures in ``targets/*.toml``.

A decode step reads every weight it uses once from DRAM (streamed layers from their staging
buffers; a mixture of experts' resident part and top-k experts per layer) plus the KV cache so
far, and reads the streamed layers (a mixture's experts the cache misses or reads ahead: the
compiler's routing trace replayed through the cache, else uniform routing) from flash:

- DRAM: (weight bytes + KV bytes) / min(DRAM bandwidth x kernel efficiency,
  cores x per-core decode rate) — memory-bound or compute-bound, whichever binds; the DRAM
  bandwidth is the target file's for a board, and for a run on this machine (``edgert bench``,
  emulated boards included) its read rate measured at the run's threads just before it;
- flash: streamed bytes / flash bandwidth + one read latency per read request.

A dense model's streamed layers are read ahead on I/O threads beside compute, so a step takes
the longer of the two. A mixture with a replayed trace reads as the replay says: the experts a
layer reads ahead (issued as it routes, for the next layer) overlap one layer's compute, and
experts read on a miss are waited for, so a step takes
sum over layers of max(layer compute, its reads ahead) + reads on a miss. A sparse FFN's reads
(the active neurons its window cache misses, as the replayed activity trace says) wait for the
layer's gate, which picks them, so a step takes DRAM + flash time.

Memory: the plan's bytes (resident weights + KV + scratch + staging) on top of the process's own
baseline (interpreter, libraries), which the caller measures.

Prefill (time to first token) is compute-bound: a prompt's multiply-adds (every linear layer per
token, attention over the prompt so far, the head once) at the int8 path's rate per core times
the cores (``[cpu] int8_gmacs_per_core`` of the target file; no prediction without it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass
class DeviceFigures:
    """What the prediction needs from a device."""

    name: str
    dram_gbs: float
    kernel_efficiency: float
    gemv_gbs_per_core: float  # 0: no compute cap
    cores: int
    flash_mbs: float
    flash_latency_us: float
    int8_gmacs_per_core: float = 0.0  # prefill's multiply-adds per second per core; 0: unknown

    @classmethod
    def from_target(cls, t, *, threads: int | None = None) -> DeviceFigures:
        """The target's figures for ``threads`` cores; by default the runtime's own count
        there: its big cores (a big.LITTLE phone's 5 of 8), every core elsewhere."""
        return cls(
            t.name,
            t.dram_bandwidth_gbs,
            t.kernel_efficiency,
            t.gemv_gbs_per_core,
            threads or t.big_cores,
            t.flash_read_mbs,
            t.flash_latency_us,
            t.int8_gmacs_per_core,
        )

    def with_flash(self, name: str, mbs: float, latency_us: float) -> DeviceFigures:
        """These compute figures with another flash (an emulated device's, on this machine)."""
        return replace(self, name=name, flash_mbs=mbs, flash_latency_us=latency_us)

    def with_dram(self, gbs: float | None) -> DeviceFigures:
        """These figures with the DRAM read rate ``gbs`` measured on the machine that runs (the
        target file's figure comes from one machine on one day; a VM's moves between machines
        and minutes); unchanged for None. The kernels' share of it (``kernel_efficiency``)
        stays the target's."""
        return self if not gbs else replace(self, dram_gbs=gbs)

    @classmethod
    def emulated(
        cls, board, machine, *, threads: int, flash: tuple[float, float], dram_gbs=None
    ) -> DeviceFigures:
        """``board`` (a target) emulated on ``machine`` (this machine's target, ``host``): the
        emulation gives a run the board's memory size and its flash (``flash`` = the throttle's
        (MB/s, latency us)), and leaves it this machine's cores and DRAM bandwidth, so those
        come from ``machine``, its DRAM read rate as measured now where ``dram_gbs`` is given.
        (``from_target(board)`` predicts the board itself.)"""
        fig = cls.from_target(machine, threads=threads).with_dram(dram_gbs)
        return fig.with_flash(f"{board.name} emulated on {machine.name}", *flash)

    @property
    def decode_gbs(self) -> float:
        """Weight bytes per second decode reads from DRAM."""
        mem = self.dram_gbs * self.kernel_efficiency
        if self.gemv_gbs_per_core > 0:
            return min(mem, self.gemv_gbs_per_core * self.cores)
        return mem


@dataclass
class Prediction:
    device: str
    tok_s: float
    bound: str  # "dram" | "flash"
    dram_seconds: float
    flash_seconds: float
    dram_bytes_per_token: int
    flash_bytes_per_token: int
    flash_reads_per_token: int
    planned_bytes: int
    decode_gbs: float = 0.0  # the weight bytes per second the DRAM time assumed
    dram_gbs: float = 0.0  # the DRAM read rate behind it

    def to_dict(self) -> dict:
        return asdict(self)


def predict_decode(plan, fig: DeviceFigures, *, pos: int) -> Prediction:
    """Decode tok/s of ``plan`` on ``fig`` at context position ``pos`` (the KV cache read)."""
    # the KV cache so far: a plan's ``kv`` bytes hold ``max_ctx`` positions
    dram_bytes = plan.weight_bytes_per_token + plan.kv * pos // max(plan.max_ctx, 1)
    t_dram = dram_bytes / (fig.decode_gbs * 1e9)
    flash_bytes = plan.streamed_bytes_per_token
    reads = plan.flash_reads_per_token()
    t_flash = (
        flash_bytes / (fig.flash_mbs * 1e6) + reads * fig.flash_latency_us * 1e-6
        if flash_bytes
        else 0.0
    )
    t = _step_seconds(plan, fig, t_dram, t_flash)
    return Prediction(
        device=fig.name,
        tok_s=1.0 / t,
        bound="flash" if t_flash > t_dram else "dram",
        dram_seconds=t_dram,
        flash_seconds=t_flash,
        dram_bytes_per_token=dram_bytes,
        flash_bytes_per_token=flash_bytes,
        flash_reads_per_token=reads,
        planned_bytes=plan.planned,
        decode_gbs=fig.decode_gbs,
        dram_gbs=fig.dram_gbs,
    )


def _step_seconds(plan, fig: DeviceFigures, t_dram: float, t_flash: float) -> float:
    """A decode step: DRAM and flash time overlapped as far as ``plan``'s reads allow."""
    if getattr(plan, "reads_wait", False):  # the reads are decided as the step computes
        return t_dram + t_flash
    r = getattr(plan, "replayed", None)
    if not r or "ahead_per_call" not in r or not t_flash:
        return max(t_dram, t_flash)
    size = plan.expert_bytes
    t_read = size / (fig.flash_mbs * 1e6) + -(-size // plan.chunk) * fig.flash_latency_us * 1e-6
    layer = t_dram / plan.n_layers
    ahead = sum(share * max(layer, a * t_read) for a, share in enumerate(r["ahead_per_call"]))
    return plan.n_layers * ahead + r["demand_per_token"] * t_read


def prompt_macs(cfg, n_prompt: int) -> int:
    """Multiply-adds of a prefill of ``n_prompt`` tokens: each token's linear layers (a mixture's
    router, its used experts and shared expert), attention over the positions up to it (scores
    and values, within a sliding window where a layer has one), and the head for the last token."""
    d, hd = cfg.dim, cfg.head_dim
    qd, kd = cfg.n_heads * hd, cfg.n_kv_heads * hd
    attn = d * qd * 2 + d * kd * 2
    if cfg.n_experts:
        ffn = d * cfg.n_experts + 3 * d * (
            cfg.n_experts_used * cfg.expert_ffn_dim + cfg.shared_expert_ffn_dim
        )
    else:
        ffn = 3 * d * cfg.ffn_dim
    macs = n_prompt * cfg.n_layers * (attn + ffn) + cfg.vocab_size * d

    def seen(w: int) -> int:  # positions the prompt's tokens attend to: min(t + 1, w) summed
        full = min(n_prompt, w) if w else n_prompt
        return full * (full + 1) // 2 + (n_prompt - full) * w

    n_swa = len(set(cfg.swa_layers) & set(range(cfg.n_layers))) if cfg.sliding_window else 0
    keys = n_swa * seen(cfg.sliding_window) + (cfg.n_layers - n_swa) * seen(0)
    return int(macs + 2 * cfg.n_heads * hd * keys)


def predict_prefill(cfg, fig: DeviceFigures, *, n_prompt: int) -> dict | None:
    """Time to first token of an ``n_prompt``-token prompt on ``fig`` (compute-bound at the int8
    path's rate); None where the target gives no rate."""
    if fig.int8_gmacs_per_core <= 0 or n_prompt < 1:
        return None
    macs = prompt_macs(cfg, n_prompt)
    seconds = macs / (fig.int8_gmacs_per_core * fig.cores * 1e9)
    return {
        "device": fig.name,
        "n_prompt": n_prompt,
        "macs": macs,
        "gmacs_per_s": fig.int8_gmacs_per_core * fig.cores,
        "ttft_s": seconds,
        "tok_s": n_prompt / seconds,
    }
