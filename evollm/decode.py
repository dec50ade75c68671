"""Greedy decoding that wastes no work: continuous batching over a slot KV cache.

`evollm.generate.generate` sends greedy requests here (`greedy`); beam search, repetition penalty and
models this module does not know go to HF `generate` as before (`unsupported` says why). Same tokens
as HF `generate` (greedy argmax of the model's own forward), with less work:

1. Prompts are taken longest first (outputs come back in the caller's order).
2. A token prefix shared by every prompt (the protocol's template) runs once; its keys and values are
   copied into each row's cache, so each prompt prefills only its own suffix.
3. Rows live in a dense batch of at most `batch_size` slots over a preallocated cache
   ([slots, kv heads, columns, head dim] per layer): a step writes one column, nothing is concatenated.
   A row that ends (EOS, a stop string, `max_new_tokens`) leaves the batch at once: the last rows move
   into its slot, so finished rows are never computed again; waiting prompts are prefilled in groups
   and appended (continuous batching). Rows of different lengths share the columns, each seeing its
   own through a per-slot mask: a row admitted at column c holds the prefix, its padding (masked) and
   its prompt's suffix ending at c, then one column per step; `lo`, the oldest row's first column,
   bounds what a step's attention reads.
4. Stop strings are checked on each row's byte tail only (as long as the longest stop string), with
   HF's rule: a stop string counts when it ends inside the newest token, prompt tokens included.

The model is called as HF `generate` calls it (input ids, position ids counted from each row's first
token, an explicit 4D boolean attention mask, the KV cache under the model's cache keyword,
`logits_to_keep=1`), so any Llama/Mistral-style causal LM whose attention layers call
`cache.update(key, value, layer_idx)` works, and so do the DFS models of `evollm.dfs` (their hop layers
redirect `update` to the hop's own index). Device-agnostic: plain torch ops on the model's device.
"""

from __future__ import annotations

import inspect
import json
import time
import weakref
from collections import OrderedDict, deque

import torch

#: a shared prefix runs on its own only when it saves at least this many token computations
MIN_SHARED = 32
#: the fixed cost of one prefill forward, in token computations (CPU; x16 elsewhere)
PREFILL_FORWARD_COST = 64
#: decoding steps the cache has room for beyond the used window before the window must move: the
#: buffers hold at most the longest row (prompt + new tokens) plus this many columns, so a memory plan
#: of rows x (prompt + new tokens + GROW) columns holds (`memplan`); each move copies the window once
#: per GROW steps, a small fraction of what the steps read
GROW = 128
#: model types whose decoder this path is tested on (plain causal attention, RoPE, `cache.update`)
MODEL_TYPES = ("llama", "mistral")

# generation_config fields that change greedy decoding when set, with their neutral values
_NEUTRAL = {
    "min_length": (None, 0), "min_new_tokens": (None, 0), "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None, []), "force_words_ids": (None, []),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []), "sequence_bias": (None, {}), "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0), "watermarking_config": (None,), "num_beams": (None, 1),
    "num_beam_groups": (None, 1), "penalty_alpha": (None,), "dola_layers": (None,), "constraints": (None, []),
    "max_time": (None,), "token_healing": (None, False), "prompt_lookup_num_tokens": (None,),
    "assistant_early_exit": (None,), "use_mtp": (None, False), "remove_invalid_values": (None, False),
    "renormalize_logits": (None, False), "logits_processor": (None,)}
# keyword arguments of `generate()` that this path honours, with the values it can take
_KWARGS = {"num_beams": (None, 1), "repetition_penalty": (None, 1.0)}


def unsupported(model, tokenizer, stops=(), **gen_kwargs):
    """Why `greedy` cannot decode this request exactly as HF `generate` would (a sentence), or None."""
    for k, v in gen_kwargs.items():
        if k not in _KWARGS or v not in _KWARGS[k]:
            return f"generation argument {k}={v!r}"
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in MODEL_TYPES or getattr(cfg, "is_encoder_decoder", False):
        return f"model type {getattr(cfg, 'model_type', None)!r} (this path knows {', '.join(MODEL_TYPES)})"
    if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return f"attention implementation {cfg._attn_implementation!r}"
    gc = getattr(model, "generation_config", None)
    for k, neutral in _NEUTRAL.items():
        v = getattr(gc, k, None)
        if not any(v == n for n in neutral):
            return f"generation_config.{k}={v!r}"
    params = inspect.signature(model.forward).parameters
    if not {"attention_mask", "position_ids"} <= set(params) or not ({"cache", "past_key_values"} & set(params)):
        return "the model's forward takes no attention_mask, position_ids or cache"
    if tokenizer.pad_token_id is None:
        return "the tokenizer has no pad token"
    if any(not s for s in stops):
        return "an empty stop string"
    return None


class Unsupported(Exception):
    """Raised by `greedy` before any model work when the request needs HF `generate` after all."""


# ---------------------------------------------------------------------------------------- stop strings

def _byte_decoder():
    """GPT-2 byte-level BPE: the printable character that stands for each byte, reversed."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _matching_mode(tokenizer):
    """How the tokenizer's tokens spell text: 'byte_level' (GPT-2 style), 'byte_fallback' (<0xNN>
    tokens) or None (the token's cleaned string); the same reading as HF's StopStringCriteria."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return None
    if type(decoder).__name__ == "ByteLevel":
        return "byte_level"
    try:
        state = json.loads(decoder.__getstate__())
    except Exception:           # a decoder without a JSON state
        return None

    def has(node, kind):
        if isinstance(node, dict):
            return node.get("type") == kind or any(has(v, kind) for v in node.values())
        return isinstance(node, list) and any(has(v, kind) for v in node)
    return "byte_fallback" if has(state, "ByteFallback") else "byte_level" if has(state, "ByteLevel") else None


class StopMatcher:
    """Stop strings matched incrementally on each row's byte tail.

    A stop string is found when it ends inside the newest token, reading tokens as HF's
    StopStringCriteria reads them (byte-level BPE and <0xNN> tokens as their bytes, any other token
    as its cleaned string); the prompt's last tokens count, as they do for HF. Each check looks at
    the previous tail (at most len(longest stop) - 1 bytes) plus the new token's bytes."""

    def __init__(self, tokenizer, stops):
        self.tokenizer = tokenizer
        self.stops = tuple(s.encode("utf-8") for s in stops)
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.mode = _matching_mode(tokenizer)
        self.bytes_of = _byte_decoder() if self.mode == "byte_level" else None
        self._cache = {}
        self._base = None

    def token_bytes(self, tid: int) -> bytes:
        b = self._cache.get(tid)
        if b is None:
            b = self._cache[tid] = self._spell(tid)
        return b

    def _spell(self, tid: int) -> bytes:
        tok = self.tokenizer.convert_ids_to_tokens(tid)
        if tok is None:
            return b""
        if self.mode == "byte_level" and all(c in self.bytes_of for c in tok):
            return bytes(self.bytes_of[c] for c in tok)
        if self.mode == "byte_fallback" and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            try:
                return bytes([int(tok[3:5], 16)])
            except ValueError:
                pass
        # the token's text after a fixed prefix, so that word-start markers turn into what they print
        prefix = "abcdef"
        if self._base is None:
            ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            self._base = self.tokenizer.convert_ids_to_tokens(ids)
        text = self.tokenizer.convert_tokens_to_string(self._base + [tok])
        return text[text.index(prefix) + len(prefix):].encode("utf-8")

    def tail(self, ids) -> bytes:
        """The tail kept for a row whose tokens so far are `ids` (its prompt)."""
        out = b""
        for t in reversed(ids):
            if len(out) >= self.keep:
                break
            out = self.token_bytes(t) + out
        return out[max(0, len(out) - self.keep):] if self.keep else b""

    def step(self, tail: bytes, tid: int):
        """(stopped, new tail) after token `tid`."""
        buf = tail + self.token_bytes(tid)
        n = len(tail)
        for s in self.stops:
            if buf.find(s, max(0, n - len(s) + 1)) >= 0:
                return True, buf
        return False, buf[max(0, len(buf) - self.keep):] if self.keep else b""


# ---------------------------------------------------------------------------------------- caches

class _PrefixCache:
    """The cache of the shared prefix's own forward: its keys and values, per layer."""

    def __init__(self):
        self.kv = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.kv[layer_idx] = (key_states, value_states)
        return key_states, value_states


class _SlotCache:
    """The batch's KV cache, handed to the model as its cache: per layer (allocated at its first
    write) K and V of shape [slots, kv heads, `cap` columns, head dim]. Two kinds of forward use it:

    - a prefill (`prefill` set to (s0, s1, prefix, floor)): slots s0..s1 take the shared prefix (p
      tokens) at columns [col - q - p, col - q) and their left-padded suffixes (q tokens) at
      [col - q, col); the layer sees columns [col - q - p, col). Their columns from `floor` up to the
      prefix are zeroed: keys and values the mask hides are still read, and must be finite;
    - a step (`prefill` None): column `col` of slots [0, n); the layer sees columns [lo, col].
    """

    def __init__(self, slots):
        self.k, self.v = {}, {}
        self.slots, self.cap = slots, 0
        self.n = self.lo = self.col = 0
        self.prefill = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx not in self.k:
            shape = (self.slots, key_states.shape[1], self.cap, key_states.shape[3])
            self.k[layer_idx] = key_states.new_empty(shape)
            self.v[layer_idx] = value_states.new_empty(shape)
        K, V, col = self.k[layer_idx], self.v[layer_idx], self.col
        if self.prefill is None:
            K[:self.n, :, col].copy_(key_states[:, :, 0])
            V[:self.n, :, col].copy_(value_states[:, :, 0])
            return K[:self.n, :, self.lo:col + 1], V[:self.n, :, self.lo:col + 1]
        s0, s1, prefix, floor = self.prefill
        q = key_states.shape[2]
        p = prefix[layer_idx][0].shape[2] if prefix else 0
        a = col - q - p
        for T, new, i in ((K, key_states, 0), (V, value_states, 1)):
            if floor < a:
                T[s0:s1, :, floor:a].zero_()
            if p:
                T[s0:s1, :, a:a + p] = prefix[layer_idx][i]
            T[s0:s1, :, a + p:col] = new
        return K[s0:s1, :, a:col], V[s0:s1, :, a:col]


# ---------------------------------------------------------------------------------------- decoding

def groups(lengths, overhead):
    """Cut `lengths` (sorted, longest first) into runs [a, b) that minimise the tokens computed when
    each run is padded to its longest, a run costing `overhead` tokens more (a forward's fixed cost)."""
    n = len(lengths)
    best, cut = [0] + [None] * n, [0] * (n + 1)
    for b in range(1, n + 1):                       # best[b]: cheapest cover of lengths[:b]
        for a in range(b):
            c = best[a] + overhead + (b - a) * lengths[a]
            if best[b] is None or c < best[b]:
                best[b], cut[b] = c, a
    out, b = [], n
    while b > 0:
        out.append((cut[b], b))
        b = cut[b]
    return out[::-1]


# per tokenizer, what repeated calls share: the ids of recent prompt lists, stop matchers
_MEMO = weakref.WeakKeyDictionary()
_MEMO_PROMPT_LISTS = 4


def _memo(tokenizer) -> dict:
    try:
        return _MEMO.setdefault(tokenizer, {"ids": OrderedDict(), "matchers": {}})
    except TypeError:           # not weakly referenceable: nothing is kept
        return {"ids": OrderedDict(), "matchers": {}}


def tokenize(tokenizer, prompts) -> list:
    """Token ids of each prompt (as the tokenizer gives them, special tokens included), remembered for
    the last few prompt lists: a search decodes the same fitness prompts for every candidate."""
    memo, key = _memo(tokenizer)["ids"], tuple(prompts)
    if key in memo:
        memo.move_to_end(key)
        return memo[key]
    ids = tokenizer(list(prompts))["input_ids"]
    memo[key] = ids
    while len(memo) > _MEMO_PROMPT_LISTS:
        memo.popitem(last=False)
    return ids


def stop_matcher(tokenizer, stops):
    matchers = _memo(tokenizer)["matchers"]
    key = tuple(stops)
    if key not in matchers:
        matchers[key] = StopMatcher(tokenizer, stops)
    return matchers[key]


class _Row:
    __slots__ = ("index", "start", "tokens", "tail")

    def __init__(self, index, start, tail):
        self.index, self.start, self.tokens, self.tail = index, start, [], tail


@torch.no_grad()
def greedy(model, tokenizer, prompts, *, max_new_tokens: int = 128, batch_size: int = 32, stops=(),
           progress: bool = False, refill: int = None, shared_prefix: bool = True, stats: dict = None) -> list:
    """Greedy completions of `prompts` as token id lists (prompt excluded, the final EOS or stop token
    included), in the order given; see the module docstring. `batch_size`: the number of slots.
    `max_new_tokens`: one limit for all, or one per prompt (benchmarks force answer lengths this way).
    `refill`: prefill waiting prompts once this many slots are free (default batch_size // 8, at least
    1). `stats`, if a dict, receives counters (forwards, tokens computed, seconds in forwards, the
    cache's widest buffer in columns).
    Raises `Unsupported` before any model work if the model's sliding window is too short."""
    return _Decoder(model, tokenizer, stops, max_new_tokens, batch_size, refill, shared_prefix, stats).run(
        list(prompts), progress)


class _Decoder:
    def __init__(self, model, tokenizer, stops, max_new_tokens, batch_size, refill, shared_prefix, stats):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        per_row = isinstance(max_new_tokens, (list, tuple))
        self.limits = [int(x) for x in max_new_tokens] if per_row else None
        self.max_new = max(self.limits, default=1) if per_row else int(max_new_tokens)
        self.slots = max(1, int(batch_size))
        self.refill_at = refill or max(1, self.slots // 8)
        self.shared_prefix = shared_prefix
        # a forward's fixed cost in token computations, for cutting prefill groups: small on a CPU, where
        # every padded token costs as much as a real one; large on an accelerator, where width is cheap
        self.group_cost = PREFILL_FORWARD_COST if self.device.type == "cpu" else 16 * PREFILL_FORWARD_COST
        self.matcher = stop_matcher(tokenizer, stops) if stops else None
        eos = tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keep_kw = "logits_to_keep" in params
        self.additive = getattr(model.config, "_attn_implementation", "sdpa") == "eager"
        self.stats = stats if stats is not None else {}
        for k in ("forwards", "prefill_forwards", "prefix_tokens", "prefill_tokens", "decode_rows", "moves",
                  "relayouts", "forward_s"):
            self.stats[k] = 0

    def forward(self, ids, positions, mask, cache):
        """The model's logits at the last position of each row."""
        kw = {self.cache_kw: cache, "use_cache": True}
        if self.additive:       # eager attention adds its mask to the scores: 0 where seen, the dtype's min elsewhere
            dtype = self.model.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
        if self.keep_kw:
            kw["logits_to_keep"] = 1
        self.stats["forwards"] += 1
        t = time.perf_counter()
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kw).logits
        self.stats["forward_s"] += time.perf_counter() - t
        return logits[:, -1, :]

    def next_tokens(self, logits):
        """Greedy choice, as HF takes it: argmax of the float32 logits (first index on ties)."""
        return torch.argmax(logits.float(), dim=-1).tolist()

    # -- set-up
    def run(self, prompts, progress):
        n = len(prompts)
        if n == 0:
            return []
        if self.limits is not None and len(self.limits) != n:
            raise ValueError(f"max_new_tokens: {len(self.limits)} limits for {n} prompts")
        if self.max_new < 1:
            raise Unsupported(f"max_new_tokens={self.max_new}")
        self.ids = ids = tokenize(self.tokenizer, prompts)
        if any(len(x) == 0 for x in ids):
            raise ValueError("a prompt tokenizes to no tokens")
        order = sorted(range(n), key=lambda i: -len(ids[i]))          # longest first, stable
        self.longest = len(ids[order[0]])
        window = getattr(self.model.config, "sliding_window", None)
        if window is not None and self.longest + self.max_new > window:
            raise Unsupported(f"sequences up to {self.longest + self.max_new} tokens exceed the sliding window "
                              f"({window}); the masks built here are full causal masks")
        self.out = [None] * n
        self.queue = deque(order)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=n, unit="item", desc="generating", dynamic_ncols=True)
        try:
            self.prefix_len, self.prefix_kv = self.prefix(ids)
            self.loop()
        finally:
            if self.bar is not None:
                self.bar.close()
        return self.out

    def prefix(self, ids):
        """The token prefix every prompt shares (at least one token of each prompt left over), run once
        when that saves work."""
        if not self.shared_prefix or len(ids) < 2:
            return 0, {}
        first, p = ids[0], min(len(x) for x in ids) - 1
        for x in ids[1:]:
            k = 0
            while k < p and x[k] == first[k]:
                k += 1
            p = k
            if p == 0:
                return 0, {}
        if p * (len(ids) - 1) < MIN_SHARED:     # a forward of its own costs more than it saves
            return 0, {}
        t = torch.tensor([first[:p]], device=self.device)
        mask = torch.ones(p, p, dtype=torch.bool, device=self.device).tril()[None, None]
        cache = _PrefixCache()
        self.forward(t, torch.arange(p, device=self.device)[None], mask, cache)
        self.stats["prefix_tokens"] = p
        return p, cache.kv

    # -- the loop
    def loop(self):
        self.rows = []                      # the row in each used slot: slots 0..len(rows)-1
        self.cache = _SlotCache(self.slots)
        self.last = torch.zeros(self.slots, 1, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(self.slots, 1, dtype=torch.long, device=self.device)
        self.col = self.floor = self.longest    # the column the next step writes; all prompts fit left of it
        self.cache.cap = self.stats["columns"] = self.col + min(2 * self.max_new, GROW)
        self.mask = torch.zeros(self.slots, self.cache.cap, dtype=torch.bool, device=self.device)
        while self.queue or self.rows:
            free = self.slots - len(self.rows)
            if self.queue and (free >= min(self.refill_at, len(self.queue)) or not self.rows):
                self.admit(min(free, len(self.queue)))
            else:
                self.step()

    def admit(self, k):
        """Prefill the next k waiting prompts, in groups of similar length (`groups`)."""
        idx = [self.queue.popleft() for _ in range(k)]
        p = self.prefix_len
        for a, b in groups([len(self.ids[i]) - p for i in idx], self.group_cost):
            self.prefill(idx[a:b])

    def prefill(self, idx):
        """Prefill prompts `idx` (longest first; their suffixes after the shared prefix) as one
        left-padded batch into fresh slots, each row's tokens ending just left of the current column,
        and take each one's first token."""
        k, p, dev = len(idx), self.prefix_len, self.device
        suf = [self.ids[i][p:] for i in idx]
        lens = [len(x) for x in suf]
        q = lens[0]
        width = p + q
        self.room(1, left=width)
        col, s0 = self.col, len(self.rows)
        a = col - width
        if a < self.floor:                  # columns the existing rows will now see must be finite
            for store in (self.cache.k, self.cache.v):
                for t in store.values():
                    t[:s0, :, a:self.floor].zero_()
            self.floor = a
        pad = self.tokenizer.pad_token_id
        x = torch.tensor([[pad] * (q - n) + s for n, s in zip(lens, suf)], device=dev)
        d = torch.tensor([q - n for n in lens], device=dev)[:, None]           # each row's left padding
        j = torch.arange(q, device=dev)
        real = j[None, :] >= d                                                 # [k, q]
        positions = torch.where(real, p + j[None, :] - d, p)
        c = torch.arange(width, device=dev)
        # a row's columns: the prefix (c < p), its padding, its suffix (c >= p + d): what it sees from now on
        seen = (c[None, :] < p) | (c[None, :] >= p + d)                      # [k, width]
        # in this forward a real query sees those up to itself, a padding query its own column only (so
        # that no row of the mask is empty)
        mask = (seen[:, None, :] & (c[None, None, :] <= p + j[None, :, None])) | (c[None, None, :] == p + j[None, :, None])
        self.cache.col, self.cache.prefill = col, (s0, s0 + k, self.prefix_kv, self.floor)
        try:
            logits = self.forward(x, positions, mask[:, None], self.cache)
        finally:
            self.cache.prefill = None
        self.stats["prefill_forwards"] += 1
        self.stats["prefill_tokens"] += k * q
        self.mask[s0:s0 + k] = False
        self.mask[s0:s0 + k, a:col] = seen
        self.pos[s0:s0 + k, 0] = torch.tensor([p + n for n in lens], device=dev)
        toks = self.next_tokens(logits)
        self.last[s0:s0 + k, 0] = torch.tensor(toks, device=dev)
        for i, n in zip(idx, lens):
            tail = self.matcher.tail(self.ids[i]) if self.matcher is not None else b""
            self.rows.append(_Row(i, a, tail))
        self.accept(toks, s0)

    def step(self):
        n, c = len(self.rows), self.cache
        self.room(1)
        lo = min(r.start for r in self.rows)
        c.n, c.lo, c.col = n, lo, self.col
        self.mask[:n, self.col] = True
        mask = self.mask[:n, lo:self.col + 1][:, None, None, :]
        logits = self.forward(self.last[:n], self.pos[:n], mask, c)
        toks = self.next_tokens(logits)
        self.last[:n, 0] = torch.tensor(toks, device=self.device)
        self.pos[:n] += 1
        self.col += 1
        self.stats["decode_rows"] += n
        self.stats["window_cols"] = self.stats.get("window_cols", 0) + n * (self.col - lo)
        self.stats["live_cols"] = self.stats.get("live_cols", 0) + sum(self.col - r.start for r in self.rows)
        self.accept(toks)

    def accept(self, toks, s0=0):
        """Append the new token of each slot from s0 on; rows that end leave the batch."""
        ended = []
        for s, t in enumerate(toks, s0):
            row = self.rows[s]
            row.tokens.append(t)
            done = t in self.eos or len(row.tokens) >= (self.limits[row.index] if self.limits else self.max_new)
            if not done and self.matcher is not None:
                done, row.tail = self.matcher.step(row.tail, t)
            if done:
                ended.append(s)
                self.out[row.index] = row.tokens
                if self.bar is not None:
                    self.bar.update(1)
        if ended:
            self.compact(ended)

    def compact(self, ended):
        """Fill the slots of ended rows with the rows of the highest used slots (swap-remove), so that
        the used slots stay 0..n-1 and no finished row is computed again."""
        n = len(self.rows)
        keep = n - len(ended)
        gone = set(ended)
        holes = [s for s in ended if s < keep]
        movers = [s for s in range(keep, n) if s not in gone]
        if holes:
            dst = torch.tensor(holes, device=self.device)
            src = torch.tensor(movers, device=self.device)
            lo = min(self.rows[s].start for s in movers)
            for store in (self.cache.k, self.cache.v):
                for t in store.values():
                    w = t[:, :, lo:self.col]
                    w[dst] = w[src]
            self.mask[dst] = self.mask[src]
            self.last[dst] = self.last[src]
            self.pos[dst] = self.pos[src]
            for h, m in zip(holes, movers):
                self.rows[h] = self.rows[m]
            self.stats["moves"] += len(holes)
        del self.rows[keep:]

    # -- memory
    def room(self, right, left=0):
        """Make sure columns [col - left, col + right) exist, moving the used window [lo, col) to the left
        edge (and growing the buffers) when they do not. The window is never wider than the longest row,
        so the buffers never exceed it + `right` + GROW columns."""
        cap = self.cache.cap
        if self.col - left >= 0 and self.col + right <= cap:
            return
        lo = min((r.start for r in self.rows), default=self.col)
        w = self.col - lo
        new_col = max(w, left, max((len(self.ids[i]) for i in self.queue), default=0))
        new_cap = max(cap, new_col + right + min(2 * self.max_new, GROW))
        n = len(self.rows)
        for store in (self.cache.k, self.cache.v):
            for li, t in store.items():
                new = t.new_empty(t.shape[0], t.shape[1], new_cap, t.shape[3])
                new[:n, :, new_col - w:new_col] = t[:n, :, lo:self.col]
                store[li] = new
        mask = torch.zeros(self.slots, new_cap, dtype=torch.bool, device=self.device)
        mask[:n, new_col - w:new_col] = self.mask[:n, lo:self.col]
        self.mask, self.cache.cap = mask, new_cap
        self.stats["columns"] = max(self.stats["columns"], new_cap)
        shift = new_col - self.col
        for r in self.rows:
            r.start += shift
        self.col, self.floor = new_col, new_col - w
        self.stats["relayouts"] += 1
