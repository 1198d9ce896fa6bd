"""Low-rank factorization of Vision Transformer blocks.

A student is a copy of the teacher in which chosen linear maps of every transformer block are replaced by a
rank-``r`` pair ``Linear(in, r, bias=False) -> Linear(r, out)``. Two ViT families are understood:

* timm blocks -- any module with ``attn`` and ``mlp``; the attention's linear maps are found by name through
  :data:`ATTENTION_MAPS` (``qkv``/``proj`` of ViT, Swin, XCiT, CaiT; ConViT GPSA ``qk``/``v``; class-attention
  ``q``/``k``/``v``), the MLP's through :data:`MLP_MAPS` (``fc1``, ``fc2``);
* torchvision ``EncoderBlock`` (``self_attention`` is an ``nn.MultiheadAttention`` with a packed in-projection,
  ``mlp`` is ``Sequential(Linear, GELU, Dropout, Linear, Dropout)``). Its attention is rebuilt as
  :class:`SplitMultiheadAttention` with separate q, k, v maps, as the paper's author did.

Target names are architecture-neutral: ``qkv``, ``proj``, ``fc1``, ``fc2`` (aliases ``attn``, ``mlp``, ``all``).
:func:`coverage` lists, per block, the linear maps that are factorized and those that stay dense. One rank must
mean the same in every block, so hierarchical models (Swin, PVT: stages of different widths) are refused.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

TARGETS = ("qkv", "proj", "fc1", "fc2")
TARGET_ALIASES = {"attn": ("qkv", "proj"), "mlp": ("fc1", "fc2"), "all": TARGETS}


class LowRankLinear(nn.Module):
    """``Linear(in, r, bias=False)`` followed by ``Linear(r, out, bias=...)``: a rank-``r`` linear map."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``out x in`` matrix this pair computes (for inspection, not for training)."""
        return self.up.weight @ self.down.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class SplitMultiheadAttention(nn.Module):
    """Drop-in replacement for ``nn.MultiheadAttention`` (batch-first, self-attention use in torchvision ViTs)
    whose q, k and v projections are separate modules, so that each can be factorized on its own."""

    def __init__(self, q_proj: nn.Module, k_proj: nn.Module, v_proj: nn.Module, out_proj: nn.Module,
                 num_heads: int, dropout: float = 0.0, batch_first: bool = True) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.num_heads, self.dropout, self.batch_first = num_heads, dropout, batch_first

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> "SplitMultiheadAttention":
        """Split a packed ``nn.MultiheadAttention`` into exact dense q, k, v, out projections."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("model: only plain self-attention nn.MultiheadAttention layers can be factorized")
        dim, like = mha.embed_dim, {"device": mha.in_proj_weight.device, "dtype": mha.in_proj_weight.dtype}
        projections = []
        for i in range(3):
            lin = nn.Linear(dim, dim, bias=mha.in_proj_bias is not None, **like)
            with torch.no_grad():
                lin.weight.copy_(mha.in_proj_weight[i * dim:(i + 1) * dim])
                if mha.in_proj_bias is not None:
                    lin.bias.copy_(mha.in_proj_bias[i * dim:(i + 1) * dim])
            projections.append(lin)
        out = nn.Linear(dim, dim, bias=mha.out_proj.bias is not None, **like)
        out.load_state_dict(mha.out_proj.state_dict())
        return cls(*projections, out, mha.num_heads, mha.dropout, mha.batch_first)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
                **_: object) -> tuple[torch.Tensor, None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, n, _ = query.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], self.num_heads, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        dropout = self.dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        x = self.out_proj(x.transpose(1, 2).reshape(b, n, -1))
        if not self.batch_first:
            x = x.transpose(0, 1)
        return x, None


# ----------------------------------------------------------------------------------------------- discovery
#: Attention layouts as data: the name of a linear map inside a block's attention module -> its target.
#: ``qkv``/``proj``: timm ``Attention``, Swin, XCiT, CaiT talking-heads; ``qk``/``v``: ConViT GPSA; ``q``/``k``/``v``:
#: CaiT and XCiT class attention; ``q``/``kv``: separate query and key-value maps; ``q_proj``...``out_proj``:
#: torchvision after splitting.
#: Other linears there (GPSA ``pos_proj``, talking-heads ``proj_l``/``proj_w``) mix positions or heads, not token
#: features: they stay dense and :func:`coverage` lists them.
ATTENTION_MAPS: dict[str, str] = {
    "qkv": "qkv", "qk": "qkv", "kv": "qkv", "q": "qkv", "k": "qkv", "v": "qkv",
    "q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "proj": "proj", "out_proj": "proj",
}
#: MLP layouts: the name of a linear map inside a block's MLP -> its target (timm ``Mlp``). A torchvision
#: ``MLPBlock`` (a ``Sequential``) has no names: its first and second linear are ``fc1`` and ``fc2``.
MLP_MAPS: dict[str, str] = {"fc1": "fc1", "fc2": "fc2"}


@dataclass(frozen=True)
class TargetLayer:
    """One linear map chosen for factorization: where it lives and its shape."""

    name: str            # dotted path of the linear map in the (student) model
    target: str          # one of TARGETS
    in_features: int
    out_features: int
    bias: bool

    @property
    def full_rank(self) -> int:
        """``min(in, out)``: the rank at which a factorized pair can be exact."""
        return min(self.in_features, self.out_features)


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's transformer blocks: timm-style (``attn`` + ``mlp``) or torchvision-style
    (``self_attention`` + ``mlp``), in module order."""
    blocks = []
    for name, module in model.named_modules():
        if hasattr(module, "mlp") and (hasattr(module, "attn") or hasattr(module, "self_attention")):
            blocks.append((name, module))
    return blocks


def _attention_name(block: nn.Module) -> str:
    return "attn" if hasattr(block, "attn") else "self_attention"


def block_attention(block: nn.Module) -> nn.Module:
    """The attention sub-module of a block (timm ``attn`` or torchvision ``self_attention``)."""
    return getattr(block, _attention_name(block))


def resolve_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """Expand aliases and validate target names; returns them in canonical order."""
    names = [targets] if isinstance(targets, str) else list(targets)
    chosen: set[str] = set()
    for name in names:
        if name in TARGET_ALIASES:
            chosen.update(TARGET_ALIASES[name])
        elif name in TARGETS:
            chosen.add(name)
        else:
            allowed = ", ".join(TARGETS + tuple(TARGET_ALIASES))
            raise ValueError(f"targets: unknown target {name!r}; allowed: {allowed}")
    if not chosen:
        raise ValueError("targets: empty; choose at least one of " + ", ".join(TARGETS))
    return tuple(t for t in TARGETS if t in chosen)


class _ShapeOnly:
    """Shape of a q/k/v slice of a packed in-projection (it is not a module of its own before splitting)."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        self.in_features, self.out_features, self.bias = in_features, out_features, bias


def _named_maps(module: nn.Module, prefix: str, table: dict[str, str]) -> list[tuple[str, str, nn.Module]]:
    return [(table[name], f"{prefix}.{name}", child) for name, child in module.named_children() if name in table]


def _block_linears(block: nn.Module) -> Iterator[tuple[str, str, nn.Module | _ShapeOnly]]:
    """(target, relative path, module) for every map of one block that a target names (in module order)."""
    attn_name, attn = _attention_name(block), block_attention(block)
    if isinstance(attn, nn.MultiheadAttention):  # packed q, k, v: factorize splits them
        shape = _ShapeOnly(attn.embed_dim, attn.embed_dim, attn.in_proj_bias is not None)
        yield from (("qkv", f"{attn_name}.{part}_proj", shape) for part in "qkv")
        yield "proj", f"{attn_name}.out_proj", attn.out_proj
    else:
        yield from _named_maps(attn, attn_name, ATTENTION_MAPS)
    mlp = _named_maps(block.mlp, "mlp", MLP_MAPS)
    if not mlp and isinstance(block.mlp, nn.Sequential):  # torchvision MLPBlock
        linears = [(f"mlp.{i}", m) for i, m in enumerate(block.mlp) if isinstance(m, (nn.Linear, LowRankLinear))]
        if len(linears) == 2:
            mlp = [(target, path, m) for target, (path, m) in zip(("fc1", "fc2"), linears)]
    yield from mlp


def _block_layers(block_name: str, block: nn.Module, wanted: Sequence[str]) -> tuple[list[TargetLayer], list[str]]:
    """One block's maps selected by ``wanted`` (as :class:`TargetLayer`) and the paths of its other linear maps,
    which stay dense: unselected or non-linear (e.g. conv-style) target maps, and linears no target names."""
    prefix = f"{block_name}." if block_name else ""
    layers, dense, named = [], [], []
    for target, path, module in _block_linears(block):
        named.append(path)
        if target in wanted and isinstance(module, (nn.Linear, LowRankLinear, _ShapeOnly)):
            bias = module.bias if isinstance(module, _ShapeOnly) else module.bias is not None
            layers.append(TargetLayer(prefix + path, target, module.in_features, module.out_features, bool(bias)))
        else:
            dense.append(prefix + path)
    for path, module in block.named_modules():
        inside_named = any(path == n or path.startswith(n + ".") for n in named)
        if isinstance(module, nn.Linear) and not inside_named:
            dense.append(prefix + path)
    return layers, dense


def _check_one_width(model: nn.Module, layers: Sequence[TargetLayer]) -> None:
    """Refuse a model whose layers of one target differ in ``min(in, out)`` across blocks (hierarchical
    stages): one rank would then be full rank for the narrow stages only."""
    for target in TARGETS:
        widths = sorted({layer.full_rank for layer in layers if layer.target == target})
        if len(widths) > 1:
            raise ValueError(
                f"model: {type(model).__name__} is hierarchical: its {target} layers differ in min(in, out) across "
                f"blocks ({', '.join(map(str, widths))}), so one rank would mean a different fraction of each stage "
                "and the wider stages could never reach full rank; factorization needs blocks of one width "
                "(ViT, DeiT, CaiT, ConViT, XCiT, torchvision ViT)")


def target_layers(model: nn.Module, targets: str | Iterable[str] = "all") -> list[TargetLayer]:
    """Every linear map of every transformer block selected by ``targets`` (paths as in the student).

    Raises ``ValueError`` for hierarchical models (layers of one target with different widths in different
    blocks, e.g. Swin)."""
    wanted = resolve_targets(targets)
    layers = [layer for name, block in transformer_blocks(model) for layer in _block_layers(name, block, wanted)[0]]
    _check_one_width(model, layers)
    return layers


def target_weights(model: nn.Module, targets: str | Iterable[str] = "all") -> list[tuple[TargetLayer, torch.Tensor]]:
    """Every map :func:`target_layers` selects with its dense weight ``out x in`` (detached; a packed
    ``nn.MultiheadAttention`` is split into its q, k and v projections as :func:`factorize` does)."""
    split = {}
    for name, block in transformer_blocks(model):
        attn = block_attention(block)
        if isinstance(attn, nn.MultiheadAttention):
            split[(f"{name}." if name else "") + _attention_name(block)] = SplitMultiheadAttention.from_multihead(attn)

    def weight(path: str) -> torch.Tensor:
        parent, _, leaf = path.rpartition(".")
        module = getattr(split[parent], leaf) if parent in split else model.get_submodule(path)
        return module.weight.detach()  # a LowRankLinear's is the product of its factors

    return [(layer, weight(layer.name)) for layer in target_layers(model, targets)]


def coverage(model: nn.Module, targets: str | Iterable[str] = "all") -> list[dict]:
    """Which linear maps of each block ``factorize(model, rank, targets=targets)`` replaces, and which stay dense.

    JSON-ready, one dict per transformer block: ``block`` (its path), ``factorized`` and ``dense`` (paths of
    linear maps, as in the student) and ``missing`` (targets asked for that the block has no factorizable map
    for: that part of the block stays dense). Works on a student too (its pairs count as factorized).
    """
    wanted = resolve_targets(targets)
    entries = []
    for name, block in transformer_blocks(model):
        layers, dense = _block_layers(name, block, wanted)
        found = {layer.target for layer in layers}
        entries.append({"block": name, "factorized": [layer.name for layer in layers], "dense": dense,
                        "missing": [t for t in wanted if t not in found]})
    return entries


def _warn_coverage(entries: Sequence[dict]) -> None:
    gaps = [f"{e['block'] or '(model)'} ({', '.join(e['missing'])})" for e in entries if e["missing"]]
    if gaps:
        warnings.warn(f"coverage: {len(gaps)} of {len(entries)} blocks have no factorizable map for a requested "
                      f"target, which stays dense: {'; '.join(gaps)}. The student is only partly low-rank "
                      "(see coverage())", stacklevel=3)


# --------------------------------------------------------------------------------------------- factorize
def max_rank(layers: Sequence[TargetLayer]) -> int:
    """The largest rank every targeted layer admits: the smallest ``min(in, out)`` among them (the same in every
    block, since :func:`target_layers` refuses hierarchical models)."""
    return min(layer.full_rank for layer in layers)


def _validate(model: nn.Module, rank: object, init: str, layers: Sequence[TargetLayer]) -> int:
    if init not in INITS:
        raise ValueError(f"init: unknown initialization {init!r}; allowed: {', '.join(INITS)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank: must be a positive integer, got {rank!r}")
    if not layers:
        raise ValueError(f"model: no targeted linear layers found in {type(model).__name__}; factorization "
                         "understands timm ViT blocks (attn.qkv/attn.proj/mlp.fc1/mlp.fc2) and torchvision "
                         "EncoderBlocks")
    limit = max_rank(layers)
    if rank > limit:
        raise ValueError(f"rank: {rank} exceeds min(in, out) = {limit} of a targeted layer; allowed: 1..{limit}")
    return rank


def _factor(linear: nn.Linear | LowRankLinear, rank: int, init: str) -> LowRankLinear:
    """A rank-``rank`` pair for ``linear`` (a dense map, or a pair read as its product), its factors set by the
    init's ``factors`` step."""
    w = linear.weight.detach()
    pair = LowRankLinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
    pair.to(device=w.device, dtype=w.dtype)
    INITS[init].factors(linear, pair)
    return pair


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, module)


def _reset_parameters(module: nn.Module) -> None:
    """Re-initialize every sub-module that knows how (PyTorch defaults; LayerNorm to 1/0)."""
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


def _head(model: nn.Module) -> nn.Module | None:
    if hasattr(model, "heads"):  # torchvision
        return model.heads
    head = getattr(model, "head", None)
    return head if isinstance(head, nn.Module) else None


def _final_norms(model: nn.Module) -> list[nn.Module]:
    names = ("norm", "fc_norm", "norm_pre")
    norms = [getattr(model, n) for n in names if isinstance(getattr(model, n, None), nn.Module)]
    encoder = getattr(model, "encoder", None)
    if encoder is not None and isinstance(getattr(encoder, "ln", None), nn.Module):
        norms.append(encoder.ln)
    return norms


def _svd_factors(linear: nn.Linear, pair: LowRankLinear) -> None:
    """The truncated SVD of the dense map, sqrt(S) split between the factors: the best rank-r approximation
    (Eckart-Young), exact at full rank. Computed in float32 or the layer's dtype if wider (a float64 teacher gets
    a float64 SVD, exact to ~1e-14), stored in the layer's dtype."""
    w = linear.weight.detach()
    u, s, vh = torch.linalg.svd(w.to(torch.promote_types(w.dtype, torch.float32)), full_matrices=False)
    root = s[:pair.rank].sqrt()
    with torch.no_grad():
        pair.down.weight.copy_((root[:, None] * vh[:pair.rank]).to(w.dtype))
        pair.up.weight.copy_((u[:, :pair.rank] * root[None, :]).to(w.dtype))
        if linear.bias is not None:
            pair.up.bias.copy_(linear.bias)


def _default_factors(linear: nn.Linear, pair: LowRankLinear) -> None:
    """PyTorch's default initialization of the factor layers (already done when the pair was built)."""


def _fresh_blocks_and_head(student: nn.Module) -> None:
    """The paper author's: every transformer block, the head and the final norms re-initialized."""
    for _, block in transformer_blocks(student):
        _reset_parameters(block)
    for module in [_head(student), *_final_norms(student)]:
        if module is not None:
            _reset_parameters(module)


@dataclass(frozen=True)
class InitSpec:
    """A student initialization: how each pair's factors are set from its dense map, then (optionally) a step
    over the whole student."""

    factors: Callable[[nn.Linear, LowRankLinear], None]
    student: Callable[[nn.Module], None] | None = None


#: Student initializations by name.
INITS: dict[str, InitSpec] = {
    "svd": InitSpec(_svd_factors),
    "random": InitSpec(_default_factors),
    "paper": InitSpec(_default_factors, _fresh_blocks_and_head),
}


def factorize(teacher: nn.Module, rank: int, *, init: str = "svd", targets: str | Iterable[str] = "all",
              seed: int | None = None) -> nn.Module:
    """Return a new student whose targeted block linears are rank-``rank`` :class:`LowRankLinear` pairs.

    ``init`` is ``svd`` (truncated SVD of the teacher weight, sqrt(S) split between the factors; exact at
    full rank), ``random`` (PyTorch default init of the factor layers, everything else copied), or ``paper``
    (the author's: fresh transformer blocks and head, embeddings copied). ``seed`` makes random parts
    reproducible without touching the global RNG. The teacher is not modified; the student keeps its dtype and
    device. Warns when a block has no factorizable map for a requested target (see :func:`coverage`).
    """
    layers = target_layers(teacher, targets)
    rank = _validate(teacher, rank, init, layers)
    _warn_break_even(layers, rank)
    _warn_coverage(coverage(teacher, targets))
    student = copy.deepcopy(teacher).requires_grad_(True)  # a frozen teacher still gives a trainable student
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for _, block in transformer_blocks(student):
            attn = block_attention(block)
            if isinstance(attn, nn.MultiheadAttention):
                block.self_attention = SplitMultiheadAttention.from_multihead(attn)
        for layer in layers:
            _set_submodule(student, layer.name, _factor(student.get_submodule(layer.name), rank, init))
        if INITS[init].student is not None:
            INITS[init].student(student)
    return student


def from_neighbour(student: nn.Module, rank: int) -> nn.Module:
    """A rank-``rank`` student warm-started from a trained student of a higher rank (its grid neighbour).

    Parameters
    ----------
    student
        A student (from :func:`factorize`, trained or not) whose pairs all have rank ``>= rank``; not modified.
    rank
        The new rank, an integer in ``1..`` the smallest rank among ``student``'s pairs.

    Notes
    -----
    Each pair's dense product ``up @ down`` is truncated by SVD to ``rank`` (the best rank-``rank`` approximation
    of what the trained neighbour computes, Eckart-Young), its bias kept; everything else (embeddings, norms,
    head) is copied as the neighbour trained it. At the neighbour's own rank the copy computes what it computes.

    Examples
    --------
    >>> student_2 = from_neighbour(trained_student_3, 2)  # doctest: +SKIP
    """
    pairs = [(name, m) for name, m in student.named_modules() if isinstance(m, LowRankLinear)]
    if not pairs:
        raise ValueError(f"student: {type(student).__name__} has no low-rank pairs; build it with factorize()")
    limit = min(pair.rank for _, pair in pairs)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(f"rank: must be an integer in 1..{limit} (the neighbour's rank), got {rank!r}")
    warm = copy.deepcopy(student)
    with torch.random.fork_rng(devices=[]):  # building the pairs must not move the caller's RNG
        for name, pair in pairs:
            _set_submodule(warm, name, _factor(pair, rank, "svd"))
    return warm.requires_grad_(True)


# ------------------------------------------------------------------------------------------- accounting
def count_parameters(model: nn.Module) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def low_rank_parameters(in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
    """Parameters of a rank-``rank`` pair: ``rank * (in + out)`` plus the output bias."""
    return rank * (in_features + out_features) + (out_features if bias else 0)


def break_even_rank(in_features: int, out_features: int) -> float:
    """Rank ``in*out/(in+out)`` at or above which a factorized layer has no fewer weights than the dense one."""
    return in_features * out_features / (in_features + out_features)


def _warn_break_even(layers: Sequence[TargetLayer], rank: int) -> None:
    wasteful = sorted({layer.target for layer in layers
                       if rank >= break_even_rank(layer.in_features, layer.out_features)})
    if wasteful:
        warnings.warn(f"rank {rank} is at or above the break-even rank of the {', '.join(wasteful)} layers: "
                      "factorizing them saves no parameters", stacklevel=3)


def parameter_report(teacher: nn.Module, rank: int, targets: str | Iterable[str] = "all") -> dict:
    """Parameter accounting for a rank-``rank`` student of ``teacher`` (computed, nothing is built).

    Returns ``teacher_params``, ``student_params``, ``compression`` (teacher / student) and ``layers``: one
    dict per targeted layer with its shape, dense and factorized counts and break-even rank.
    """
    layers = target_layers(teacher, targets)
    _validate(teacher, rank, "svd", layers)
    rows = []
    for layer in layers:
        dense = layer.in_features * layer.out_features + (layer.out_features if layer.bias else 0)
        rows.append({
            "name": layer.name, "target": layer.target, "in": layer.in_features, "out": layer.out_features,
            "dense_params": dense,
            "low_rank_params": low_rank_parameters(layer.in_features, layer.out_features, rank, layer.bias),
            "break_even_rank": break_even_rank(layer.in_features, layer.out_features),
        })
    teacher_params = count_parameters(teacher)
    student_params = teacher_params + sum(r["low_rank_params"] - r["dense_params"] for r in rows)
    return {"rank": rank, "teacher_params": teacher_params, "student_params": student_params,
            "compression": teacher_params / student_params, "layers": rows}


def compression_table(teacher: nn.Module, ranks: Iterable[int], targets: str | Iterable[str] = "all") -> list[dict]:
    """Student size per rank: parameters, compression, whether every targeted layer still saves weights, and the
    coverage counts: ``factorized_layers`` and ``dense_layers`` (block linears that stay dense; which ones, per
    block, is :func:`coverage`)."""
    blocks = coverage(teacher, targets)
    factorized, dense = (sum(len(block[key]) for block in blocks) for key in ("factorized", "dense"))
    rows = []
    for rank in ranks:
        report = parameter_report(teacher, rank, targets)
        rows.append({"rank": rank, "student_params": report["student_params"],
                     "compression": round(report["compression"], 3),
                     "below_break_even": all(rank < layer["break_even_rank"] for layer in report["layers"]),
                     "factorized_layers": factorized, "dense_layers": dense})
    return rows
