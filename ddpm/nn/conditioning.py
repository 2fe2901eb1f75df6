"""Conditioning: class labels and text prompts -> a vector added to the time embedding.

One network is both conditional and unconditional (what classifier-free guidance needs, Ho & Salimans
2022): every conditioner has a learned *null* condition, and during training each sample's condition is
replaced by the null one with probability ``cond_drop_prob`` (per sample, never the whole batch; the
U-Net does that, see ``UNet.forward``).

- Class labels: an embedding table with ``num_classes + 1`` rows; the last row is the null class.
- Text prompts: a word-level :class:`Tokenizer` whose vocabulary comes from the dataset's captions, a
  small Transformer encoder, a masked mean over the tokens -> a vector, plus the token sequence itself
  for cross-attention inside the U-Net. The empty prompt ``""`` is the null prompt (one ``<null>`` token).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from ddpm._util import shorten
from ddpm.datasets import MNIST_LABEL_NAMES, caption_templates, caption_vocabulary, split_words

# ---------------------------------------------------------------------------------------------------------
# Captions and tokenizer
# ---------------------------------------------------------------------------------------------------------

def mnist_captions(label: int) -> list[str]:
    """The plain caption templates of one MNIST digit, e.g. for 7: "a handwritten seven", "the digit 7", ...
    (training captions may add style words to these: ddpm.datasets.captions_for).

    The templates themselves live with the data (ddpm.datasets.caption_templates), so that the captions a
    text model is trained on and the vocabulary its tokenizer knows cannot drift apart.
    """
    if not 0 <= int(label) <= 9:
        raise ValueError(f"MNIST labels are 0..9, got {label}")
    return caption_templates(MNIST_LABEL_NAMES[int(label)], int(label), "mnist")


class UnknownWordsError(ValueError):
    """Words a tokenizer does not know. ``unknown``: the words; ``closest[w]``: the known words most like w
    (difflib), so that the message can say what was probably meant."""

    SHOWN = 5  # unknown words named in the message (the rest are counted)

    def __init__(self, unknown: Sequence[str], vocab: Sequence[str]):
        self.unknown = list(unknown)
        self.vocab_size = len(vocab)
        self.closest = {w: difflib.get_close_matches(w, vocab, n=3, cutoff=0.6) for w in self.unknown[:self.SHOWN]}
        super().__init__(f"{self.describe()}; the {self.vocab_size} known words are in Tokenizer.vocab")

    def describe(self) -> str:
        """One line: "unknown word(s) ['thik', 'purple']; closest known: thik -> thick, thin; purple -> none"."""
        shown = [shorten(w, 20) for w in self.unknown[:self.SHOWN]]
        more = f" and {len(self.unknown) - self.SHOWN} more" if len(self.unknown) > self.SHOWN else ""
        near = "; ".join(f"{s} -> {', '.join(self.closest[w]) or 'none'}"
                         for s, w in zip(shown, self.unknown, strict=False))
        return f"unknown word(s) {shown}{more}; closest known: {near}"


class Tokenizer:
    """Deterministic word-level tokenizer with a fixed vocabulary.

    Token ids: ``0 = <pad>`` (fills the rest of a row, masked out of attention), ``1 = <null>`` (the null
    prompt, what ``""`` encodes to), then the words in the order given, from 2 on.
    """

    SPECIAL_TOKENS = ("<pad>", "<null>")
    PAD_ID = 0
    NULL_ID = 1

    def __init__(self, vocab: Sequence[str]):
        vocab = tuple(vocab)
        bad = [w for w in vocab if split_words(w) != [w]]
        if bad:
            raise ValueError(f"vocabulary entries must be single lowercase words, got {bad}")
        dupes = sorted({w for w in vocab if vocab.count(w) > 1})
        if dupes:
            raise ValueError(f"vocabulary has duplicate words {dupes}")
        self.vocab: tuple[str, ...] = vocab
        self.tokens: tuple[str, ...] = self.SPECIAL_TOKENS + vocab
        self._ids = {w: i for i, w in enumerate(self.tokens)}

    @classmethod
    def from_captions(cls, captions: Iterable[str]) -> Tokenizer:
        """Vocabulary = sorted unique lowercased words of all captions (sorted, so it is deterministic)."""
        return cls(sorted({w for c in captions for w in split_words(c)}))

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return len(self.tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, prompts: list[str], max_len: int) -> Tensor:
        """Prompts -> [B, max_len] int64 token ids, padded with ``<pad>``; ``""`` -> ``<null>``.

        Raises UnknownWordsError naming every unknown word with the closest known ones, or a ValueError for
        a prompt longer than ``max_len`` words (the most the text encoder reads).
        """
        if isinstance(prompts, str):
            raise ValueError(f"prompts must be a list of strings, got the string {prompts!r}; use [prompt]")
        rows = [split_words(p) for p in prompts]
        known = set(self.vocab)
        unknown = list(dict.fromkeys(w for words in rows for w in words if w not in known))  # in prompt order
        if unknown:
            raise UnknownWordsError(unknown, self.vocab)
        ids = torch.full((len(rows), max_len), self.PAD_ID, dtype=torch.long)
        for i, words in enumerate(rows):
            if len(words) > max_len:
                raise ValueError(
                    f"the prompt {shorten(prompts[i])!r} has {len(words)} words; this text encoder reads at "
                    f"most {max_len} (max_prompt_len): shorten the prompt"
                )
            row = [self._ids[w] for w in words] or [self.NULL_ID]
            ids[i, : len(row)] = torch.tensor(row)
        return ids

    def decode(self, ids: Tensor) -> list[str]:
        """[B, L] token ids -> prompts (``<pad>`` dropped, ``<null>`` -> ``""``)."""
        special = (self.PAD_ID, self.NULL_ID)
        return [" ".join(self.tokens[i] for i in row if i not in special) for row in ids.tolist()]


# Every word of the MNIST caption grammar (digits and style words), derived from the grammar itself.
MNIST_CAPTION_VOCAB: tuple[str, ...] = caption_vocabulary("mnist")


# ---------------------------------------------------------------------------------------------------------
# Attention (shared by the text encoder and the U-Net)
# ---------------------------------------------------------------------------------------------------------


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v  (Vaswani et al. 2017, Eq. 1).

    Shapes: q [..., Lq, d], k [..., Lk, d], v [..., Lk, dv], key_mask [B, Lk] bool (True = attend; the
    leading batch dim of q) -> [..., Lq, dv].
    """
    scores = torch.einsum("...id,...jd->...ij", q, k) / math.sqrt(q.shape[-1])  # [..., Lq, Lk]
    if key_mask is not None:
        # Broadcast [B, Lk] over the head and query dims: [B, 1, ..., 1, Lk].
        mask = key_mask.reshape(key_mask.shape[0], *([1] * (scores.ndim - 2)), key_mask.shape[1])
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("...ij,...jd->...id", scores.softmax(dim=-1), v)


# ---------------------------------------------------------------------------------------------------------
# Conditioners
# ---------------------------------------------------------------------------------------------------------


class ClassConditioner(nn.Module):
    """Class label -> [B, emb_dim] vector (added to the time embedding).

    Rows 0..num_classes-1 of the table are the classes, row ``num_classes`` is the learned null class.
    User-facing labels use -1 for "null" (unconditional) for that sample.
    """

    def __init__(self, num_classes: int, emb_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.null_id = num_classes
        self.embedding = nn.Embedding(num_classes + 1, emb_dim)

    def to_ids(self, cond: Tensor | Sequence[int] | None, batch_size: int, device: torch.device) -> Tensor:
        """Validate labels ([B], values in -1..num_classes-1) and map them to table rows [B] (-1 -> null)."""
        if cond is None:
            return torch.full((batch_size,), self.null_id, dtype=torch.long, device=device)
        labels = torch.as_tensor(cond, device=device)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
            raise ValueError(f"class labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.shape != (batch_size,):
            raise ValueError(f"class labels must have shape [B] = [{batch_size}], got {tuple(labels.shape)}")
        labels = labels.long()
        if batch_size and (labels.min() < -1 or labels.max() >= self.num_classes):
            raise ValueError(
                f"class labels must be in 0..{self.num_classes - 1} (or -1 for the null class), "
                f"got values in {labels.min().item()}..{labels.max().item()}"
            )
        return torch.where(labels == -1, self.null_id, labels)

    def replace_with_null(self, ids: Tensor, drop: Tensor) -> Tensor:
        """ids [B], drop [B] bool -> ids with the dropped samples set to the null class."""
        return torch.where(drop, self.null_id, ids)

    def forward(self, ids: Tensor) -> Tensor:
        """[B] table rows -> [B, emb_dim]."""
        return self.embedding(ids)


class TextEncoderLayer(nn.Module):
    """Pre-norm Transformer encoder layer: x += MHA(LN(x)); x += MLP(LN(x)).  [B, L, D] -> [B, L, D]."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"text_dim={dim} must be divisible by text_heads={heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        qkv = self.qkv(self.norm1(x))  # [B, L, 3D]
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.heads)
        a = attention(q, k, v, key_mask=mask)  # [B, h, L, d]
        x = x + self.proj(rearrange(a, "b h l d -> b l (h d)"))
        return x + self.mlp(self.norm2(x))


class TextConditioner(nn.Module):
    """Token ids [B, L] -> (pooled vector [B, emb_dim], token sequence [B, L, D], mask [B, L]).

    Token + learned position embeddings -> ``layers`` pre-norm Transformer layers -> LayerNorm. The pooled
    vector is the mean over the non-pad tokens, projected to emb_dim and added to the time embedding;
    the sequence and its mask feed the U-Net's cross-attention.
    """

    TO_EMB_GAIN = 1.0

    def __init__(self, tokenizer: Tokenizer, max_len: int, dim: int, layers: int, heads: int, emb_dim: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.token_embedding = nn.Embedding(tokenizer.vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_len, dim))
        self.layers = nn.ModuleList(TextEncoderLayer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.to_emb = nn.Linear(dim, emb_dim)
        # Word vectors as large as the class table's rows (nn.Embedding's N(0, 1)): Adam moves a weight by about
        # lr per step whatever its scale, so GPT-2's std 0.02 would let a few steps rewrite every word. to_emb
        # maps the pooled vector (unit scale after the LayerNorm) to about unit scale per dimension: larger
        # codes drown the time embedding (norm ~3) and the high-t predictions suffer (docs/results.md).
        nn.init.normal_(self.token_embedding.weight, std=1.0)
        nn.init.normal_(self.position_embedding, std=0.02)
        nn.init.normal_(self.to_emb.weight, std=self.TO_EMB_GAIN / math.sqrt(dim))
        nn.init.zeros_(self.to_emb.bias)

    def null_ids(self, batch_size: int, device: torch.device) -> Tensor:
        """[B, max_len] ids of the null prompt: <null> <pad> <pad> ..."""
        ids = torch.full((batch_size, self.max_len), Tokenizer.PAD_ID, dtype=torch.long, device=device)
        ids[:, 0] = Tokenizer.NULL_ID
        return ids

    def to_ids(self, cond: list[str] | Tensor | None, batch_size: int, device: torch.device) -> Tensor:
        """Prompts (list of B strings, "" = null) or token ids [B, L <= max_len] -> validated ids [B, L]."""
        if cond is None:
            return self.null_ids(batch_size, device)
        if not isinstance(cond, Tensor):
            if isinstance(cond, str) or len(cond) != batch_size:
                raise ValueError(f"text condition must be a list of B={batch_size} prompts, got {cond!r}")
            return self.tokenizer.encode(list(cond), self.max_len).to(device)
        ids = cond.to(device)
        bad_dtype = ids.dtype.is_floating_point or ids.dtype == torch.bool
        if bad_dtype or ids.ndim != 2 or ids.shape[0] != batch_size:
            raise ValueError(
                f"token ids must be an integer tensor [B={batch_size}, L<={self.max_len}], "
                f"got {ids.dtype} {tuple(ids.shape)}"
            )
        if not 1 <= ids.shape[1] <= self.max_len:
            raise ValueError(f"token ids have length {ids.shape[1]}; max_prompt_len is {self.max_len}")
        ids = ids.long()
        if ids.min() < 0 or ids.max() >= self.tokenizer.vocab_size:
            raise ValueError(f"token ids must be in 0..{self.tokenizer.vocab_size - 1}")
        if (ids == Tokenizer.PAD_ID).all(dim=1).any():
            raise ValueError("a row of token ids is all <pad>; for null use Tokenizer.NULL_ID or prompt ''")
        return ids

    def replace_with_null(self, ids: Tensor, drop: Tensor) -> Tensor:
        """ids [B, L], drop [B] bool -> ids with the dropped rows set to the null prompt."""
        null = self.null_ids(ids.shape[0], ids.device)[:, : ids.shape[1]]
        return torch.where(rearrange(drop, "b -> b 1"), null, ids)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mask = ids != Tokenizer.PAD_ID  # [B, L]
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]  # [B, L, D]
        for layer in self.layers:
            x = layer(x, mask)
        tokens = self.norm(x)
        m = rearrange(mask, "b l -> b l 1").to(tokens.dtype)
        pooled = (tokens * m).sum(dim=1) / m.sum(dim=1)  # [B, D]: mean over real tokens
        return self.to_emb(pooled), tokens, mask


class EmbeddingConditioner(nn.Module):
    """A CLIP embedding [B, D] -> (vector [B, emb_dim], ``tokens`` context tokens [B, tokens, context_dim] or None,
    their mask [B, tokens] or None).

    unCLIP's decoder (Ramesh et al. 2022, Sec. 2.1) adds a projection of the CLIP image embedding to the time
    embedding and also gives it as 4 extra tokens to attend to; the diffusion prior uses the vector alone (its
    condition is the CLIP text embedding). The input is a unit vector, scaled by sqrt(D) (unit scale per
    coordinate) before the linear maps. The null condition is the zero vector (what DALL-E 2 sets the embedding
    to for guidance): rows that are all zero get the learned null vector and null tokens instead.
    """

    def __init__(self, embed_dim: int, emb_dim: int, tokens: int = 0, context_dim: int = 0):
        super().__init__()
        self.embed_dim, self.num_tokens, self.context_dim = embed_dim, tokens, context_dim
        self.to_emb = nn.Linear(embed_dim, emb_dim)
        self.null_emb = nn.Parameter(torch.zeros(emb_dim))
        self.to_tokens = nn.Linear(embed_dim, tokens * context_dim) if tokens else None
        self.null_tokens = nn.Parameter(torch.randn(tokens, context_dim) * 0.02) if tokens else None

    def to_ids(self, cond: Tensor | None, batch_size: int, device: torch.device) -> Tensor:
        """Validate embeddings [B, D] (a zero row = null for that sample); None -> all null."""
        if cond is None:
            return torch.zeros(batch_size, self.embed_dim, device=device)
        e = torch.as_tensor(cond, device=device)
        if not e.dtype.is_floating_point or e.shape != (batch_size, self.embed_dim):
            raise ValueError(f"this network is conditioned on CLIP embeddings: a float tensor [B, D] = "
                             f"[{batch_size}, {self.embed_dim}], got {e.dtype} {tuple(e.shape)}")
        if not torch.isfinite(e).all():
            raise ValueError("the CLIP embeddings given as the condition are not all finite")
        return e.float()

    def replace_with_null(self, e: Tensor, drop: Tensor) -> Tensor:
        """e [B, D], drop [B] bool -> e with the dropped rows zeroed (the null condition)."""
        return torch.where(rearrange(drop, "b -> b 1"), torch.zeros_like(e), e)

    def forward(self, e: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """e [B, D] -> (vector [B, emb_dim], tokens [B, k, context_dim] or None, their mask [B, k] or None)."""
        null = rearrange((e == 0).all(dim=-1), "b -> b 1")  # [B, 1]
        x = e * math.sqrt(self.embed_dim)
        vec = torch.where(null, self.null_emb.to(x.dtype), self.to_emb(x))
        if self.to_tokens is None:
            return vec, None, None
        tokens = rearrange(self.to_tokens(x), "b (k d) -> b k d", k=self.num_tokens)
        tokens = torch.where(rearrange(null, "b 1 -> b 1 1"), self.null_tokens.to(tokens.dtype), tokens)
        return vec, tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
