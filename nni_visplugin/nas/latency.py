"""Latency lookup tables, measured on the device the network will run on.

Every candidate operation of every ``LayerChoice`` is timed at the input shape it sees in the
space, at the deployment batch size: warm-up runs, then the median of repeated timings. The part of
the network that no choice changes (stem, head, glue) is measured end to end on a few random
architectures, minus their operations' entries. The predicted latency of an architecture is that
fixed part plus its chosen operations; an edge of a cell counts only when the cell's ``InputChoice``
keeps it.

Operations timed one by one and the same operations inside a network do not cost exactly the same
(caches, allocator, call overhead), so the prediction is calibrated: ``fixed + scale * sum(ops)``,
with ``fixed`` and ``scale`` fitted by least squares to end-to-end measurements of a few random
architectures and of the fastest and the slowest one.

The file records the device, the torch version, the thread count, the batch size and every
shape. :func:`load_or_measure` reuses it when they match this machine and rebuilds it otherwise.
"""
from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from nni.nas.nn.pytorch import InputChoice, LayerChoice

from nni_visplugin.nas.relax import is_zero_op
from nni_visplugin.utils.errors import UserError
from nni_visplugin.utils.registry import SPACES

__all__ = ["LatencyTable", "measure_table", "load_or_measure", "measure_model", "device_fingerprint", "TableMismatch"]

_logger = logging.getLogger(__name__)
FORMAT_VERSION = 2


class TableMismatch(UserError, ValueError):
    """A latency table does not describe this device or this space."""


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_fingerprint(device: torch.device | str) -> dict[str, Any]:
    device = torch.device(device)
    return {"device": device.type, "device_name": _device_name(device), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _time(fn, device: torch.device, warmup: int, repeats: int, inner: int = 5) -> float:
    """Median over ``repeats`` of the mean time of ``inner`` calls, in milliseconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - start) / inner * 1e3)
    return statistics.median(samples)


def measure_model(model: nn.Module, input_shape: tuple[int, int, int] | list[int], device: torch.device | str = "cpu",
                  batch_size: int = 1, warmup: int = 10, repeats: int = 21, rounds: int = 1) -> float:
    """End-to-end latency of ``model`` in milliseconds (eval mode, no autograd); with ``rounds`` > 1,
    the median of that many measurements."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    return statistics.median(_time(lambda: model(x), device, warmup, repeats) for _ in range(rounds))


@dataclass
class LatencyTable:
    meta: dict[str, Any]
    entries: list[dict[str, Any]]  # path, label, shape, ms {choice: ms}, gate [input label, index] | None
    fixed_ms: float = 0.0
    scale: float = 1.0
    calibration: list[dict[str, Any]] = field(default_factory=list)
    _ms_tensors: dict = field(default_factory=dict, repr=False, compare=False)

    def ops_ms(self, arch: dict[str, Any]) -> float:
        """Sum of the table entries of the operations ``arch`` runs."""
        total = 0.0
        for e in self.entries:
            if e["gate"] is not None:
                input_label, index = e["gate"]
                if index not in arch[input_label]:
                    continue
            total += e["ms"][str(arch[e["label"]])]
        return total

    def predict(self, arch: dict[str, Any]) -> float:
        """Predicted latency (ms) of a discrete architecture."""
        return self.fixed_ms + self.scale * self.ops_ms(arch)

    def expected(self, probs: dict[str, torch.Tensor], names: dict[str, list], gate_probs: dict[str, torch.Tensor],
                 n_chosen: dict[str, int]) -> torch.Tensor:
        """Expected latency under the architecture distribution, differentiable in ``probs``.

        ``probs[label]`` is the distribution over ``names[label]``; an edge gated by an InputChoice
        counts with ``min(1, n_chosen * q_index)``, ``q = gate_probs[input label]`` (the inclusion
        probability when sampling without replacement, to first order).
        """
        device = next(iter(probs.values())).device
        total = torch.tensor(0.0, device=device)
        for k, e in enumerate(self.entries):
            label = e["label"]
            # Built once per entry and device: this runs at every architecture step.
            key = (k, device)
            if key not in self._ms_tensors:
                self._ms_tensors[key] = torch.tensor([e["ms"][str(n)] for n in names[label]], device=device)
            term = (probs[label] * self._ms_tensors[key]).sum()
            if e["gate"] is not None and e["gate"][0] in gate_probs:
                input_label, index = e["gate"]
                term = term * torch.clamp(n_chosen[input_label] * gate_probs[input_label][index], max=1.0)
            total = total + term
        return self.fixed_ms + self.scale * total

    def save(self, path: str | Path) -> None:
        from nni_visplugin.utils.files import write_json

        write_json(Path(path), {"format": FORMAT_VERSION, "meta": self.meta, "fixed_ms": self.fixed_ms,
                                "scale": self.scale, "calibration": self.calibration, "entries": self.entries})

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != FORMAT_VERSION:
                raise TableMismatch(f"latency table {path} has format {data.get('format')}, expected {FORMAT_VERSION}")
            return cls(meta=data["meta"], entries=data["entries"], fixed_ms=data["fixed_ms"], scale=data["scale"],
                       calibration=data.get("calibration", []))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise TableMismatch(f"latency table {path} is unreadable: {exc}") from None


def _choice_inputs(space: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, LayerChoice, tuple[int, ...]]]:
    """Each LayerChoice with the shape of its input, found by one dry-run forward."""
    found: list[tuple[str, LayerChoice, tuple[int, ...]]] = []
    hooks = []
    for path, module in space.named_modules():
        if isinstance(module, LayerChoice):
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, path=path: found.append((path, m, tuple(args[0].shape[1:])))))
    try:
        with torch.no_grad():
            space.eval()(torch.zeros(2, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return found


def _gates(space: nn.Module) -> dict[str, tuple[str, int]]:
    gates = {}
    for module in space.modules():
        if isinstance(module, InputChoice) and getattr(module, "edge_labels", None):
            for j, edge in enumerate(module.edge_labels):
                gates[edge] = (module.label, j)
    return gates


def measure_table(space_name: str, space_kwargs: dict[str, Any], device: torch.device | str = "cpu",
                  batch_size: int = 1, warmup: int = 5, repeats: int = 11, calibration_archs: int = 6,
                  seed: int = 0, progress: bool = True, rounds: int = 3) -> LatencyTable:
    """Time every candidate operation of ``space_name`` on ``device``; see the module docstring."""
    from nni_visplugin.nas.fixed import build_fixed_model

    device = torch.device(device)
    space = SPACES.create(space_name, **space_kwargs)
    input_shape = (space_kwargs["in_channels"], space_kwargs["image_size"], space_kwargs["image_size"])
    choices = _choice_inputs(space, input_shape)
    gates = _gates(space)
    entries = []
    # Shared machines have slow phases lasting seconds: every timing is repeated in `rounds` passes
    # spread over the whole measurement, and the median across passes is kept.
    samples: dict[tuple[int, str], list[float]] = {}
    ops = []
    for path, choice, shape in choices:
        x = torch.randn(batch_size, *shape, device=device)
        ops.append([(str(name), choice[name].to(device).eval(), x) for name in choice.names])
    passes = range(rounds)
    if progress:
        from tqdm import tqdm

        passes = tqdm(passes, desc=f"latency table ({device.type}, {len(choices)} choices)", unit="pass")
    for _ in passes:
        for k, candidates in enumerate(ops):
            for name, op, x in candidates:
                if is_zero_op(op):
                    samples.setdefault((k, name), []).append(0.0)
                else:
                    samples.setdefault((k, name), []).append(_time(lambda: op(x), device, warmup, repeats))
    for k, (path, choice, shape) in enumerate(choices):
        gate = gates.get(choice.label)
        entries.append({"path": path, "label": choice.label, "shape": list(shape),
                        "ms": {str(n): statistics.median(samples[(k, str(n))]) for n in choice.names},
                        "gate": list(gate) if gate else None})
    table = LatencyTable(meta={**device_fingerprint(device), "batch_size": batch_size, "space": space_name,
                               "space_kwargs": dict(space_kwargs)}, entries=entries)

    # Calibration: end-to-end measurements of random architectures and of the two extremes.
    rng = np.random.RandomState(seed)
    archs = []
    for _ in range(calibration_archs):
        memo: dict[str, Any] = {}
        space.random(memo=memo, random_state=rng)
        archs.append(memo)
    for pick in (min, max):
        extreme = dict(archs[0])
        for e in entries:
            if e["gate"] is None:
                extreme[e["label"]] = pick(e["ms"], key=e["ms"].get)
        archs.append(extreme)
    models = [build_fixed_model(space_name, space_kwargs, arch) for arch in archs]
    timings = [[measure_model(m, input_shape, device, batch_size, warmup, repeats) for m in models]
               for _ in range(rounds)]
    measured = [statistics.median(t[i] for t in timings) for i in range(len(archs))]
    for arch, ms in zip(archs, measured):
        table.calibration.append({"arch": arch, "measured_ms": ms})
    table.fixed_ms, table.scale = _fit(np.asarray([table.ops_ms(a) for a in archs]), np.asarray(measured))
    return table


def _fit(ops: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """Least-squares ``measured = fixed + scale * ops``, the scale kept in [0.5, 2]."""
    if np.ptp(ops) > 1e-9:
        scale, fixed = np.polyfit(ops, measured, 1)
        if 0.5 <= scale <= 2.0 and fixed >= 0:
            return float(fixed), float(scale)
    return float(max(np.median(measured - ops), 0.0)), 1.0


def mismatch(table: LatencyTable, space_name: str, space_kwargs: dict[str, Any], device: torch.device | str,
             batch_size: int, check_device: bool = True) -> str | None:
    """Why ``table`` does not fit this search, or None when it does."""
    meta = table.meta
    if meta.get("space") != space_name or meta.get("space_kwargs") != json.loads(json.dumps(dict(space_kwargs))):
        return f"it was measured for space {meta.get('space')} {meta.get('space_kwargs')}"
    if meta.get("batch_size") != batch_size:
        return f"it was measured at batch size {meta.get('batch_size')}, not {batch_size}"
    if check_device:
        here = device_fingerprint(device)
        for key in ("device", "device_name", "torch", "threads"):
            if meta.get(key) != here[key]:
                return f"its {key} is {meta.get(key)!r}, this machine's is {here[key]!r}"
    return None


def load_or_measure(path: str | Path, space_name: str, space_kwargs: dict[str, Any], device: torch.device | str = "cpu",
                    batch_size: int = 1, rebuild: str = "auto") -> LatencyTable:
    """Reuse the table at ``path`` when it fits; otherwise measure it here and write it there.

    ``rebuild='auto'`` rebuilds when the device, torch version, thread count, batch size or shapes
    differ. ``rebuild='never'`` accepts a table measured on another device (to search for that
    device), and fails if it does not describe this space.
    """
    if rebuild not in ("auto", "never"):
        raise ValueError(f"latency_rebuild must be 'auto' or 'never', got {rebuild!r}")
    path = Path(path).expanduser()
    if path.exists():
        table = LatencyTable.load(path)
        reason = mismatch(table, space_name, space_kwargs, device, batch_size, check_device=(rebuild == "auto"))
        if reason is None:
            _logger.info("reusing latency table %s (%s, %s)", path, table.meta["device"], table.meta["device_name"])
            return table
        if rebuild == "never":
            raise TableMismatch(f"latency table {path} does not fit this search: {reason}")
        _logger.info("rebuilding latency table %s: %s", path, reason)
    table = measure_table(space_name, space_kwargs, device, batch_size)
    table.save(path)
    _logger.info("latency table written to %s (fixed part %.3f ms)", path, table.fixed_ms)
    return table
