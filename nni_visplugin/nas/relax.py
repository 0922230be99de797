"""The continuous relaxation of a model space, and the derivation of a discrete architecture from it.

A strategy walks the space as NNI's ``OneShotStrategy.mutate_model`` does and calls mutation hooks
on every module (:mod:`nni_visplugin.nas.strategies.base`); the two hooks here replace each
``LayerChoice`` by a :class:`MixedOp` and each ``InputChoice`` by a :class:`MixedInput`. Choices that
share a label share one architecture parameter, so a derived architecture is consistent wherever
the label appears. Anything else mutable is refused by the ``no_default_hook`` placed last.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from nni.nas.nn.pytorch import InputChoice, LayerChoice

from nni_visplugin.spaces.ops import FactorizedReduce

__all__ = ["reject_unsupported_hook", "ChoiceModule", "choice_modules", "MixedOp", "MixedInput", "mixed_op_hook",
           "mixed_input_hook", "mixed_modules", "arch_parameters", "alpha_snapshot", "is_zero_op", "channel_shuffle",
           "scaled_batch_norm", "enable_partial_channels", "enable_edge_normalization", "enable_checkpointing",
           "set_aux_skip", "enable_aux_reduce", "op_choices", "input_choices", "learnable_candidates"]


def is_zero_op(module: nn.Module) -> bool:
    """Candidates flagged ``is_zero`` (the ``none`` operation) contribute nothing and are never run."""
    return bool(getattr(module, "is_zero", False))


def _new_alpha(n: int) -> nn.Parameter:
    # Small random initialisation, as in the DARTS paper's code: near-uniform softmax, ties broken.
    return nn.Parameter(1e-3 * torch.randn(n))


class ChoiceModule(nn.Module):
    """Base of every relaxed choice: ``label``, candidate ``names`` and the architecture ``alpha``
    (``None`` where the choice is carried by other parameters, as DARTS nodes are by their edges)."""

    label: str
    names: list
    alpha: nn.Parameter | None
    kind: str = "op"  # "op": one of operations (a LayerChoice); "input": of inputs (an InputChoice)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups, so the next edge samples other channels (PC-DARTS)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MixedOp(ChoiceModule):
    """``sum_i softmax(alpha)_i * op_i(x)`` over the candidates of one ``LayerChoice``.

    Three switches change the relaxation, not the space:

    - ``partial`` = K > 1 (PC-DARTS, Xu et al., ICLR 2020, section 3.2): the candidates run on the
      first 1/K of the channels only; the rest bypass the edge (max-pooled on a reduction edge) and
      the two parts are concatenated and channel-shuffled. Set by :meth:`make_partial`.
    - ``aux_skip`` = beta > 0 (DARTS-, Chu et al., ICLR 2021): ``beta * x`` is added to a
      shape-preserving edge and ``beta * FactorizedReduce(x)`` to a stride-2 edge (its own
      affine-free reduction, ``aux_reduce``, set by :func:`enable_aux_reduce`), so skip
      connections no longer need alpha to carry the gradient; the strategy decays beta to 0 over
      the search.
    - ``checkpoint`` = True (memory-lean): the candidates' intermediate activations are not kept
      for the backward pass but recomputed in it (activation checkpointing), so an edge holds only
      its input and output. The same values and gradients; batch-norm running statistics are
      updated once per forward, not again by the recomputation. Set by :func:`enable_checkpointing`.

    The sum itself is computed leanly (``fused`` = True; False runs every candidate whole, the
    straightforward reference the tests compare with): candidates that are plain ``nn.Sequential``
    chains are unrolled, the ``ReLU`` most of them start with is applied to the edge's input once
    for all of them (the DARTS convolutions are ReLU-conv-BN), and a closing affine-free batch norm
    takes the candidate's weight ``softmax(alpha)_i`` as its scale, so ``w_i * BN(h)`` needs
    neither a separate multiplication nor a kept copy of ``BN(h)`` for the backward pass. The
    values and gradients are the same up to rounding.
    """

    # NNI_VISPLUGIN_FUSED_EDGES=0 runs the reference everywhere (for benchmarks and bisecting).
    fused = os.environ.get("NNI_VISPLUGIN_FUSED_EDGES", "1") != "0"

    def __init__(self, label: str, names: list, candidates: list[nn.Module], alpha: nn.Parameter):
        super().__init__()
        if alpha.numel() != len(candidates):
            raise ValueError(f"label {label!r} is shared by choices with {alpha.numel()} and {len(candidates)} candidates")
        self.label = str(label)  # NNI labels are a str subclass that weights_only loading refuses
        self.names = list(names)
        self.candidates = nn.ModuleList(candidates)
        self.alpha = alpha
        self.zero = [is_zero_op(op) for op in candidates]
        if all(self.zero):
            raise ValueError(f"LayerChoice {label!r} has only zero candidates")
        self.partial = 1
        self.aux_skip = 0.0
        self.checkpoint = False
        # Candidates taken out of the edge (perturbation-based selection): they add nothing.
        self.removed: frozenset[int] = frozenset()
        # A candidate the edge is projected onto (perturbation-based selection): it alone runs, at weight 1.
        self.fixed: int | None = None
        self.aux_reduce: nn.Module | None = None

    def make_partial(self, k: int, channels: int) -> None:
        """Rebuild the candidates at ``channels // k`` channels (they must offer ``at_width``)."""
        if k == 1:
            return
        if channels % k:
            raise ValueError(f"partial_channels={k} must divide the {channels} channels of edge {self.label!r}")
        missing = [n for n, op in zip(self.names, self.candidates) if not callable(getattr(op, "at_width", None))]
        if missing:
            raise TypeError(f"candidates {missing} of {self.label!r} cannot be rebuilt at another width, which "
                            "partial channels need; build them with nni_visplugin.spaces.ops.make_op")
        self.candidates = nn.ModuleList(op.at_width(channels // k) for op in self.candidates)
        self.partial = k

    def weights(self) -> torch.Tensor:
        return F.softmax(self.alpha, dim=-1)

    def _mix(self, part: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = None
        relu = None
        for i, op in enumerate(self.candidates):
            if self.zero[i] or i in self.removed or (self.fixed is not None and i != self.fixed):
                continue
            chain = _unrolled(op) if self.fused else None
            if chain is None:  # the reference, or not a plain chain (or hooked): run it whole
                y = op(part) * w[i]
            else:
                h = part
                if chain and type(chain[0]) is nn.ReLU:
                    if relu is None:
                        relu = F.relu(part)
                    h, chain = relu, chain[1:]
                tail = chain[-1] if chain and _scalable_norm(chain[-1]) else None
                for m in chain[:-1] if tail is not None else chain:
                    h = m(h)
                y = scaled_batch_norm(tail, h, w[i]) if tail is not None else h * w[i]
            out = y if out is None else out + y
        return out

    def _recompute_contexts(self):
        return contextlib.nullcontext(), _frozen_batch_norm_stats(self.candidates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        if self.fixed is not None:
            w = F.one_hot(torch.tensor(self.fixed, device=w.device), len(w)).to(w.dtype)
        k = self.partial
        part = x[:, : x.shape[1] // k] if k > 1 else x
        if self.checkpoint and self.training and torch.is_grad_enabled():
            out = torch.utils.checkpoint.checkpoint(self._mix, part, w, use_reentrant=False,
                                                    context_fn=self._recompute_contexts)
        else:
            out = self._mix(part, w)
        if k > 1:
            rest = x[:, x.shape[1] // k:]
            if rest.shape[2:] != out.shape[2:]:  # a reduction edge: the bypass halves its resolution too
                rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
            out = channel_shuffle(torch.cat([out, rest], dim=1), k)
        if self.aux_skip:
            if out.shape == x.shape:
                out = out + self.aux_skip * x
            elif self.aux_reduce is not None:
                out = out + self.aux_skip * self.aux_reduce(x)
        return out


def _unrolled(op: nn.Module) -> list[nn.Module] | None:
    """The leaf modules a candidate applies one after another, or None when it is not a chain of
    plain ``nn.Sequential`` containers (its own ``forward``) or carries hooks that must see it run."""
    if op._forward_hooks or op._forward_pre_hooks:
        return None
    if not isinstance(op, nn.Sequential) or type(op).forward is not nn.Sequential.forward:
        return [op]
    leaves: list[nn.Module] = []
    for m in op:
        sub = _unrolled(m)
        if sub is None:
            return None
        leaves.extend(sub)
    return leaves


def _scalable_norm(m: nn.Module) -> bool:
    return (type(m) is nn.BatchNorm2d and not m.affine and not m._forward_hooks and not m._forward_pre_hooks)


def scaled_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * bn(x)`` for an affine-free batch norm, as one batch norm whose weight is ``scale``
    on every channel: the running statistics are updated exactly as ``bn(x)`` updates them."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    # A dense weight vector, not a broadcast view: the CPU kernel for channels-last inputs reads
    # the weight as dense memory and gave NaN gradients with a stride-0 one (tests/test_fast_path.py).
    return F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None,
                        scale.expand(x.shape[1]).contiguous(), None, use_batch_stats, factor, bn.eps)


class MixedInput(ChoiceModule):
    kind = "input"

    """Relaxation of an ``InputChoice`` (``reduction='sum'`` or ``'mean'``).

    With ``edge_labels`` (each candidate input is the output of a ``LayerChoice``), the node is the
    plain sum of its incoming edges, as in the DARTS paper: the edges' own operation weights carry
    the choice. With edge normalisation (PC-DARTS, section 3.3) such a node also has a parameter
    ``alpha`` over its edges and sums them weighted by its softmax; an edge's strength is then that
    weight times its strongest operation's. Otherwise the candidates are mixed by a softmax over
    their own parameter, scaled to the magnitude of the chosen ``n_chosen`` inputs.
    """

    def __init__(self, label: str, n_candidates: int, n_chosen: int, reduction: str,
                 alpha: nn.Parameter | None, edge_labels: list[str] | None):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise TypeError(f"InputChoice {label!r} with reduction={reduction!r} cannot be relaxed; use 'sum' or 'mean'")
        self.label = str(label)  # NNI labels are a str subclass that weights_only loading refuses
        self.names = list(range(n_candidates))
        self.n_candidates = n_candidates
        self.n_chosen = n_chosen
        self.reduction = reduction
        self.alpha = alpha
        self.edge_labels = [str(e) for e in edge_labels] if edge_labels else None
        # Incoming edges taken out of the node (perturbation-based selection): they add nothing.
        self.dropped: frozenset[int] = frozenset()

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != self.n_candidates:
            raise ValueError(f"InputChoice {self.label!r} expects {self.n_candidates} inputs, got {len(inputs)}")
        if self.dropped and self.edge_labels:
            inputs = [torch.zeros_like(x) if i in self.dropped else x for i, x in enumerate(inputs)]
        if self.alpha is None:
            out = sum(inputs)
            return out / self.n_candidates * self.n_chosen if self.reduction == "mean" else out
        w = F.softmax(self.alpha, dim=-1)
        out = sum(w[i] * x for i, x in enumerate(inputs))
        if self.edge_labels:
            return out
        return out * self.n_chosen if self.reduction == "sum" else out


def mixed_op_hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
    """NNI mutation hook: ``LayerChoice`` -> :class:`MixedOp` (alphas shared per label through ``memo``)."""
    if not isinstance(module, LayerChoice):
        return None
    names = list(module.names)
    alpha = memo.setdefault(module.label, _new_alpha(len(names)))
    return MixedOp(module.label, names, [module[n] for n in names], alpha)


def mixed_input_hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
    """NNI mutation hook: ``InputChoice`` -> :class:`MixedInput`."""
    if not isinstance(module, InputChoice):
        return None
    edge_labels = getattr(module, "edge_labels", None)
    n_chosen = module.n_chosen if module.n_chosen is not None else 1
    alpha = None if edge_labels else memo.setdefault(module.label, _new_alpha(module.n_candidates))
    return MixedInput(module.label, module.n_candidates, n_chosen, module.reduction, alpha, edge_labels)


def reject_unsupported_hook(module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]):
    """NNI mutation hook: refuse NNI's ``Cell`` and ``Repeat``, whose forward the relaxations here
    do not follow (a ``Cell`` applies its operations to inputs it picks itself); write such spaces
    with plain ``LayerChoice`` / ``InputChoice``, as ``darts_cell`` does."""
    from nni.nas.nn.pytorch import Cell, Repeat

    if isinstance(module, (Cell, Repeat)):
        raise TypeError(f"module {name!r} is an NNI {type(module).__name__}, which nni_visplugin strategies do not "
                        "relax; build the space from LayerChoice / InputChoice (see the darts_cell space)")
    return None


def mixed_modules(supernet: nn.Module) -> tuple[dict[str, MixedOp], dict[str, MixedInput]]:
    """The first :class:`MixedOp` and the first :class:`MixedInput` of every label."""
    ops: dict[str, MixedOp] = {}
    inputs: dict[str, MixedInput] = {}
    for m in supernet.modules():
        if isinstance(m, MixedOp):
            ops.setdefault(m.label, m)
        elif isinstance(m, MixedInput):
            inputs.setdefault(m.label, m)
    return ops, inputs


def choice_modules(supernet: nn.Module) -> dict[str, ChoiceModule]:
    """The first relaxed module of every label that owns an architecture parameter."""
    found: dict[str, ChoiceModule] = {}
    for m in supernet.modules():
        if isinstance(m, ChoiceModule) and m.alpha is not None:
            found.setdefault(m.label, m)
    return found


def arch_parameters(supernet: nn.Module) -> dict[str, nn.Parameter]:
    """Architecture parameters by label (one tensor per label, however many modules share it)."""
    return {label: m.alpha for label, m in choice_modules(supernet).items()}


def alpha_snapshot(supernet: nn.Module) -> dict[str, dict[str, list]]:
    """Plain-data view of every architecture parameter: candidate names, raw values, softmax."""
    return {label: {"names": list(m.names), "alpha": m.alpha.detach().cpu().tolist(),
                    "softmax": F.softmax(m.alpha.detach(), -1).cpu().tolist()}
            for label, m in choice_modules(supernet).items()}


def enable_partial_channels(supernet: nn.Module, k: int) -> None:
    """PC-DARTS: every mixed operation runs its candidates on 1/k of its input channels (an edge's
    channel count is read from its candidates' first convolution or batch norm)."""
    for m in supernet.modules():
        if isinstance(m, MixedOp):
            m.make_partial(k, _channels_of(m))


def _channels_of(op: MixedOp) -> int:
    for cand in op.candidates:
        for sub in cand.modules():
            if isinstance(sub, nn.Conv2d):
                return sub.in_channels
            if isinstance(sub, nn.BatchNorm2d):
                return sub.num_features
    raise TypeError(f"cannot tell the channels of edge {op.label!r}: no candidate has a convolution or batch norm")


def enable_edge_normalization(supernet: nn.Module) -> None:
    """PC-DARTS edge normalisation: one parameter per node label over its incoming edges."""
    shared: dict[str, nn.Parameter] = {}
    for m in supernet.modules():
        if isinstance(m, MixedInput) and m.edge_labels:
            m.alpha = shared.setdefault(m.label, _new_alpha(m.n_candidates))


@contextlib.contextmanager
def _frozen_batch_norm_stats(module: nn.Module):
    """Batch norm inside ``module`` normalises with the batch statistics as in training but leaves
    its running statistics (and its batch counter) as they are: for a checkpoint's recomputation."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def enable_checkpointing(supernet: nn.Module, share: float = 1.0) -> None:
    """Memory-lean supernet: mixed operations recompute their candidates in the backward pass.

    ``share`` < 1 limits this to that share of the mixed operations (rounded up), the first ones
    in the network's module order: in a cell network, those of the first cells, which work at the
    highest resolution and so hold most of the activations for the least recomputation.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    edges = [m for m in supernet.modules() if isinstance(m, MixedOp)]
    for m in edges[: math.ceil(share * len(edges))]:
        m.checkpoint = True


def set_aux_skip(supernet: nn.Module, beta: float) -> None:
    for m in supernet.modules():
        if isinstance(m, MixedOp):
            m.aux_skip = float(beta)


def _reduces(op: MixedOp) -> bool:
    """Whether the edge halves the resolution (a candidate with stride 2 or a factorised reduction)."""
    for cand in op.candidates:
        for sub in cand.modules():
            stride = getattr(sub, "stride", 1)
            stride = stride[0] if isinstance(stride, (tuple, list)) else stride
            if type(sub).__name__ == "FactorizedReduce" or (stride or 1) > 1:
                return True
    return False


def enable_aux_reduce(supernet: nn.Module) -> None:
    """DARTS-: every stride-2 edge gets the affine-free ``FactorizedReduce`` its auxiliary skip runs
    (trained with the weights), as the reference does where ``beta * x`` cannot be added."""
    for m in supernet.modules():
        if isinstance(m, MixedOp) and m.aux_reduce is None and _reduces(m):
            c = _channels_of(m) * m.partial
            m.aux_reduce = FactorizedReduce(c, c, affine=False)


def op_choices(supernet: nn.Module) -> dict[str, ChoiceModule]:
    """The first relaxed choice of operations of every label (any relaxation: mixed or gated)."""
    return {label: m for label, m in choice_modules(supernet).items() if m.kind == "op"}


def input_choices(supernet: nn.Module) -> dict[str, ChoiceModule]:
    """The first relaxed choice of inputs of every label, with or without its own parameter."""
    found: dict[str, ChoiceModule] = {}
    for m in supernet.modules():
        if isinstance(m, ChoiceModule) and m.kind == "input":
            found.setdefault(m.label, m)
    return found


def learnable_candidates(supernet: nn.Module) -> dict[str, list[int]]:
    """Per choice of operations, the candidates with parameters (the "learnable operations" DARTS+
    ranks: convolutions, not pools, skips or none)."""
    return {label: [i for i, c in enumerate(m.candidates) if any(True for _ in c.parameters())]
            for label, m in op_choices(supernet).items()}


