"""The MemoryLLM / M+ transformer: a Llama backbone whose every layer reads a prefix of memory rows.

Module and parameter names follow the official checkpoints exactly, so a state dict loads as published.
A layer call takes query rows plus the keys/values of everything before them; the memory prefix of a
layer depends only on that layer's memory rows, so answering keeps it in the KV cache across questions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memchat.engine.config import ADAPTER_INJECT, MemoryConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class LoRALinear(nn.Module):
    """A frozen linear plus one low-rank adapter per name; the caller picks the adapter per call.

    MemoryLLM trains two adapters on the same backbone: `default` writes memory (injection) and
    `decoder_adapter` reads it (answering).
    """

    def __init__(
        self,
        base: nn.Module,
        in_features: int,
        out_features: int,
        r: int,
        scale: float,
        adapters: tuple[str, ...],
    ):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({a: nn.Linear(in_features, r, bias=False) for a in adapters})
        self.lora_B = nn.ModuleDict({a: nn.Linear(r, out_features, bias=False) for a in adapters})
        self.scale = scale
        self.kept_folds: dict[str, Tensor] | None = None  # see `keep_folds`

    def forward(self, x: Tensor, adapter: str) -> Tensor:
        A, B = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        if not self._folds(x):
            return self.base_layer(x) + self.scale * F.linear(F.linear(x, A), B)
        if self.kept_folds is None or torch.is_grad_enabled():
            return F.linear(x, self._fold(A, B))
        if adapter not in self.kept_folds:
            self.kept_folds[adapter] = self._fold(A, B)
        return F.linear(x, self.kept_folds[adapter])

    def _fold(self, A: Tensor, B: Tensor) -> Tensor:
        return torch.addmm(self.base_layer.weight, B, A, alpha=self.scale)

    def _folds(self, x: Tensor) -> bool:
        """Whether to fold the adapter into the weight (W + scale·B·A) for this call: one matmul over the
        rows instead of three and no extra pass over the output, which costs less once the rows outnumber
        in·out / (in + out) (training batches, long contexts). Only a plain float32 weight folds: a
        quantized one cannot, and in 16 bits the fold would round the adapter's small update away."""
        W = self.base_layer.weight
        if type(self.base_layer) is not nn.Linear or W.dtype != torch.float32:
            return False
        out_features, in_features = W.shape
        return x.numel() // in_features * (in_features + out_features) > in_features * out_features


@contextmanager
def keep_folds(model: nn.Module) -> Iterator[None]:
    """Inside, each LoRA layer folds an adapter into its weight once for all calls without a graph, as
    training's distractor injections are (a twentieth of their time), rather than once per call. The
    weights must not change inside."""
    lora = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for m in lora:
        m.kept_folds = {}
    try:
        yield
    finally:
        for m in lora:
            m.kept_folds = None


def linear(module: nn.Module, x: Tensor, adapter: str) -> Tensor:
    return module(x, adapter) if isinstance(module, LoRALinear) else module(x)


def selector(in_dim: int, out_dim: int, layers: int) -> nn.Module:
    """M+ retriever projection; saved as `.0.weight` (and `.2.weight` with two layers)."""
    if layers == 1:
        return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False))
    return nn.Sequential(
        nn.Linear(in_dim, 2 * out_dim, bias=False), nn.SiLU(), nn.Linear(2 * out_dim, out_dim, bias=False)
    )


class Attention(nn.Module):
    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)
        if cfg.is_mplus:
            self.query_proj = selector(d, cfg.selector_hidden_dim, cfg.num_selector_layers)
            self.key_proj = selector(d, cfg.selector_hidden_dim, cfg.num_selector_layers)
            if cfg.add_encoder_retriever:
                # Loaded so the checkpoint matches; only training uses it.
                self.encoder_query_proj = selector(d, cfg.selector_hidden_dim, cfg.num_selector_layers)


class MLP(nn.Module):
    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, adapter: str) -> Tensor:
        gate = F.silu(linear(self.gate_proj, x, adapter))
        return linear(self.down_proj, gate * linear(self.up_proj, x, adapter), adapter)


class Block(nn.Module):
    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def _split(self, x: Tensor, heads: int) -> Tensor:
        return x.view(*x.shape[:-1], heads, self.head_dim).transpose(-3, -2)

    def keys_values(self, x: Tensor, adapter: str) -> tuple[Tensor, Tensor]:
        """Un-rotated keys and values [B, kv_heads, T, head_dim] of layer-input rows."""
        h = self.input_layernorm(x)
        attn = self.self_attn
        return (
            self._split(linear(attn.k_proj, h, adapter), self.kv_heads),
            self._split(linear(attn.v_proj, h, adapter), self.kv_heads),
        )

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], kv: tuple[Tensor, Tensor], at: int | Tensor,
        adapter: str, mask: Tensor | None, prefix: int = 0, packed: Packed | None = None,
    ) -> Tensor:
        """Query rows `x` [B, n, d], written to the cache `at` (see `write_rows`), reading keys under `mask`.

        `kv` are this layer's key/value buffers [B, kv_heads, capacity, head_dim] holding the rotated
        keys of every earlier row. With `prefix`, the mask allows every query the first `prefix` keys
        (`attend_after_prefix`). With `packed`, `x` holds only the real rows [R, d] of right-padded
        queries, and so does the result: only attention sees them padded.
        """
        attn = self.self_attn
        h = self.input_layernorm(x)
        q, k, v = (linear(proj, h, adapter) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        if packed is not None:
            q, k, v = packed.unpack(q), packed.unpack(k), packed.unpack(v)
        q = apply_rope(self._split(q, self.heads), *rope)
        k = apply_rope(self._split(k, self.kv_heads), *rope)
        keys, values = write_rows(kv, at, k, self._split(v, self.kv_heads))
        o = attend_after_prefix(q, keys, values, mask, prefix) if prefix else attend(q, keys, values, mask)
        o = o.transpose(-3, -2).flatten(-2)
        x = x + linear(attn.o_proj, o if packed is None else packed.pack(o), adapter)
        return x + self.mlp(self.post_attention_layernorm(x), adapter)


class Packed:
    """The real rows of right-padded [B, m, ·] tensors as one [R, ·] tensor, so that a layer's matmuls
    skip the padding (a fifth of the rows of a batch of training injections)."""

    def __init__(self, real: Tensor):
        self.shape = real.shape  # [B, m] booleans: which rows are real
        self.index = real.flatten().nonzero().squeeze(1)

    def pack(self, x: Tensor) -> Tensor:
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """[R, ·] → [B, m, ·], zeros at the padding."""
        B, m = self.shape
        return x.new_zeros(B * m, x.shape[-1]).index_copy(0, self.index, x).view(B, m, -1)


def write_rows(kv: tuple[Tensor, Tensor], at: int | Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Write new rows' keys and values into the cache buffers; return the keys and values to read.

    `at` is the first new row's index, and the rows up to the new ones are read; or, for a CUDA graph,
    every new row's index as a device tensor: then nothing depends on a host value, the whole buffers
    are read, and the mask hides the rows not written yet.
    """
    if isinstance(at, Tensor):
        kv[0].index_copy_(2, at, k)
        kv[1].index_copy_(2, at, v)
        return kv
    end = at + k.shape[-2]
    kv[0][:, :, at:end] = k
    kv[1][:, :, at:end] = v
    return kv[0][:, :, :end], kv[1][:, :, :end]


def causal_mask(n: int, seen: int, device: torch.device) -> Tensor | None:
    """Query i of n new rows sees key j ≤ seen + i: every earlier row, then causally. None for one row."""
    if n == 1:
        return None
    return torch.ones(n, seen + n, dtype=torch.bool, device=device).tril(seen)


def attend(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
    """Queries [B, H, n, hd] over keys [B, kv_heads, S, hd], query i reading the keys mask[i] [n, S] allows.

    The query heads sharing a key/value head are stacked as extra query rows, so grouped KV heads are
    read in place instead of being repeated per query head.
    """
    B, H, n, hd = q.shape
    groups = H // keys.shape[1]
    if mask is not None and groups > 1:
        mask = mask.repeat(groups, 1)
    o = F.scaled_dot_product_attention(q.reshape(B, -1, groups * n, hd), keys, values, attn_mask=mask)
    return o.reshape(B, H, n, hd)


def attend_after_prefix(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, prefix: int) -> Tensor:
    """`attend` when every query sees the first `prefix` keys (the memory prefix): those are read by a
    flash kernel without a mask, the rest under the mask, and the two softmaxes merged by their
    log-sum-exps. A mask over the whole prefix would push the attention onto a kernel that costs three
    times as much (at 12,801 memory rows it was two thirds of a decoded token's GPU time). The flash
    kernels are called through their aten ops: the public one does not return the log-sum-exp.
    """
    B, H, n, hd = q.shape
    groups = H // keys.shape[1]
    q = q.reshape(B, -1, groups * n, hd)
    flash = (torch.ops.aten._scaled_dot_product_flash_attention if q.is_cuda
             else torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    o_prefix, lse_prefix = flash(q, keys[:, :, :prefix], values[:, :, :prefix])[:2]
    scores = (q.float() @ keys[:, :, prefix:].float().transpose(-1, -2)) * hd**-0.5
    scores = scores.masked_fill(~mask[:, prefix:].repeat(groups, 1), float("-inf"))
    lse_rest = scores.logsumexp(-1)  # finite: a query always sees its own key
    lse = torch.logaddexp(lse_prefix.float(), lse_rest)
    o = (o_prefix.float() * (lse_prefix - lse).exp()[..., None]
         + (scores - lse[..., None]).exp() @ values[:, :, prefix:].float())
    return o.to(values.dtype).reshape(B, H, n, hd)


def flash_reads(x: Tensor) -> bool:
    """Whether `attend_after_prefix` has a flash kernel for tensors like `x`."""
    if not x.is_cuda:
        return True
    head_dim = x.shape[-1]
    return (x.dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256
            and torch.cuda.get_device_capability(x.device) >= (8, 0))


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + rotate_half(x) * sin


class Rope:
    """Rotary tables. Angles are (position × position_scale) × inv_freq, formed in float32."""

    def __init__(self, cfg: MemoryConfig):
        self.inv_freq, self.attention_scaling = rope_frequencies(cfg)
        self.position_scale = cfg.position_scale

    def __call__(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        p = positions.float()
        if self.position_scale != 1.0:
            p = p * self.position_scale
        if self.inv_freq.device != p.device:  # moved once: a CUDA graph cannot copy from the host
            self.inv_freq = self.inv_freq.to(p.device)
        freqs = p[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def rope_frequencies(cfg: MemoryConfig) -> tuple[Tensor, float]:
    """Inverse frequencies from transformers' own RoPE initialisers (plain RoPE needs none)."""
    exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device="cpu").float() / cfg.head_dim
    base = 1.0 / (cfg.rope_theta**exponents)
    if cfg.rope_scaling is None:
        return base, 1.0
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kind = cfg.rope_scaling["rope_type"]
    with warnings.catch_warnings():
        # transformers 5 prefers `rope_parameters`; `rope_scaling` is what both 4.x and 5.x accept.
        warnings.simplefilter("ignore", FutureWarning)
        llama = LlamaConfig(
            hidden_size=cfg.hidden_size,
            num_attention_heads=cfg.num_heads,
            head_dim=cfg.head_dim,
            num_key_value_heads=cfg.num_kv_heads,
            rope_theta=cfg.rope_theta,
            rope_scaling=dict(cfg.rope_scaling),
            max_position_embeddings=cfg.max_position_embeddings,
        )
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[kind](llama, "cpu")
    return inv_freq.float(), float(scaling)


class Backbone(nn.Module):
    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        # Weights always arrive from a checkpoint; passing one skips the random init, which on the meta
        # device would import torch._dynamo (a second of start-up).
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class KVCache:
    """Rotated keys and values of every layer: [memory prefix | prompt and generated tokens].

    The prefix region survives across questions; `reset()` forgets only what came after it.
    M+ leaves room for the retrieved long-term rows right after the BOS row. Each layer has its own
    buffers, so training can backpropagate through one layer's writes while the next layer writes.
    """

    def __init__(self, cfg: MemoryConfig, capacity: int, dtype: torch.dtype, device: torch.device | str,
                 batch: int = 1):
        shape = (batch, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.prefix_len = 0
        self.length = 0
        self.raw_k: list[Tensor] = []  # un-rotated keys of the memory rows, for incremental updates

    @property
    def capacity(self) -> int:
        return self.k[0].shape[-2]

    def reserve(self, rows: int) -> None:
        """Make room for `rows` more tokens. The region after the memory prefix doubles, so a long reply
        stays amortised without doubling the prefix too (12,801 rows a layer at 8B: 1 GB on the GPU)."""
        need = self.length + rows
        if need <= self.capacity:
            return
        region = max(need - self.prefix_len, 2 * (self.capacity - self.prefix_len))
        extra = self.prefix_len + region - self.capacity

        def grow(t: Tensor) -> Tensor:
            return torch.cat([t, t.new_zeros((*t.shape[:-2], extra, t.shape[-1]))], dim=-2)

        for layer in range(len(self.k)):  # each old buffer goes as its successor arrives
            self.k[layer], self.v[layer] = grow(self.k[layer]), grow(self.v[layer])

    def reset(self) -> None:
        self.length = self.prefix_len

    def layer(self, layer: int) -> tuple[Tensor, Tensor]:
        return self.k[layer], self.v[layer]

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> None:
        end = start + k.shape[-2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v


class MemoryModel(nn.Module):
    """Weights of a MemoryLLM / M+ checkpoint (not its memory state) and the three layer-stack passes:
    injection (writes delta memory), prefix (memory rows → cached keys/values) and answering."""

    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.add_bos_embedding:
            self.bos_embedding = nn.Parameter(torch.zeros(cfg.num_layers, 1, cfg.hidden_size))
        self.new_memory_positional_emb = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        with torch.device("cpu"):  # rotary tables are computed, never loaded: not on the meta device
            self.rope = Rope(cfg)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def _rope(self, start: int, end: int) -> tuple[Tensor, Tensor]:
        return self.rope(torch.arange(start, end, device=self.device), self.dtype)

    def _bos(self, layer: int, batch: int) -> list[Tensor]:
        if not self.config.add_bos_embedding:
            return []
        return [self.bos_embedding[layer].to(self.dtype).expand(batch, 1, -1)]

    def inject(
        self, ids: Tensor, memory: Tensor, initialized: bool = True, lengths: Tensor | None = None
    ) -> Tensor:
        """Delta memory of a context: ids [B, n], memory [L, B, N, d] → delta [L, B, m, d].

        m = K once the memory is initialised. Each layer reads its BOS row and its last K memory rows,
        then the context; the positional embedding marks the last K rows; the delta is the last K
        output rows (so for n < K it includes outputs at old memory rows).

        `lengths` [B] batches contexts of different lengths (training): ids are right-padded, and each
        context's own last K rows are marked and taken. Causal attention never lets a context row see
        the padding after it, so each delta equals that context's unbatched one. Needs initialised
        memory and every length ≥ K.
        """
        cfg, K = self.config, self.config.num_tokens
        x = self.model.embed_tokens(ids)
        B, n = ids.shape
        pe = self.new_memory_positional_emb.to(self.dtype)
        if lengths is not None:
            marks, real, take, first = self._ragged_rows(lengths, n, initialized)
        deltas = []
        for layer, block in enumerate(self.layers):
            if initialized:
                prefix = torch.cat([*self._bos(layer, B), memory[layer][:, -K:]], dim=1)
                X = torch.cat([prefix, x], dim=1)
                if lengths is None:
                    X = torch.cat([X[:, :-K], X[:, -K:] + pe], dim=1)
                else:
                    X = torch.where(marks, X + pe, X)
                P = start = min(prefix.shape[1], X.shape[1] - K)
                if layer == len(self.layers) - 1:
                    # Its output is read only at the delta rows: the rows before them go in as keys and
                    # values alone (for ragged contexts: up to the shortest one's delta rows).
                    start = X.shape[1] - K if lengths is None else P + first
                if lengths is None:
                    out = self._layer(block, X, start, ADAPTER_INJECT)
                    deltas.append(out[:, -K:])
                else:
                    out = self._layer(block, X, start, ADAPTER_INJECT, Packed(real[:, start:]))
                    deltas.append(out.gather(1, take - (start - P)))
            else:
                m = min(K, n)
                X = torch.cat([x[:, :-m], x[:, -m:] + pe], dim=1) if cfg.pos_emb_on_first_injection else x
                out = self._layer(block, X, 0, ADAPTER_INJECT)
                last = layer == len(self.layers) - 1
                # The official 8B code adds the next layer's positional embedding in place into the
                # very storage it returns as delta, so every delta but the last carries it once more.
                aliased = cfg.pos_emb_on_first_injection and not last
                deltas.append(out[:, -m:] + pe if aliased else out[:, -m:])
            x = out[:, -n:]
        return torch.stack(deltas)

    def _ragged_rows(
        self, lengths: Tensor, n: int, initialized: bool
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        """For right-padded contexts: which rows of [prefix ; context] get the positional embedding
        ([B, P + n, 1] booleans) and which are not padding ([B, P + n]), the indices [B, K, d] of each
        context's last K rows in the output, and the first of those rows in the shortest context."""
        K = self.config.num_tokens
        lengths = lengths.to(self.device)
        shortest = int(lengths.min())
        if not initialized or shortest < K or int(lengths.max()) > n:
            raise ValueError(f"batched injection needs initialised memory and lengths in [{K}, {n}]")
        P = int(self.config.add_bos_embedding) + K
        last = lengths[:, None] - K + torch.arange(K, device=self.device)  # context positions [B, K]
        marks = torch.zeros(len(lengths), P + n, 1, dtype=torch.bool, device=self.device)
        marks.scatter_(1, (P + last)[..., None], True)
        real = torch.arange(P + n, device=self.device) < P + lengths[:, None]
        return marks, real, last[..., None].expand(-1, -1, self.config.hidden_size), shortest - K

    def _layer(self, block: Block, X: Tensor, P: int, adapter: str, packed: Packed | None = None) -> Tensor:
        """One layer over rows X whose first P rows are a prefix: it returns only the other rows.
        `packed`: which of those are real (right-padded contexts); the padding's outputs are zeros."""
        cos, sin = self._rope(0, X.shape[1])
        k, v = block.keys_values(X[:, :P], adapter)
        shape = (*k.shape[:2], X.shape[1], k.shape[-1])
        kv = (k.new_empty(shape), v.new_empty(shape))
        kv[0][:, :, :P] = apply_rope(k, cos[:P], sin[:P])
        kv[1][:, :, :P] = v
        mask = causal_mask(X.shape[1] - P, P, X.device)
        if packed is None:
            return block(X[:, P:], (cos[P:], sin[P:]), kv, P, adapter, mask)
        out = block(packed.pack(X[:, P:]), (cos[P:], sin[P:]), kv, P, adapter, mask, packed=packed)
        return packed.unpack(out)

    def fill_prefix(self, cache: KVCache, memory: Tensor) -> None:
        """Compute every layer's memory prefix (memory [L, B, N, d]) into the cache's prefix region."""
        self.write_prefix(cache, self.memory_keys_values(memory))

    def memory_keys_values(self, rows: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """Per layer, the un-rotated keys and values [B, kv_heads, n, head_dim] of memory rows [L, B, n, d].

        Each row's depend on that row alone, so training computes them once per distinct row and gathers
        them into every episode's memory order. Lazy, layer after layer: filling the prefix then holds one
        layer's keys and values beside the cache, not all of them (1.7 GB at the 8B shapes)."""
        adapter = self.config.answer_adapter
        return (block.keys_values(rows[i].to(self.dtype), adapter) for i, block in enumerate(self.layers))

    def write_prefix(self, cache: KVCache, keys_values: Iterable[tuple[Tensor, Tensor]]) -> None:
        """Fill the cache's prefix region from the memory pool's un-rotated keys and values, per layer."""
        adapter, start, rows = self.config.answer_adapter, self.memory_start, self.config.memory_rows
        batch = cache.k[0].shape[0]
        cache.prefix_len = cache.length = start + rows
        cache.reserve(0)
        cos, sin = self._rope(start, start + rows)
        raw = []
        for layer, (block, (k, v)) in enumerate(zip(self.layers, keys_values, strict=True)):
            for bos in self._bos(layer, batch):
                bos_k, bos_v = block.keys_values(bos, adapter)
                cache.write(layer, 0, apply_rope(bos_k, *self._rope(0, 1)), bos_v)
            raw.append(k)
            cache.write(layer, start, apply_rope(k, cos, sin), v)
        cache.raw_k = raw

    def update_prefix(self, cache: KVCache, kept: Tensor, delta: Tensor) -> None:
        """Follow a memory update [memory[kept] ; delta] without recomputing the kept rows.

        Un-rotated keys and values of a row do not depend on its position, so kept rows are gathered
        and re-rotated at their new positions; only the K new rows go through the projections.
        """
        start, end = self.memory_start, cache.prefix_len
        cos, sin = self._rope(start, end)
        for layer, block in enumerate(self.layers):
            idx = kept[layer].to(self.device)
            k_new, v_new = block.keys_values(delta[layer].to(self.dtype), self.config.answer_adapter)
            raw = torch.cat([cache.raw_k[layer][:, :, idx], k_new], dim=-2)
            v = torch.cat([cache.v[layer][:, :, start + idx], v_new], dim=-2)
            cache.raw_k[layer] = raw
            cache.write(layer, start, apply_rope(raw, cos, sin), v)

    @property
    def memory_start(self) -> int:
        """Cache index of the first memory row: after the BOS row and M+'s retrieved long-term rows."""
        return int(self.config.add_bos_embedding) + self.config.ltm_rows_retrieved

    def forward(
        self,
        ids: Tensor,
        cache: KVCache,
        retrieve: Callable[[int, Tensor], Tensor] | None = None,
        hidden: list[Tensor] | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Answering path: logits of `ids` [B, n] following what `cache` holds (memory prefix first).

        With `retrieve(layer, queries) -> rows`, M+ fills each layer's long-term slot from the prompt.
        `hidden`, when given, collects each layer's input rows and the final normed rows. `last_only`
        skips the vocabulary projection for all but the last position, all that generation needs.
        """
        start, n = cache.length, ids.shape[1]
        cache.reserve(n)
        mask = causal_mask(n, start, self.device)
        x = self._answer(ids, cache, start, self._rope(start, start + n), mask, retrieve, hidden)
        cache.length = start + n
        x = self.model.norm(x[:, -1:] if last_only else x)
        if hidden is not None:
            hidden.append(x)
        return self.lm_head(x)

    def step(self, ids: Tensor, cache: KVCache, start: Tensor, last: Tensor) -> Tensor:
        """The answering forward in shapes that never change, for a CUDA graph to capture: ids [1, n] go
        to the cache rows from `start` [1] (a device tensor) on and read the whole cache under a mask; the
        logits [1, 1, vocab] are those of row `last` [1]. Rows after `last` may be padding: causal
        attention keeps them out of it. The caller sets `cache.length`.
        """
        slots = start + torch.arange(ids.shape[1], device=self.device)
        mask = torch.arange(cache.capacity, device=self.device) <= slots[:, None]
        prefix = cache.prefix_len if cache.prefix_len and flash_reads(cache.k[0]) else 0
        x = self._answer(ids, cache, slots, self.rope(slots, self.dtype), mask, prefix=prefix)
        return self.lm_head(self.model.norm(x.index_select(1, last)))

    def _answer(
        self, ids: Tensor, cache: KVCache, at: int | Tensor, rope: tuple[Tensor, Tensor],
        mask: Tensor | None, retrieve: Callable[[int, Tensor], Tensor] | None = None,
        hidden: list[Tensor] | None = None, prefix: int = 0,
    ) -> Tensor:
        adapter = self.config.answer_adapter
        x = self.model.embed_tokens(ids)
        for layer, block in enumerate(self.layers):
            if hidden is not None:
                hidden.append(x)
            if retrieve is not None:
                self._fill_retrieved(cache, layer, block, x, retrieve)
            x = block(x, rope, cache.layer(layer), at, adapter, mask, prefix)
        return x

    def _fill_retrieved(
        self, cache: KVCache, layer: int, block: Block, x: Tensor, retrieve: Callable[[int, Tensor], Tensor]
    ) -> None:
        queries = block.self_attn.query_proj(block.input_layernorm(x[0]))
        rows = retrieve(layer, queries).to(device=self.device, dtype=self.dtype)[None]
        slot = int(self.config.add_bos_embedding)
        k, v = block.keys_values(rows, self.config.answer_adapter)
        cos, sin = self._rope(slot, slot + rows.shape[1])
        cache.write(layer, slot, apply_rope(k, cos, sin), v)

    def selector_keys(self, layer: int, rows: Tensor) -> Tensor:
        """M+ retrieval keys of memory rows [S, d] → [S, h]."""
        block = self.layers[layer]
        return block.self_attn.key_proj(block.input_layernorm(rows.to(self.device, self.dtype)))
