"""A case: what a user wants to try, in sequences, heads and lengths, built into the op's exact arguments.

    >>> import fia_kit
    >>> from fia_kit.case import Case
    >>> case = Case(q_lens=(5, 3), kv_lens=(9, 4), heads=4, kv_heads=2, layout="TND", sparse_mode=3)
    >>> built = case.build("v2")            # or "v1", "torchair-v1", "torchair-v2"
    >>> out, lse = built.call(fia_kit.npu_fused_infer_attention_score_v2)
    >>> tuple(out.shape)                    # TND: (T = 5 + 3, N_q, D)
    (8, 4, 16)
    >>> q, k, v, kwargs = built.args_for("torchair-v2")   # same tensors; lengths as int64 tensors
    >>> kwargs["actual_seq_qlen"]
    tensor([5, 8])
    >>> text = case.describe("v2")          # every tensor and keyword, with shape, dtype and meaning

Tensors are seeded (``seed``) and padding positions hold large garbage (1000), never zeros, so a wrong length
shows. The scale defaults to 1/sqrt(head_dim + rope_dim); the op's own default is 1.0 (spec 18.5).
Inside ``reusing_tensors(store)`` (the explorer's), a build whose random Q/K/V have the shapes and seed of the
previous one takes copies of them instead of drawing them again (the same values either way).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from . import builders, targets
from .call import FIACall, parse_call
from .errors import FIAArgumentError, describe_value
from .layouts import from_canonical, parse_layout
from .masks import INT_MAX, TREE_MODE, compressed_causal_mask
from .quant import GRANULARITIES
from .rules.routes import RouteFacts, decide, sink_dtype
from .shapes import key_axis_width
from .signatures import canonical_name, is_torchair, spelled, version_of

MASK_KINDS = ("auto", "none", "compressed", "causal", "padding", "tree")
PSE_KINDS = ("random", "alibi")
KV_QUANT_KINDS = ("none", *GRANULARITIES)  # int8 K/V (antiquant, spec 16.3): none, or one scale per ...
PADDING_VALUE = 1000.0

_REUSE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("fia_case_reuse", default=None)


@contextlib.contextmanager
def reusing_tensors(store: dict[str, Any]) -> Iterator[None]:
    """Inside the block, ``Case.build`` keeps its last random Q/K/V draw in ``store`` and reuses it (copied) when
    the next build draws the same shapes with the same seed: a control change that keeps the shapes (sparse_mode,
    masks, pre/next, dtype, quantisation) skips drawing them (about 0.2 s at 8192 x 8192 with 32 heads)."""
    token = _REUSE.set(store)
    try:
        yield
    finally:
        _REUSE.reset(token)

MEANINGS = {
    "query": "queries, laid out as input_layout's first part",
    "key": "keys (or a paged cache when block_table is given)",
    "value": "values, laid out like key",
    "atten_mask": "True/1 = masked out; modes 2-4 take the compressed 2048x2048 template",
    "actual_seq_lengths": "valid query rows per batch (cumulative for TND/NTD)",
    "actual_seq_lengths_kv": "valid keys per batch (cumulative for unpaged TND/NTD)",
    "block_table": "physical block id of each logical block of each sequence",
    "key_shared_prefix": "prefix keys every batch sees first",
    "value_shared_prefix": "prefix values every batch sees first",
    "actual_shared_prefix_len": "valid prefix length",
    "pse_shift": "additive bias, added after scaling",
    "learnable_sink": "one logit per query head in the softmax denominator",
    "query_rope": "MLA rope part of the queries (concatenated along D)",
    "num_heads": "N_q; must match the query's N axis",
    "num_key_value_heads": "N_kv; 0 means N_q",
    "scale": "multiplies Q.K^T (the op's default is 1.0)",
    "input_layout": "query/key/value layout, then the output's for two-part names",
    "sparse_mode": "0 mask/band, 1 mask only, 2 left-up causal, 3 right-down causal, 4 band",
    "pre_tokens": "keys before the diagonal a row may see (modes 0 with a mask, 4)",
    "next_tokens": "keys after the diagonal a row may see (modes 0 with a mask, 4)",
    "inner_precise": "bit 0 high performance, bit 1 zero fully masked rows",
    "softmax_lse_flag": "also return the natural-log LSE",
    "block_size": "tokens per cache block",
    "key_rope": "MLA rope part of the keys",
    "key_antiquant_scale": "int8 key = scale * ints (antiquant, spec 16.3)",
    "value_antiquant_scale": "int8 value = scale * ints (antiquant, spec 16.3)",
    "key_antiquant_mode": "0 per-channel/tensor, 1 per-token, 2 per-head, 3 per-token per-head",
    "value_antiquant_mode": "0 per-channel/tensor, 1 per-token, 2 per-head, 3 per-token per-head",
}


@dataclass(frozen=True)
class BuiltCall:
    """The op's arguments for one form: ``fn(query, key, value, **kwargs)``."""

    form: str
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    kwargs: dict[str, Any]

    def args_for(self, form: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(query, key, value, kwargs) respelled for another form: v1/v2 keyword names, lengths as lists for
        torch_npu forms and int64 tensors (on the tensors' device) for TorchAir forms."""
        tensors = is_torchair(form)
        kwargs = {}
        for name, value in self.kwargs.items():
            name = canonical_name(name)
            if name.startswith("actual_"):
                values = value.tolist() if isinstance(value, torch.Tensor) else list(value)
                value = builders.length_tensor(values, self.query.device) if tensors else values
            kwargs[spelled(name, form)] = value
        return self.query, self.key, self.value, kwargs

    def call(self, fn: Callable[..., Any]) -> Any:
        """Call ``fn`` (the reference, torch_npu's op, a tng.ops op) with these arguments."""
        return fn(self.query, self.key, self.value, **self.kwargs)

    def to_fia_call(self) -> FIACall:
        """The parsed call (a TorchAir form's length tensors are read as lengths the same way)."""
        return parse_call(self.form, self.query, self.key, self.value, self.kwargs)


@dataclass(frozen=True)
class OwnArguments:
    """A call's own arguments (``built``) and the case ``Case.from_call`` derived from them."""

    case: Case
    built: BuiltCall


@dataclass(frozen=True)
class Case:
    """What to try. Lengths are per batch (the builder turns them into cumulative ones where the op wants).

    Attributes:
        q_lens, kv_lens: valid query rows and keys per batch (B = len(q_lens)).
        heads, kv_heads: N_q and N_kv (kv_heads must divide heads).
        head_dim, value_dim, rope_dim: D of query/key, D of value (None: head_dim), MLA rope D (0 or 64).
        dtype, layout: the tensors' dtype (default float16, what the NPU takes; float32/float64 are the kit's
            extension) and input_layout (None: "TND" with sinks, which need it, else "BNSD").
        sparse_mode, pre_tokens, next_tokens: the masking mode (spec 6).
        mask: "auto" (none for mode 0, compressed for 2-4, padding for 1, tree for 9), "none", "compressed",
            "causal" (explicit right-down causal, (B,1,S_q,S_kv)), "padding", "tree" (a binary draft tree,
            ``builders.tree_mask``: (B,S_q,S_q), 1-D for TND), or a custom tensor passed as atten_mask.
        paged, block_size, cache_rank: paged KV cache (rank 3, 4 or 5 NZ) with a shuffled block table.
        num_blocks: the cache's block count (None: the blocks needed + 1 spare); too few for kv_lens raises.
        prefix_len: shared prefix length (v1 only); pse: add pse_shift; sinks: add learnable_sink (v2, TND).
        pse_kind: what pse_shift holds: "random" (N(0, 1), ``builders.pse_tensor``) or "alibi" (-slope_n times the
            distance from the right-down diagonal, ``builders.alibi_pse``).
        kv_quant: "none", or int8 K/V in antiquant's separated form (spec 16.3) with one scale per "tensor" or
            "channel" (mode 0), "token" (1), "head" (2) or "token_head" (3), from the same float K/V
            (``builders.antiquant_kv``); the op takes modes 0/1 only, with S_q <= 16, when S_q > 1.
        inner_precise, return_lse, scale: as the op (scale None: 1/sqrt(head_dim + rope_dim)).
        q_seq, kv_seq: the S axes (None: the longest length); larger values add padding.
        seed, device: inputs are seeded; tensors live on ``device``.
        form: the form ``build()``, ``fia_kit.plan(case)``, ``run`` and ``compare`` use (``signatures.FORMS``);
            None: the natural form, "v2" when the case uses a v2-only feature (sinks, the tree mask), else "v1".
    """

    q_lens: tuple[int, ...] = (6, 4)
    kv_lens: tuple[int, ...] = (9, 12)
    heads: int = 2
    kv_heads: int = 1
    head_dim: int = 16
    value_dim: int | None = None
    rope_dim: int = 0
    dtype: torch.dtype = torch.float16
    layout: str | None = None
    sparse_mode: int = 0
    pre_tokens: int = INT_MAX
    next_tokens: int = INT_MAX
    mask: str | torch.Tensor = "auto"
    paged: bool = False
    block_size: int = 16
    cache_rank: int = 4
    num_blocks: int | None = None
    prefix_len: int = 0
    pse: bool = False
    sinks: bool = False
    pse_kind: str = "random"
    kv_quant: str = "none"
    inner_precise: int = 0
    return_lse: bool = True
    scale: float | None = None
    q_seq: int | None = None
    kv_seq: int | None = None
    seed: int = 0
    device: str = "cpu"
    form: str | None = None
    source: OwnArguments | None = field(default=None, repr=False, compare=False)  # set by from_call

    def __post_init__(self) -> None:
        object.__setattr__(self, "q_lens", tuple(int(v) for v in self.q_lens))
        object.__setattr__(self, "kv_lens", tuple(int(v) for v in self.kv_lens))
        if self.layout is None:
            object.__setattr__(self, "layout", "TND" if self.sinks else "BNSD")
        if not self.q_lens or len(self.q_lens) != len(self.kv_lens):
            raise FIAArgumentError("q_lens + kv_lens", "need one length per batch each, the same count",
                                   (self.q_lens, self.kv_lens))
        if min(self.q_lens + self.kv_lens) < 0:
            raise FIAArgumentError("q_lens + kv_lens", "lengths must be >= 0", (self.q_lens, self.kv_lens))
        if self.heads < 1 or self.kv_heads < 1 or self.heads % self.kv_heads:
            raise FIAArgumentError("kv_heads", f"must be >= 1 and divide heads={self.heads}", self.kv_heads)
        if self.q_seq is not None and self.q_seq < max(self.q_lens):
            raise FIAArgumentError("q_seq", f"must be at least the longest query length {max(self.q_lens)}",
                                   self.q_seq)
        if self.kv_seq is not None and self.kv_seq < max(self.kv_lens):
            raise FIAArgumentError("kv_seq", f"must be at least the longest kv length {max(self.kv_lens)}",
                                   self.kv_seq)
        if isinstance(self.mask, str) and self.mask not in MASK_KINDS:
            raise FIAArgumentError("mask", f"must be one of {MASK_KINDS} or a tensor", self.mask)
        if self.pse_kind not in PSE_KINDS:
            raise FIAArgumentError("pse_kind", f"must be one of {PSE_KINDS}", self.pse_kind)
        if self.kv_quant not in KV_QUANT_KINDS:
            raise FIAArgumentError("kv_quant", f"must be one of {KV_QUANT_KINDS}", self.kv_quant)
        if self.rope_dim not in (0, 64):
            raise FIAArgumentError("rope_dim", "MLA rope parts have D = 64 (spec 12); 0 turns rope off",
                                   self.rope_dim)
        parse_layout(self.layout)
        if self.form is not None:
            version_of(self.form)
        if self.paged:
            if self.block_size < 1:
                raise FIAArgumentError("block_size", "must be >= 1", self.block_size)
            needed = sum(-(-n // self.block_size) for n in self.kv_lens)
            if self.num_blocks is not None and self.num_blocks < needed:
                raise FIAArgumentError("num_blocks", f"kv_lens {self.kv_lens} need {needed} blocks of "
                                       f"{self.block_size}: a KV length exceeds the paged capacity", self.num_blocks)

    # ------------------------------------------------------------------------------------------------ geometry
    @property
    def natural_form(self) -> str:
        """``form`` if given, else "v2" when the case uses a v2-only feature (learnable sinks, sparse_mode 9),
        else "v1"."""
        return self.form or ("v2" if self.sinks or self.sparse_mode == TREE_MODE else "v1")

    @property
    def batch(self) -> int:
        return len(self.q_lens)

    @property
    def s_q(self) -> int:
        return self.q_seq or max(self.q_lens)

    @property
    def s_kv(self) -> int:
        return self.kv_seq or max(self.kv_lens)

    @property
    def v_dim(self) -> int:
        return self.value_dim or self.head_dim

    @property
    def softmax_scale(self) -> float:
        return self.scale if self.scale is not None else 1 / math.sqrt(self.head_dim + self.rope_dim)

    @property
    def kv_columns(self) -> int:
        """Key columns of an explicit mask or pse (``shapes.key_axis_width``): prefix + S_kv, where paged S_kv is
        the block-table capacity."""
        capacity = self.block_size * -(-self.s_kv // self.block_size) if self.paged else None
        return key_axis_width(self.s_kv, self.kv_lens, packed=parse_layout(self.layout).packed,
                              paged_capacity=capacity, prefix_len=self.prefix_len)

    def replace(self, **changes: Any) -> Case:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------------------ build
    def build(self, form: str | None = None) -> BuiltCall:
        """The op's arguments for ``form`` ("v1", "v2", "torchair-v1", "torchair-v2"; None: ``natural_form``).

        torch_npu forms take lengths as int lists, TorchAir forms as int64 tensors on ``device``.
        """
        form = form or self.natural_form
        if self.source is not None and self == self.source.case:  # unchanged since from_call: its own arguments
            own = self.source.built
            return own if form == own.form else BuiltCall(form, *own.args_for(form))
        version = version_of(form)
        if version == "v2" and self.prefix_len:
            raise FIAArgumentError("prefix_len", "v2 has no shared prefix (spec 1.2): build the v1 form", self.prefix_len)
        if version == "v1" and self.sinks:
            raise FIAArgumentError("sinks", "learnable_sink is v2-only (spec 13): build the v2 form", self.sinks)
        layout = parse_layout(self.layout)
        gen = torch.Generator().manual_seed(self.seed)
        q4, k4, v4 = self._canonical_qkv(gen)
        options: dict[str, Any] = self._antiquant(k4, v4) if self.kv_quant != "none" else {}
        if options:
            k4, v4 = options.pop("key"), options.pop("value")
        options.update({"num_heads": self.heads, "num_key_value_heads": self.kv_heads,
                                   "scale": self.softmax_scale, "input_layout": self.layout,
                                   "sparse_mode": self.sparse_mode, "inner_precise": self.inner_precise,
                                   "softmax_lse_flag": self.return_lse})
        if self.pre_tokens != INT_MAX:
            options["pre_tokens"] = self.pre_tokens
        if self.next_tokens != INT_MAX:
            options["next_tokens"] = self.next_tokens
        query, q_lengths = self._lay_out(q4, self.q_lens, layout.query, layout.packed)
        rope = self._rope(gen) if self.rope_dim else None
        if self.paged:
            key, value, table = self._paged(k4, v4, gen)
            options.update(block_table=table, block_size=self.block_size)
            kv_lengths = list(self.kv_lens)
        else:
            key, kv_lengths = self._lay_out(k4, self.kv_lens, layout.query, layout.packed)
            value, _ = self._lay_out(v4, self.kv_lens, layout.query, layout.packed)
        if layout.packed or self.q_seq is not None or any(n != self.s_q for n in self.q_lens):
            options["actual_seq_lengths"] = q_lengths
        options["actual_seq_lengths_kv"] = kv_lengths
        if rope is not None:
            q_rope4, k_rope4 = rope
            options["query_rope"], _ = self._lay_out(q_rope4, self.q_lens, layout.query, layout.packed)
            options["key_rope"] = self._paged(k_rope4, k_rope4, gen)[0] if self.paged else \
                self._lay_out(k_rope4, self.kv_lens, layout.query, layout.packed)[0]
        mask = self._mask()
        if mask is not None:
            options["atten_mask"] = mask
        if self.prefix_len:
            kp, vp = builders.shared_prefix(self.kv_heads, self.prefix_len, self.head_dim, self.v_dim, layout.query,
                                            self.dtype, gen)
            options.update(key_shared_prefix=kp, value_shared_prefix=vp, actual_shared_prefix_len=[self.prefix_len])
        if self.pse and self.pse_kind == "alibi":
            options["pse_shift"] = builders.alibi_pse(self.q_lens, self.kv_lens, self.heads, self.s_q,
                                                      self.kv_columns, self.prefix_len, self.dtype)
        elif self.pse:
            options["pse_shift"] = builders.pse_tensor(self.batch, self.heads, self.s_q, self.kv_columns,
                                                       self.dtype, gen)
        if self.sinks:
            sink_dtype = self._sink_dtype(options.get("atten_mask") is not None)
            options["learnable_sink"] = builders.sink_tensor(self.heads, sink_dtype, gen)
        kwargs = {spelled(k, version): self._to_device(k, v, form) for k, v in options.items()}
        move = lambda t: t.to(self.device)  # noqa: E731
        return BuiltCall(form, move(query), move(key), move(value), kwargs)

    def _sink_dtype(self, has_mask: bool) -> torch.dtype:
        """The learnable_sink dtype of the host route this case takes (spec 13, docs/rules.md): bfloat16 on the FIA
        route, the query's dtype on the split-fuse route; float32/float64 (the kit's extension) keep their own."""
        facts = RouteFacts(
            product=targets.current().product, query_dtype=self.dtype,
            key_dtype=self.dtype if self.kv_quant == "none" else torch.int8, layout=self.layout,
            query_s=max(self.q_lens), head_dim=self.head_dim, value_dim=self.v_dim, rope_dim=self.rope_dim,
            num_heads=self.heads, num_kv_heads=self.kv_heads, paged=self.paged, cache_rank=self.cache_rank,
            block_size=self.block_size, prefix=self.prefix_len > 0, sparse_mode=self.sparse_mode, mask=has_mask,
            inner_precise=self.inner_precise, sink_dtype=torch.bfloat16)
        return sink_dtype(decide(facts), self.dtype)

    @classmethod
    def from_call(cls, call: Any) -> Case:
        """The case of a call (a FIACall, Plan, captured call, built call or case), keeping its own tensors.

        While the case is unchanged, ``build`` returns the call's own arguments (respelled for another form);
        once a field changes (``replace``, an explorer control) it builds seeded tensors as any case does.
        Arguments a case cannot express (other quantisation than int8 K/V with equal key and value modes 0-3, left
        padding, its own rope or pse values) live only in the call's own arguments. Raises FIAArgumentError for a call the op refuses.
        """
        from .planning import plan as make_plan

        p = make_plan(call)
        o, c = p.call.options, p.call
        mask = o["atten_mask"]
        mask = "none" if mask is None else "compressed" if p.sparse_mode in (2, 3, 4) else mask
        dense_kv = not p.paged and not p.layout.packed
        fields = dict(
            q_lens=p.q_len, kv_lens=p.kv_len, heads=p.num_heads, kv_heads=p.num_kv_heads, head_dim=p.head_dim,
            value_dim=p.value_dim if p.value_dim != p.head_dim else None,
            rope_dim=64 if p.query_rope is not None else 0, dtype=c.query.dtype, layout=p.layout.name,
            sparse_mode=p.sparse_mode, pre_tokens=o["pre_tokens"], next_tokens=o["next_tokens"], mask=mask,
            paged=p.paged, block_size=p.block_size or 16, cache_rank=c.key.dim() if p.paged else 4,
            num_blocks=c.key.shape[0] if p.paged else None, prefix_len=p.prefix_len,
            pse=o["pse_shift"] is not None, sinks=o.get("learnable_sink") is not None, kv_quant=_kv_quant_of(p),
            inner_precise=p.inner_precise, return_lse=p.return_lse, scale=p.scale,
            q_seq=None if p.layout.packed else p.query.shape[2],
            kv_seq=p.key.shape[2] if dense_kv else None, device=str(c.query.device), form=c.form)
        if p.paged and fields["num_blocks"] < sum(-(-n // p.block_size) for n in p.kv_len):
            fields["num_blocks"] = None  # blocks shared between sequences: seeded builds get their own
        case = cls(**fields)
        own = OwnArguments(case, BuiltCall(c.form, c.query, c.key, c.value, c.keywords()))
        return dataclasses.replace(case, source=own)

    def to_fia_call(self, form: str | None = None) -> FIACall:
        """The parsed call of ``build(form)`` (None: ``natural_form``)."""
        return self.build(form).to_fia_call()

    def to_script(self, path: str, form: str | None = None) -> Any:
        """Write a standalone reproducer (``fia_kit.repro.to_script``) that rebuilds this case and runs the op."""
        from .repro import to_script

        return to_script(self, path, form=form)

    def _canonical_qkv(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Canonical (B, N, S, D) query/key/value with PADDING_VALUE beyond each batch's length.

        The float32 draws come from ``gen`` (or, inside ``reusing_tensors``, from the store when the shapes and seed
        match: ``gen`` is then moved to where the draws left it); padding is written after the cast to ``dtype``
        (1000 is exact in every float dtype).
        """
        shapes = ((self.batch, self.heads, self.s_q, self.head_dim), (self.batch, self.kv_heads, self.s_kv,
                                                                      self.head_dim),
                  (self.batch, self.kv_heads, self.s_kv, self.v_dim))
        store, key = _REUSE.get(), (self.seed, shapes)
        if store is not None and store.get("key") == key:
            draws = store["draws"]
            gen.set_state(store["state"])
        else:
            draws = tuple(torch.randn(*shape, generator=gen) for shape in shapes)
            if store is not None:
                store.update(key=key, draws=draws, state=gen.get_state())

        def tensor(draw: torch.Tensor, lens: tuple[int, ...]) -> torch.Tensor:
            x = draw.to(self.dtype, copy=True)
            for b, n in enumerate(lens):
                x[b, :, n:] = PADDING_VALUE
            return x

        return tensor(draws[0], self.q_lens), tensor(draws[1], self.kv_lens), tensor(draws[2], self.kv_lens)

    def _antiquant(self, k4: torch.Tensor, v4: torch.Tensor) -> dict[str, Any]:
        """int8 "key"/"value" (canonical) and the separated antiquant keywords for ``kv_quant`` (spec 16.3)."""
        if self.prefix_len:
            raise FIAArgumentError("kv_quant + prefix_len", "a Case builds no int8 shared prefix (the op takes one "
                                   "with int8 K/V, spec 14, 16.3): pass your own call to try it", self.kv_quant)
        axis = self.kv_columns - self.prefix_len
        key, key_scale, mode = builders.antiquant_kv(k4, self.kv_lens, self.kv_quant, self.dtype, axis)
        value, value_scale, _ = builders.antiquant_kv(v4, self.kv_lens, self.kv_quant, self.dtype, axis)
        return {"key": key, "value": value, "key_antiquant_scale": key_scale, "value_antiquant_scale": value_scale,
                "key_antiquant_mode": mode, "value_antiquant_mode": mode}

    def _rope(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return builders.rope_parts(self.batch, self.heads, self.kv_heads, self.s_q, self.s_kv, self.rope_dim,
                                   self.dtype, gen)

    def _lay_out(self, x4: torch.Tensor, lens: tuple[int, ...], part: str,
                 packed: bool) -> tuple[torch.Tensor, list[int]]:
        """The tensor in layout ``part`` and its lengths argument (cumulative for packed parts)."""
        if not packed:
            return from_canonical(x4, part), list(lens)
        tensor, cum = builders.pack_sequences([x4[b, :, :n] for b, n in enumerate(lens)], part)
        return tensor, cum

    def _paged(self, k4: torch.Tensor, v4: torch.Tensor,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = gen.get_state()
        key, table = builders.to_paged([k4[b, :, :n] for b, n in enumerate(self.kv_lens)], self.block_size,
                                       self.cache_rank, extra_blocks=1, generator=gen, num_blocks=self.num_blocks)
        gen.set_state(state)  # same shuffle for values: one block table serves both
        value, _ = builders.to_paged([v4[b, :, :n] for b, n in enumerate(self.kv_lens)], self.block_size,
                                     self.cache_rank, extra_blocks=1, generator=gen, num_blocks=self.num_blocks)
        return key, value, table

    def _mask(self) -> torch.Tensor | None:
        kind = self.mask
        if isinstance(kind, torch.Tensor):
            return kind
        if kind == "auto":
            kind = {0: "none", 1: "padding", TREE_MODE: "tree"}.get(self.sparse_mode, "compressed")
        if kind == "none":
            return None
        if kind == "compressed":
            return compressed_causal_mask()
        if kind == "tree":
            return builders.tree_mask(self.q_lens, self.s_q, packed=parse_layout(self.layout).packed)
        columns = self.kv_columns
        if kind == "padding":
            return builders.padding_mask(self.q_lens, [n + self.prefix_len for n in self.kv_lens], self.s_q,
                                         columns)
        causal = torch.stack([builders.causal_mask(self.s_q, columns)] * self.batch)
        for plane, q, n in zip(causal, self.q_lens, self.kv_lens, strict=True):  # builders.padding_mask, in place
            plane[q:] = True
            plane[:, n + self.prefix_len:] = True
        return causal.unsqueeze(1)

    def _to_device(self, name: str, value: Any, form: str) -> Any:
        if name.startswith("actual_") and is_torchair(form):
            return builders.length_tensor(value, self.device)
        return value.to(self.device) if isinstance(value, torch.Tensor) else value

    # ------------------------------------------------------------------------------------------------ describe
    def describe_rows(self, form: str | None = None) -> list[dict[str, str]]:
        """One row per argument passed: name, shape or value, dtype, meaning."""
        return _argument_rows(self.build(form))

    def describe(self, form: str | None = None) -> str:
        """A text table of every argument ``build(form)`` passes, then the host route the call takes on the
        current target (``route_line``)."""
        built = self.build(form)
        rows = _argument_rows(built)
        keys = list(rows[0])
        widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
        line = lambda r: "  ".join(r[k].ljust(widths[k]) for k in keys).rstrip()  # noqa: E731
        return "\n".join([line({k: k for k in keys}), line({k: "-" * widths[k] for k in keys}), *map(line, rows),
                          _route_line(built)])

    def route_line(self, form: str | None = None) -> str:
        """The kernel's host route for this case (``Plan.route``) and what a row without keys gets as its LSE there
        (``fia_kit.rules.route_note``); or why the call has no route (the kit refuses it)."""
        return _route_line(self.build(form))


def _argument_rows(built: BuiltCall) -> list[dict[str, str]]:
    rows = []
    for name, value in {"query": built.query, "key": built.key, "value": built.value, **built.kwargs}.items():
        canon = canonical_name(name)
        if isinstance(value, torch.Tensor):
            shape, dtype = str(tuple(value.shape)), str(value.dtype).removeprefix("torch.")
        else:
            shape, dtype = describe_value(value), type(value).__name__
        rows.append({"name": name, "shape / value": shape, "dtype": dtype, "meaning": MEANINGS.get(canon, "")})
    return rows


def _route_line(built: BuiltCall) -> str:
    from .planning import build_plan
    from .rules.route_note import route_note

    try:
        return str(route_note(build_plan(built.to_fia_call())))
    except FIAArgumentError as err:
        return f"route: none, the kit refuses the call: {err}"


def _kv_quant_of(problem: Any) -> str:
    """The ``kv_quant`` of a plan: the granularity of its int8 K/V antiquant (equal key/value modes 0-3), else "none"."""
    q = problem.quant
    if q is None or q.key is None or q.value is None or q.full is not None or q.query_scale is not None \
            or q.key.int4 or q.key.mode != q.value.mode or q.key.mode > 3:
        return "none"
    if q.key.mode == 0:
        return "tensor" if q.key.scale.numel() == 1 else "channel"
    return {1: "token", 2: "head", 3: "token_head"}[q.key.mode]
