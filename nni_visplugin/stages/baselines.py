"""The standard NAS baselines for the Fashion-MNIST pipeline: random architectures and a hand design.

Every baseline is retrained with exactly the pipeline's recipe (``pipeline.retrain`` of the config:
epochs, width, cells, batch size, learning rate, warm-up, augmentation) and tested once on the test
split, like the searched architecture. The architectures are points of the same space, with the
same search-time settings (taken from the ``result.json`` of the search the pipeline picked), so
only the cell differs:

- ``random-K``: every label of the space drawn uniformly at random with
  ``numpy.random.RandomState(K)``: the operation of each edge (any but ``none``, which the
  derivation never keeps either) and the two inputs of each node;
- ``hand``: a cell written by hand: in the normal cell each node applies a 3x3 convolution to the
  two most recent states (a chain with a shortcut); in the reduction cell each node max-pools one
  cell input and applies a 3x3 convolution to the other. The convolution is the dense ``conv_3x3``
  when the space offers it (a ResNet-style cell), else the separable ``sep_conv_3x3`` (in the
  spirit of MobileNet-style designs).
- ``hand-matched``: the same hand-written cell, retrained at the even width at which its network
  has the parameter count closest to the picked architecture's retrained network (the hand cell
  convolves on every edge, so at the recipe's width it is larger than most derived cells).

Usage (after the pipeline, which wrote runs/fashion_mnist/search.json)::

    nni-visplugin baselines --config experiments/fashion_mnist.yml \\
        --random 5 --jobs 2 --out runs/fashion_mnist_baselines

Writes ``OUT/<name>/metrics.json`` per model and ``OUT/baselines.json``: rows for the pipeline's
comparison table (``pipeline.baselines`` in the config points at it). Finished models are kept and
not retrained when the command runs again; a model cut short continues from its last complete
epoch (the retraining's checkpoints). Each model prints a line per epoch. ``--jobs 2`` retrains
two models at once with one CPU thread each (the recipe's ``threads`` is overridden and recorded
in each metrics.json).

``--only NAME ...`` retrains just those models (say ``random-0 random-1`` in one sitting and the
rest in another); ``baselines.json`` then holds the finished ones and says which are missing, and
the mean row counts only finished random architectures. ``--search`` takes any directory with the
picked search's ``arch.json`` and ``result.json``, such as a run's copy under benchmarks/results.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from nni_visplugin.utils.errors import ConfigError


def random_arch(space: str, kwargs: dict, seed: int) -> dict:
    """Uniform over the space, except ``none``: the derivation never keeps a zero operation, so
    neither does a fair random baseline."""
    import numpy as np

    import nni_visplugin.spaces  # noqa: F401  (registers the spaces)
    from nni_visplugin.utils.registry import SPACES

    rng = np.random.RandomState(seed)
    arch: dict = {}
    for label, mutable in SPACES.create(space, **kwargs).simplify().items():
        values = list(mutable.values)
        n_chosen = getattr(mutable, "n_chosen", None)
        if n_chosen is None:  # one operation
            values = [v for v in values if v != "none"] or values
            arch[label] = values[rng.randint(len(values))]
        else:  # n_chosen distinct inputs
            arch[label] = sorted(int(values[i]) for i in rng.choice(len(values), n_chosen, replace=False))
    return arch


def hand_arch(space: str, kwargs: dict) -> dict:
    import nni_visplugin.spaces  # noqa: F401
    from nni_visplugin.utils.registry import SPACES

    labels = SPACES.create(space, **kwargs).simplify()
    conv = "conv_3x3" if "conv_3x3" in kwargs.get("primitives", ()) else "sep_conv_3x3"
    arch: dict = {}
    for label in labels:
        cell, name = label.split("/")
        if name.startswith("input_"):
            node = int(name.split("_")[1])
            # normal: the two most recent states (chain with a shortcut); reduction: the two cell inputs
            arch[label] = [node, node + 1] if cell == "normal" else [0, 1]
        else:  # op_<node>_<input>
            src = name.split("_")[2]
            arch[label] = "max_pool_3x3" if cell == "reduce" and src == "0" else conv
    return arch


def count_params(space: str, result: dict, arch: dict, width: int, cells: int) -> int:
    """Parameters of ``arch`` retrained at ``width`` and ``cells`` (0: the search's), on the search's images."""
    from nni_visplugin.nas.fixed import build_fixed_model
    from nni_visplugin.stages.retrain import retrain_kwargs

    c, h, w = result["input_shape"]
    data = {"in_channels": c, "image_size": max(h, w), "num_classes": result["num_classes"]}
    model = build_fixed_model(space, retrain_kwargs(result, data, width, cells), arch)
    return sum(p.numel() for p in model.parameters())


def matched_width(space: str, result: dict, hand: dict, pick: dict, width: int, cells: int) -> tuple[int, int, int]:
    """The even width at which ``hand`` has the parameter count closest to ``pick`` at ``width`` (ties: the
    smaller width); with both counts: ``(width, hand's parameters, pick's parameters)``."""
    target = count_params(space, result, pick, width, cells)
    top = 2 * (width or (result.get("space_kwargs") or result["search_space_kwargs"])["width"])
    counts = {w: count_params(space, result, hand, w, cells) for w in range(2, top + 1, 2)}
    best = min(counts, key=lambda w: (abs(counts[w] - target), w))
    return best, counts[best], target


def retrain_one(job: tuple[str, str, dict, str]) -> dict:
    """One model; a line per epoch (a model cut short continues from its last epoch when run again)."""
    name, arch_dir, recipe, out = job
    import torch

    from nni_visplugin.config.retrain import RetrainConfig
    from nni_visplugin.stages.retrain import epoch_line, retrain

    torch.set_num_threads(recipe.get("threads") or torch.get_num_threads())
    config = RetrainConfig(arch=arch_dir, progress=False, **recipe)

    def on_epoch(entry: dict) -> None:
        print(f"{name}: {epoch_line(entry, config.epochs)}", flush=True)

    return retrain(config, out, on_epoch=on_epoch)


def hand_label(arch: dict, matched_width: int | None = None) -> str:
    convs = sorted({v for v in arch.values() if isinstance(v, str) and "conv" in v})
    names = {"conv_3x3": "dense 3x3 convolutions", "sep_conv_3x3": "3x3 separable convolutions"}
    size = f", width {matched_width}: the searched cell's size" if matched_width else ""
    return "hand-designed cell (" + ", ".join(names.get(c, c) for c in convs) + size + ")"


def table(out: Path, models: dict[str, dict]) -> tuple[list[dict], list[str]]:
    """Rows of the comparison table for the models finished under ``out``, in ``models``' order,
    and the names of those not finished (which get no row).

    The first row is the mean over the finished random architectures (with their spread and how
    many of those asked for are missing).
    """
    rows, randoms, missing = [], [], []
    for name, arch in models.items():
        path = out / name / "metrics.json"
        if not path.exists():
            missing.append(name)
            continue
        m = json.loads(path.read_text())
        if name.startswith("random"):
            randoms.append(m["test_accuracy"])
        if name.startswith("hand"):
            label = hand_label(arch, m["config"]["width"] if name == "hand-matched" else None)
        else:
            label = f"random architecture {name}"
        rows.append({"model": label, "test_accuracy": m["test_accuracy"], "params": m["num_params"],
                     "note": f"same recipe, seed {m['seed']}, {m['threads']} thread(s), {m['wall_seconds']:.0f} s"})
    if randoms:
        asked = sum(name.startswith("random") for name in models)
        spread = statistics.stdev(randoms) if len(randoms) > 1 else 0.0
        note = f"std {spread:.4f}, min {min(randoms):.4f}, max {max(randoms):.4f}"
        if len(randoms) < asked:
            note += f"; {asked - len(randoms)} of {asked} not retrained yet"
        rows.insert(0, {"model": f"random architectures (mean of {len(randoms)})",
                        "test_accuracy": statistics.mean(randoms), "params": None, "note": note})
    return rows, missing


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nni-visplugin baselines", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--config", default="experiments/fashion_mnist.yml", help="the pipeline config whose recipe is used")
    ap.add_argument("--search", help="directory with the picked search's arch.json and result.json, which give the "
                                     "space's settings (default: the best trial of the pipeline's search.json)")
    ap.add_argument("--random", type=int, default=5, help="number of random architectures")
    ap.add_argument("--first-seed", type=int, default=0, help="sampler seed of the first random architecture")
    ap.add_argument("--seed", type=int, default=0, help="retraining seed (the pipeline's first seed)")
    ap.add_argument("--jobs", type=int, default=2, help="models retrained at once, one CPU thread each when > 1")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="retrain only these models (random-K, hand, hand-matched)")
    ap.add_argument("--out", default="runs/fashion_mnist_baselines", help="output directory")
    return ap


def _recipe(config: Path, seed: int, jobs: int) -> tuple[dict, dict]:
    """The pipeline config's ``pipeline`` part and its retraining recipe, for one seed."""
    try:
        doc = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{config}: cannot read the pipeline config ({exc})") from None
    pipe = (doc or {}).get("pipeline") or {}
    recipe = dict(pipe.get("retrain") or {})
    recipe.pop("seeds", None)
    recipe.pop("jobs", None)  # the pipeline's seeds at once; --jobs here
    recipe["seed"] = seed
    if jobs > 1:
        recipe["threads"] = 1
    return pipe, recipe


def _search_dir(search: str | None, pipe: dict) -> Path:
    if search:
        search_dir = Path(search)
    else:
        found = Path(pipe.get("out", "runs/fashion_mnist")) / "search.json"
        if not found.exists():
            raise ConfigError(f"{found} not found: run the pipeline first or pass --search DIR")
        try:
            search_dir = Path(json.loads(found.read_text())["best"]["dir"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{found} names no best search ({type(exc).__name__}: {exc}): pass --search DIR") from None
    if not (search_dir / "result.json").exists():
        raise ConfigError(f"{search_dir / 'result.json'} not found: --search takes a search output directory")
    return search_dir


def _plan(args: argparse.Namespace, pick: dict, result: dict, recipe: dict) -> tuple[dict, dict]:
    """The models of this call (name -> architecture) and each one's recipe."""
    space = result["space"]
    kwargs = result.get("search_space_kwargs") or result["space_kwargs"]
    models = {f"random-{k}": random_arch(space, kwargs, k) for k in range(args.first_seed, args.first_seed + args.random)}
    models["hand"] = models["hand-matched"] = hand_arch(space, kwargs)
    unknown = sorted(set(args.only or ()) - set(models))
    if unknown:
        raise ConfigError(f"--only: unknown model(s) {', '.join(unknown)}; this call's models: {', '.join(models)}")
    recipes = {name: recipe for name in models}
    if not args.only or "hand-matched" in args.only:
        width, params, target = matched_width(space, result, models["hand"], pick, recipe.get("width", 0),
                                              recipe.get("cells", 0))
        recipes["hand-matched"] = {**recipe, "width": width}
        print(f"hand-matched: width {width}, {params:,} parameters (the searched cell: {target:,})", flush=True)
    return models, recipes


def _jobs(args: argparse.Namespace, models: dict, recipes: dict, result: dict, out: Path) -> list[tuple]:
    """One retraining per model asked for and not finished before; its architecture written for it."""
    jobs = []
    for name, arch in models.items():
        if args.only and name not in args.only:
            continue
        d = out / name
        if (d / "metrics.json").exists():
            print(f"{name}: done before", flush=True)
            continue
        src = d / "arch"
        src.mkdir(parents=True, exist_ok=True)
        (src / "arch.json").write_text(json.dumps(arch, indent=1))
        (src / "result.json").write_text(json.dumps({**result, "arch_origin": name}, indent=1))
        jobs.append((name, str(src), recipes[name], str(d)))
    return jobs


def _run(jobs: list[tuple], workers: int) -> None:
    started = time.time()
    if len(jobs) > 1 and workers > 1:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(retrain_one, jobs)
    else:  # one at a time, in this process
        pool, results = None, map(retrain_one, jobs)
    try:
        for (name, *_), metrics in zip(jobs, results):
            print(f"{name}: test accuracy {metrics['test_accuracy']:.4f}, {metrics['num_params']} parameters, "
                  f"{metrics['wall_seconds']:.0f} s", flush=True)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    print(f"retrained {len(jobs)} model(s) in {time.time() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    from nni_visplugin.stages.search import read_search  # torch and the spaces only past --help

    args = build_parser().parse_args(argv)
    pipe, recipe = _recipe(Path(args.config), args.seed, args.jobs)
    search_dir = _search_dir(args.search, pipe)
    pick, result, _ = read_search(search_dir, hint="--search takes a search output directory")
    out = Path(args.out)
    models, recipes = _plan(args, pick, result, recipe)
    _run(_jobs(args, models, recipes, result, out), args.jobs)
    rows, missing = table(out, models)
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps(rows, indent=1))
    for row in rows:
        print(f"{row['model']:<50} {row['test_accuracy']:.4f}  {row['note']}")
    if missing:
        print(f"not retrained yet: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
