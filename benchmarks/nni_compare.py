"""The plugin's one-shot strategies against NNI 3.0's built-in ones: same space, data, batch and algorithm.

Pairs compared (``--algos``):

- ``darts``: the plugin's ``darts`` (first order) against ``nni.nas.strategy.DARTS`` (first order
  only), both on the plugin's ``darts_cell`` space;
- ``pcdarts``: the plugin's ``darts`` with ``partial_channels=4, edge_norm=true`` (PC-DARTS), its
  own row, compared with the same NNI DARTS run;
- ``darts-lean`` / ``pcdarts-lean``: the same with ``checkpoint_edges=true`` (each edge recomputes
  its candidates in the backward pass instead of keeping their activations), against the same NNI
  DARTS run; ``darts-lean-half`` / ``-quarter`` / ``-fifth``: only that share of the edges, the
  first ones (the first cells, at the highest resolution), recompute (``checkpoint_share``);
- ``proxyless-cell`` / ``proxyless-mobile``: the plugin's ``proxyless`` against
  ``nni.nas.strategy.Proxyless`` on ``darts_cell`` / ``proxyless_mobile``.

Every measurement runs in a fresh process (so the peak resident memory is that run's alone), the
two sides alternating, the order flipped every repeat so that the machine's drift hits both alike.
NNI's strategies run as NNI runs them: ``mutate_model`` and ``mutate_evaluator`` on a
``Classification`` evaluator, then its Lightning ``Trainer`` for one epoch of exactly
``warmup + steps`` batches. The plugin's strategies run ``search`` for one epoch of the same batches.

A step is one architecture step plus one weight step (two batches, ``2 * batch`` training images).
Its time is the wall time between the ends of consecutive steps (the plugin: between the requests
for consecutive weight batches; NNI: between Lightning's ``on_train_batch_end`` calls), so it
includes each side's own per-step overhead. The first ``warmup`` steps are dropped; the median of
the rest is reported. Memory: on CPU the process's peak RSS (``ru_maxrss``) and its rise over the
RSS just before the strategy starts (data, space and every library already loaded, the same
imports on both sides); on CUDA ``torch.cuda.max_memory_allocated``. Linux carries a parent's
resident memory at the fork into the child's ``ru_maxrss``, so this parent process never imports
torch: a first subprocess prepares the batches and the latency tables, and every run also records
its own ``VmHWM`` as a cross-check.

    python benchmarks/nni_compare.py --preset small --threads 1
    python benchmarks/nni_compare.py --preset standard --warmup 1 --steps 3 --threads 1
    python benchmarks/nni_compare.py --check      # both sides really train: loss falls, alphas get gradients

Results (every run's raw timings, losses and memory, and the summary table) go to
``benchmarks/results/`` as JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT_TAG = "NNI_COMPARE_RESULT "

# Each algorithm: the space it runs on, the plugin strategy and settings, the NNI strategy.
ALGOS = {
    "darts": {"space": "darts_cell", "plugin": ("darts", {}), "nni": "DARTS"},
    "pcdarts": {"space": "darts_cell", "plugin": ("darts", {"partial_channels": 4, "edge_norm": True}), "nni": "DARTS"},
    "darts-lean": {"space": "darts_cell", "plugin": ("darts", {"checkpoint_edges": True}), "nni": "DARTS"},
    "pcdarts-lean": {"space": "darts_cell",
                     "plugin": ("darts", {"partial_channels": 4, "edge_norm": True, "checkpoint_edges": True}),
                     "nni": "DARTS"},
    "proxyless-cell": {"space": "darts_cell", "plugin": ("proxyless", {}), "nni": "Proxyless"},
    "proxyless-mobile": {"space": "proxyless_mobile", "plugin": ("proxyless", {}), "nni": "Proxyless"},
}
# DARTS with only the first share of the edges recomputing.
for _name, _share in (("half", 0.5), ("quarter", 0.25), ("fifth", 0.2)):
    ALGOS[f"darts-lean-{_name}"] = {"space": "darts_cell", "nni": "DARTS",
                                    "plugin": ("darts", {"checkpoint_edges": True, "checkpoint_share": _share})}
# Every DARTS variant is compared with the NNI DARTS run of its repeat (PC-DARTS too: NNI has no
# partial channels).
NNI_RUN_OF = {algo: "darts" if spec["nni"] == "DARTS" else algo for algo, spec in ALGOS.items()}

PRESETS = {
    # The DARTS paper's search network (8 cells, C=16, batch 64, CIFAR-shaped inputs).
    "standard": {"cells": 8, "width": 16, "nodes": 4, "batch_size": 64, "image_size": 32},
    # Small enough for a 2-core CPU in minutes.
    "small": {"cells": 5, "width": 8, "nodes": 4, "batch_size": 32, "image_size": 32},
}
# Single-path (Proxyless) steps train each candidate rarely, so their loss needs more steps to fall.
CHECK = {"cells": 3, "width": 8, "nodes": 2, "batch_size": 16, "image_size": 16, "warmup": 0, "steps": 60,
         "proxyless_steps": 150, "distinct_batches": 4,
         "mobile_kwargs": {"widths": [8, 16], "depths": [2, 2], "stem_width": 8, "head_width": 32}}

# The weight and architecture optimisers of each plugin strategy (its defaults), mirrored on NNI's
# side where NNI lets them be set (NNI's architecture Adam has fixed betas (0.5, 0.999), decay 1e-3).
HYPER = {
    "darts": {"weight_lr": 0.025, "weight_decay": 3e-4, "momentum": 0.9, "grad_clip": 5.0, "arch_lr": 3e-4},
    "proxyless": {"weight_lr": 0.05, "weight_decay": 4e-5, "momentum": 0.9, "grad_clip": 5.0, "arch_lr": 1e-3},
}


# ---------------------------------------------------------------------------------------- worker
def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _vm_hwm() -> int | None:
    """This process's own peak RSS (Linux), which unlike ``ru_maxrss`` owes nothing to the parent."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class _TimedBatches:
    """The plugin's weight batches; the time of every request marks the end of the previous step."""

    def __init__(self, batches: list, device: str):
        self.batches, self.device, self.times = batches, device, []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            _sync(self.device)
            self.times.append(time.perf_counter())
            yield batch
        _sync(self.device)
        self.times.append(time.perf_counter())


def _gradient_probe(alphas: list) -> list[float]:
    """Largest |gradient| reaching each architecture parameter (check mode only: hooks cost time)."""
    seen = [0.0]

    def hook(grad):
        seen[0] = max(seen[0], float(grad.detach().abs().max()))

    for a in alphas:
        a.register_hook(hook)
    return seen


def _run_plugin(job: dict, space, data: dict) -> dict:
    from nni_visplugin import create_strategy
    from nni_visplugin.nas.relax import arch_parameters

    name, settings = ALGOS[job["algo"]]["plugin"]
    hyper = HYPER[name]
    kwargs = {"epochs": 1, "weight_lr": hyper["weight_lr"], "weight_decay": hyper["weight_decay"],
              "momentum": hyper["momentum"], "grad_clip": hyper["grad_clip"], "arch_lr": hyper["arch_lr"], **settings}
    if name == "proxyless":
        kwargs["latency_table"] = job["latency_table"]  # measured beforehand, by the parent process
    strategy = create_strategy(name, **kwargs)
    probe: dict = {}
    build_supernet = strategy.build_supernet

    def timed_build(model_space):  # instrumentation: times the supernet's construction
        start = time.perf_counter()
        supernet = build_supernet(model_space)
        probe["build_s"] = time.perf_counter() - start
        alphas = list(arch_parameters(supernet).values())
        probe["alphas"] = [a.detach().clone() for a in alphas]
        probe["live"] = alphas
        if job["check"]:
            probe["grad"] = _gradient_probe(alphas)
        return supernet

    strategy.build_supernet = timed_build
    losses: list[float] = []
    weight_loss = strategy._weight_loss

    def recorded_loss(*args):
        loss = weight_loss(*args)
        losses.append(float(loss.detach()))  # the plugin itself reads loss.item() every step
        return loss

    strategy._weight_loss = recorded_loss
    train_w = _TimedBatches(data["w"], job["device"])
    start = time.perf_counter()
    outcome = strategy.search(space, train_w, data["a"], None, device=job["device"])
    times = train_w.times
    delta = max(float((a.detach().cpu() - b).abs().max()) for a, b in zip(probe["live"], probe["alphas"]))
    return {"step_seconds": [b - a for a, b in zip(times, times[1:])], "build_s": probe["build_s"],
            "setup_s": times[0] - start, "losses": losses, "alpha_max_change": delta,
            "alpha_max_grad": probe["grad"][0] if "grad" in probe else None, "arch": outcome.arch,
            "settings": kwargs, "_flops_of": (outcome.supernet, data["w"][0]) if name == "darts" else None}


def _darts_step_flops(supernet, batch, device: str) -> int:
    """Useful FLOPs of one DARTS step, the same for both sides: twice (architecture step, weight
    step) a forward and a full backward of the relaxed network on one batch, as PyTorch's
    FlopCounterMode counts them (2 per multiply-add of convolutions and matrix products). What NNI
    computes on top (its `none` candidate, weight gradients in the architecture step) is not counted."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from nni_visplugin.nas.fastconv import disable_fast_depthwise, enable_fast_depthwise

    x, y = batch
    counter = FlopCounterMode(display=False)
    params = [p for p in supernet.parameters() if p.requires_grad]
    # The fast depthwise backward does more multiply-adds than it needs (zero-padded blocks): the
    # useful work is the plain convolutions' (the same count for both sides).
    disable_fast_depthwise(supernet)
    try:
        with counter:
            loss = F.cross_entropy(supernet(x.to(device)), y.to(device))
            torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        enable_fast_depthwise(supernet)
    return 2 * int(counter.get_total_flops())


def _run_nni(job: dict, space, data: dict) -> dict:
    import pytorch_lightning as pl
    import torch
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    from nni.nas.strategy import DARTS, Proxyless

    hyper = HYPER[ALGOS[job["algo"]]["plugin"][0]]
    device = job["device"]

    class Timer(pl.Callback):
        def __init__(self):
            self.start, self.ends, self.losses = None, [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.start is None:
                _sync(device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            self.ends.append(time.perf_counter())
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss.detach()) if loss is not None else float("nan"))

    class SGDMomentum(torch.optim.SGD):  # the evaluator takes an optimizer class
        def __init__(self, params, lr, weight_decay=0.0):
            super().__init__(params, lr=lr, momentum=hyper["momentum"], weight_decay=weight_decay)

    class Batches(torch.utils.data.Dataset):  # whole batches: no per-sample collation on either side
        def __init__(self, batches):
            self.batches = batches

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, i):
            return self.batches[i]

    timer = Timer()
    evaluator = Classification(
        learning_rate=hyper["weight_lr"], weight_decay=hyper["weight_decay"], optimizer=SGDMomentum,
        train_dataloaders=DataLoader(Batches(data["w"]), batch_size=None),
        val_dataloaders=DataLoader(Batches(data["a"]), batch_size=None),  # NNI's DARTS: the architecture batches
        num_classes=job["num_classes"], max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer], accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1)
    strategy = {"DARTS": DARTS, "Proxyless": Proxyless}[ALGOS[job["algo"]]["nni"]](
        arc_learning_rate=hyper["arch_lr"], gradient_clip_val=hyper["grad_clip"])
    start = time.perf_counter()
    strategy.mutate_model(space)  # in place: NNI's supernet is the space itself
    build_s = time.perf_counter() - start
    alphas = [p for n, p in space.named_parameters() if n.endswith("_arch_alpha")]
    before = [a.detach().clone() for a in alphas]
    grad = _gradient_probe(alphas) if job["check"] else None
    oneshot = strategy.mutate_evaluator(evaluator)
    oneshot.evaluate(space)  # what NNI's execution engine calls: trainer.fit on the one-shot module
    ends = timer.ends
    delta = max(float((a.detach().cpu() - b).abs().max()) for a, b in zip(alphas, before))
    return {"step_seconds": [ends[0] - timer.start] + [b - a for a, b in zip(ends, ends[1:])], "build_s": build_s,
            "setup_s": timer.start - start, "losses": timer.losses, "alpha_max_change": delta,
            "alpha_max_grad": grad[0] if grad is not None else None,
            "arch": {str(k): v for k, v in oneshot.module.export().items()},
            "settings": {"strategy": ALGOS[job["algo"]]["nni"], "arc_learning_rate": hyper["arch_lr"],
                         "gradient_clip_val": hyper["grad_clip"], "optimizer": "SGD", **hyper}}


def worker(job: dict) -> dict:
    if job.get("mode") == "prepare":
        return prepare(job)
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(job["threads"])
    # The same libraries on both sides before the baseline RSS is read.
    import nni.nas.evaluator.pytorch  # noqa: F401
    import nni.nas.strategy  # noqa: F401
    import pytorch_lightning  # noqa: F401

    import nni_visplugin
    import nni_visplugin.nas.strategies.proxyless  # noqa: F401

    torch.manual_seed(job["seed"])
    data = {k: v[:job["n_batches"]] for k, v in torch.load(job["data"], weights_only=True).items()}
    start = time.perf_counter()
    space = nni_visplugin.create_space(job["space"], **job["space_kwargs"])
    space_s = time.perf_counter() - start
    if job["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss()
    out = (_run_plugin if job["side"] == "plugin" else _run_nni)(job, space, data)
    out.update({"space_s": space_s, "rss_before": rss_before, "peak_rss": _peak_rss(), "vm_hwm": _vm_hwm(),
                "threads_after": torch.get_num_threads()})
    if job["device"].startswith("cuda"):
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
        out["gpu_name"] = torch.cuda.get_device_name()
    flops_of = out.pop("_flops_of", None)
    if flops_of is not None:  # counted after the memory peaks were read, so they owe nothing to it
        out["step_flops"] = _darts_step_flops(*flops_of, job["device"])
    return out


def make_data(job: dict, path: Path) -> dict:
    """Weight and architecture batches, saved once, loaded by every run (so both sides see the same
    tensors and no run's peak RSS includes the dataset's loading)."""
    import torch

    b, n_batches = job["batch_size"], job["n_batches"]
    distinct = job["distinct_batches"] or n_batches
    if job["dataset"] == "synthetic":
        # Learnable: each class adds its own fixed pattern to the noise (the check needs a loss that can fall).
        g = torch.Generator().manual_seed(job["seed"])
        c, s = 3, job["image_size"]
        patterns = torch.randn(10, c, s, s, generator=g)
        y = torch.randint(0, 10, (2 * distinct * b,), generator=g)
        x = torch.randn(len(y), c, s, s, generator=g) + 2 * patterns[y]
        num_classes = 10
    else:
        from nni_visplugin.data.datasets import load_dataset

        splits = load_dataset(job["dataset"])
        x, y = splits.train
        idx = torch.arange(2 * distinct * b) % len(y)  # cycled when the split is smaller than the run
        x, y, num_classes = x[idx].contiguous(), y[idx].contiguous(), splits.num_classes
    pairs = [(x[2 * i * b:(2 * i + 1) * b], y[2 * i * b:(2 * i + 1) * b]) for i in range(distinct)]
    arch = [(x[(2 * i + 1) * b:(2 * i + 2) * b], y[(2 * i + 1) * b:(2 * i + 2) * b]) for i in range(distinct)]
    torch.save({"w": [pairs[i % distinct] for i in range(n_batches)],
                "a": [arch[i % distinct] for i in range(n_batches)]}, path)
    return {"in_channels": int(x.shape[1]), "image_size": int(max(x.shape[2:])), "num_classes": int(num_classes)}


def latency_table(space: str, kwargs: dict, device: str, threads: int) -> str:
    """The plugin's Proxyless loads a lookup table for every registered space, even without a latency
    loss; it is measured here once, outside every measured run, and cached between invocations."""
    import torch

    from nni_visplugin.nas.latency import load_or_measure

    torch.set_num_threads(threads)  # part of the table's fingerprint
    key = json.dumps({"space": space, "kwargs": kwargs, "device": device, "threads": threads}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "nni-visplugin-bench" / f"{space}-{digest}.json"
    load_or_measure(path, space, json.loads(json.dumps(kwargs)), device, 1)
    return str(path)


def prepare(job: dict) -> dict:
    """Run in a process of its own: the batches, the spaces' arguments, the latency tables, versions."""
    import warnings

    warnings.filterwarnings("ignore")
    import nni
    import pytorch_lightning
    import torch

    if job["device"].startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    shape = make_data(job, Path(job["data"]))
    kwargs = {space: {**shape, **extra} for space, extra in job["space_args"].items()}
    tables = {space: latency_table(space, kwargs[space], job["device"], job["threads"]) for space in job["tables"]}
    return {"shape": shape, "space_kwargs": kwargs, "tables": tables,
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "nni": nni.__version__,
                         "pytorch_lightning": pytorch_lightning.__version__}}


# ---------------------------------------------------------------------------------------- parent
def run_job(job: dict, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "MKL_NUM_THREADS": str(job["threads"])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return {"error": f"exit {proc.returncode}: " + (proc.stderr or proc.stdout)[-3000:]}


def summarise(record: dict, warmup: int, batch: int) -> dict:
    if "error" in record:
        return record
    measured = record["step_seconds"][warmup:]
    step = statistics.median(measured)
    out = {"step_s": step, "images_per_s": 2 * batch / step, "build_s": record["build_s"],
           "setup_s": record["setup_s"], "peak_rss_mib": record["peak_rss"] / 2 ** 20,
           "search_mib": (record["peak_rss"] - record["rss_before"]) / 2 ** 20}
    if record.get("vm_hwm"):
        out["vm_hwm_mib"] = record["vm_hwm"] / 2 ** 20
    if "cuda_peak" in record:
        out["cuda_peak_mib"] = record["cuda_peak"] / 2 ** 20
    if record.get("step_flops"):
        out["step_gflop"] = record["step_flops"] / 1e9
        out["tflops"] = record["step_flops"] / step / 1e12
    if record.get("gpu_name"):
        out["gpu_name"] = record["gpu_name"]
    return out


# Dense bf16 tensor-core peaks (TFLOP/s, from the vendors' data sheets), for the fraction printed.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                   "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def gpu_peak(name: str | None) -> float | None:
    for key, peak in GPU_PEAK_TFLOPS.items():
        if name and key in name:
            return peak
    return None


def check_verdict(record: dict) -> list[str]:
    """Reasons a run does not count as training (empty: it trains)."""
    if "error" in record:
        return [record["error"]]
    problems = []
    losses = record["losses"]
    third = max(1, len(losses) // 3)
    first, last = statistics.mean(losses[:third]), statistics.mean(losses[-third:])
    # 5% is far above the noise of a model that does not learn (about 1% on a third's mean).
    if not last < 0.95 * first:
        problems.append(f"mean weight-step loss (first third -> last third) did not fall by 5%: "
                        f"{first:.3f} -> {last:.3f}")
    if not (record["alpha_max_grad"] or 0) > 1e-7:
        problems.append(f"no gradient reached the architecture parameters (max |grad| {record['alpha_max_grad']})")
    if not record["alpha_max_change"] > 0:
        problems.append("architecture parameters did not change")
    return problems


def table(rows: list[dict], device: str) -> str:
    mem = "CUDA peak MiB" if device.startswith("cuda") else "peak RSS MiB"
    lines = [f"| algorithm | space | strategy | build s | setup s | s/step | images/s | {mem} | search MiB |"
             " plugin/NNI images/s | plugin/NNI peak | plugin/NNI search MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            reason = r["error"].strip().splitlines()[-1][:200] if r["error"].strip() else "failed"
            lines.append(f"| {r['algo']} | {r['space']} | {r['strategy']} | failed: {reason} |")
            continue
        peak = r.get("cuda_peak_mib", r["peak_rss_mib"])
        ratio = r.get("ratio", {})
        fmt = lambda k: f"{ratio[k]:.2f}" if k in ratio else ""  # noqa: E731
        lines.append(f"| {r['algo']} | {r['space']} | {r['strategy']} | {r['build_s']:.2f} | {r['setup_s']:.2f} "
                     f"| {r['step_s']:.3f} | {r['images_per_s']:.1f} | {peak:.0f} | {r['search_mib']:.0f} "
                     f"| {fmt('images_per_s')} | {fmt('peak')} | {fmt('search_mib')} |")
    # Achieved useful FLOP/s of the DARTS rows: the plugin's count of one step's work, over each side's time.
    flops = {r["algo"]: r["step_gflop"] for r in rows if r.get("step_gflop") and "error" not in r}
    if flops:
        peak = gpu_peak(next((r.get("gpu_name") for r in rows if r.get("gpu_name")), None)) \
            if device.startswith("cuda") else None
        lines += ["", "| algorithm | strategy | GFLOP per step | achieved TFLOP/s" +
                  (" | fraction of the bf16 peak |" if peak else " |"), "|---|---|---|---|" + ("---|" if peak else "")]
        for r in rows:
            if "error" in r:
                continue
            gflop = flops.get(r["algo"]) if r["side"] == "plugin" else flops.get("darts")
            if gflop is None or r["side"] == "nni" and r["algo"] != "darts":
                continue
            achieved = gflop / 1e3 / r["step_s"]
            lines.append(f"| {r['algo']} | {r['strategy']} | {gflop:.1f} | {achieved:.4f}" +
                         (f" | {achieved / peak:.4%} |" if peak else " |"))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--preset", choices=list(PRESETS), default="small",
                   help="space size and batch; the flags below override it")
    p.add_argument("--cells", type=int, help="darts_cell: cells")
    p.add_argument("--width", type=int, help="darts_cell: channels C of the first cells")
    p.add_argument("--nodes", type=int, help="darts_cell: intermediate nodes per cell")
    p.add_argument("--mobile-kwargs", type=json.loads, default={}, help="proxyless_mobile arguments (JSON)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int, help="synthetic data only (real datasets keep their size)")
    p.add_argument("--dataset", choices=["synthetic", "digits", "fashion-mnist"], default="synthetic",
                   help="synthetic: 3 x size x size, 10 classes; digits: 1x8x8; fashion-mnist: 1x28x28")
    p.add_argument("--warmup", type=int, default=3, help="steps dropped before the median")
    p.add_argument("--steps", type=int, default=10, help="measured steps")
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per side and algorithm")
    p.add_argument("--algos", nargs="+", choices=list(ALGOS), default=list(ALGOS))
    p.add_argument("--sides", nargs="+", choices=["plugin", "nni"], default=["plugin", "nni"])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every run, both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--check", action="store_true",
                   help="tiny model, few repeated batches: verify that every run trains (exit 1 if not)")
    p.add_argument("--out", help="JSON file (default: benchmarks/results/nni_compare-<preset>-<dataset>-<time>.json)")
    args = p.parse_args()
    if args.worker:
        print(RESULT_TAG + json.dumps(worker(json.loads(args.worker))))
        return 0

    settings = dict(PRESETS[args.preset])
    args.distinct_batches = 0
    if args.check:
        settings.update({k: v for k, v in CHECK.items() if k in settings})
        args.warmup, args.steps, args.distinct_batches = CHECK["warmup"], CHECK["steps"], CHECK["distinct_batches"]
        args.mobile_kwargs = args.mobile_kwargs or CHECK["mobile_kwargs"]
    for key, value in settings.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    n_batches = args.warmup + args.steps

    def batches_of(algo: str) -> int:
        if args.check and ALGOS[algo]["plugin"][0] == "proxyless":
            return CHECK["proxyless_steps"]
        return n_batches

    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = "check" if args.check else args.preset
    out_path = Path(args.out or Path(__file__).parent / "results" / f"nni_compare-{label}-{args.dataset}-{stamp}.json")
    workdir = Path(tempfile.mkdtemp(prefix="nni-compare-"))
    data_path = workdir / "batches.pt"
    spaces = sorted({ALGOS[a]["space"] for a in args.algos})
    prep = run_job({"mode": "prepare", "data": str(data_path), "dataset": args.dataset, "seed": args.seed,
                    "image_size": args.image_size, "batch_size": args.batch_size,
                    "distinct_batches": args.distinct_batches, "n_batches": max(batches_of(a) for a in args.algos),
                    "device": args.device, "threads": args.threads,
                    "space_args": {s: {"width": args.width, "num_cells": args.cells, "num_nodes": args.nodes}
                                   if s == "darts_cell" else args.mobile_kwargs for s in spaces},
                    "tables": sorted({ALGOS[a]["space"] for a in args.algos
                                      if ALGOS[a]["plugin"][0] == "proxyless" and "plugin" in args.sides})},
                   args.timeout)
    if "error" in prep:
        print(f"preparing the batches and latency tables failed: {prep['error']}", file=sys.stderr)
        return 1
    shape = prep["shape"]

    # The runs of one repeat: each plugin run and its NNI counterpart (the one NNI DARTS run serves both
    # DARTS rows), plugin first on even repeats, NNI first on odd ones.
    pairs: list[tuple[str, str]] = []
    for algo in args.algos:
        if "plugin" in args.sides:
            pairs.append(("plugin", algo))
        if "nni" in args.sides and ("nni", NNI_RUN_OF[algo]) not in pairs:
            pairs.append(("nni", NNI_RUN_OF[algo]))
    records: list[dict] = []
    for repeat in range(args.repeats):
        order = []
        for algo in dict.fromkeys(NNI_RUN_OF[a] for a in args.algos):  # group by NNI counterpart
            group = [pr for pr in pairs if NNI_RUN_OF[pr[1]] == algo]
            group.sort(key=lambda pr: (pr[0] == "nni") != (repeat % 2 == 1))
            order += group
        for side, algo in order:
            space = ALGOS[algo]["space"]
            job = {"side": side, "algo": algo, "space": space, "space_kwargs": prep["space_kwargs"][space],
                   "data": str(data_path), "device": args.device, "threads": args.threads,
                   "seed": args.seed + repeat, "check": args.check,
                   "num_classes": shape["num_classes"], "n_batches": batches_of(algo)}
            if side == "plugin" and ALGOS[algo]["plugin"][0] == "proxyless":
                job["latency_table"] = prep["tables"][space]
            print(f"repeat {repeat + 1}/{args.repeats}: {side} {algo} on {space} ...", end=" ", flush=True)
            started = time.time()
            record = run_job(job, args.timeout)
            print(f"{time.time() - started:.0f} s" + (" FAILED" if "error" in record else ""), flush=True)
            records.append({"repeat": repeat, "side": side, "algo": algo, "space": space, **record})
    shutil.rmtree(workdir, ignore_errors=True)

    # Summary: per repeat, then the median over repeats; ratios within a repeat, then their median.
    rows = []
    for algo in args.algos:
        for side in args.sides:
            run_algo = algo if side == "plugin" else NNI_RUN_OF[algo]
            mine = [r for r in records if r["side"] == side and r["algo"] == run_algo]
            summaries = [summarise(r, args.warmup, args.batch_size) for r in mine]
            name, extra = ALGOS[algo]["plugin"]
            row = {"algo": algo, "space": ALGOS[algo]["space"], "side": side,
                   "strategy": (name + "".join(f" {k}={v}" for k, v in extra.items()) if side == "plugin"
                                else "nni " + ALGOS[algo]["nni"])}
            good = [s for s in summaries if "error" not in s]
            if not good:
                rows.append({**row, "error": summaries[0].get("error", "no run") if summaries else "no run"})
                continue
            row.update({k: statistics.median([s[k] for s in good]) for k in good[0]})
            row["per_repeat"] = summaries
            rows.append(row)
    for row in rows:
        if row["side"] != "plugin" or "error" in row:
            continue
        nni = next((r for r in rows if r["side"] == "nni" and r["algo"] == row["algo"] and "error" not in r), None)
        if nni is None:
            continue
        peak_key = "cuda_peak_mib" if "cuda_peak_mib" in row else "peak_rss_mib"
        per_repeat = []
        for mine, theirs in zip(row["per_repeat"], nni["per_repeat"]):
            if "error" in mine or "error" in theirs:
                continue
            per_repeat.append({"images_per_s": mine["images_per_s"] / theirs["images_per_s"],
                               "peak": mine[peak_key] / theirs[peak_key],
                               "search_mib": mine["search_mib"] / theirs["search_mib"]})
        if per_repeat:
            row["ratio"] = {k: statistics.median([r[k] for r in per_repeat]) for k in per_repeat[0]}
            row["ratio_per_repeat"] = per_repeat

    result = {"command": " ".join([Path(sys.executable).name] + sys.argv), "date": time.strftime("%Y-%m-%d"),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": os.cpu_count(), **prep["versions"]},
              "settings": {k: v for k, v in vars(args).items() if k != "worker"},
              "data_shape": shape, "rows": rows, "runs": records}
    failed = []
    for r in records:
        if r.get("vm_hwm") and abs(r["peak_rss"] - r["vm_hwm"]) > 0.05 * r["vm_hwm"]:
            print(f"warning: {r['side']} {r['algo']}: ru_maxrss {r['peak_rss'] / 2 ** 20:.0f} MiB differs from the "
                  f"process's own VmHWM {r['vm_hwm'] / 2 ** 20:.0f} MiB")
    if args.check:
        for r in records:
            problems = check_verdict(r)
            r["check"] = problems or "trains"
            if problems:
                failed.append(f"{r['side']} {r['algo']}: " + "; ".join(problems))
            elif "error" not in r:
                losses = r["losses"]
                print(f"check {r['side']:6s} {r['algo']:16s} trains: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
                      f"max |grad alpha| {r['alpha_max_grad']:.2e}, max |change alpha| {r['alpha_max_change']:.2e}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(table(rows, args.device))
    print(f"written to {out_path}")
    for line in failed:
        print("CHECK FAILED: " + line)
    return 1 if failed or any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
