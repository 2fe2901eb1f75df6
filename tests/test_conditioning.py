"""Timestep embedding, tokenizer, captions and conditioners (ddpm/nn/embeddings.py, conditioning.py)."""

import math
import random

import pytest
import torch

from ddpm.datasets import caption_vocabulary
from ddpm.nn import MNIST_CAPTION_VOCAB, Tokenizer, mnist_captions, timestep_embedding
from ddpm.nn.conditioning import ClassConditioner, TextConditioner, UnknownWordsError, attention

# ---------------------------------------------------------------------------------------------- time


def test_timestep_embedding_formula():
    # Independent check of the paper's code: [sin(t w_i), cos(t w_i)], w_i = 10000^(-i / (half - 1)).
    t, dim = 37, 8
    half = dim // 2
    expected = [math.sin(t * 10000 ** (-i / (half - 1))) for i in range(half)]
    expected += [math.cos(t * 10000 ** (-i / (half - 1))) for i in range(half)]
    emb = timestep_embedding(torch.tensor([t]), dim)
    assert emb.shape == (1, dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_timestep_embedding_at_zero_and_shapes():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 128)
    assert emb.shape == (3, 128)
    assert torch.all(emb[0, :64] == 0) and torch.all(emb[0, 64:] == 1)  # sin(0), cos(0)
    assert not torch.allclose(emb[1], emb[2])
    odd = timestep_embedding(torch.tensor([5]), 7)  # odd width: one zero column at the end
    assert odd.shape == (1, 7) and odd[0, -1] == 0
    # float t is accepted and agrees with the integer version
    as_float, as_int = timestep_embedding(torch.tensor([3.0]), 16), timestep_embedding(torch.tensor([3]), 16)
    torch.testing.assert_close(as_float, as_int)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        timestep_embedding(torch.zeros(2, 2), 16)


# ------------------------------------------------------------------------------------ tokenizer


def test_mnist_captions():
    caps = mnist_captions(7)
    for c in ("a handwritten seven", "the digit 7", "number seven", "a seven"):
        assert c in caps
    assert "an eight" in mnist_captions(8)
    words = {w for d in range(10) for c in mnist_captions(d) for w in c.split()}
    assert words < set(MNIST_CAPTION_VOCAB)  # the plain templates, and the style words besides
    assert {"thick", "thin", "slanted", "upright", "narrow", "wide"} < set(MNIST_CAPTION_VOCAB)
    assert MNIST_CAPTION_VOCAB == caption_vocabulary("mnist")  # one grammar, one vocabulary
    assert list(MNIST_CAPTION_VOCAB) == sorted(MNIST_CAPTION_VOCAB)
    with pytest.raises(ValueError, match="0..9"):
        mnist_captions(10)


def test_tokenizer_from_captions_is_deterministic():
    caps = [c for d in range(10) for c in mnist_captions(d)]
    shuffled = caps[:]
    random.Random(0).shuffle(shuffled)
    tok1, tok2 = Tokenizer.from_captions(caps), Tokenizer.from_captions(shuffled)
    assert tok1.vocab == tok2.vocab
    tok1 = Tokenizer(MNIST_CAPTION_VOCAB)
    prompts = ["a handwritten seven", "the digit 7", ""]
    ids = tok1.encode(prompts, max_len=6)
    assert ids.dtype == torch.long and ids.shape == (3, 6)
    assert torch.equal(tok2.encode(prompts, max_len=6), Tokenizer(tok2.vocab).encode(prompts, max_len=6))
    # word ids start after the special tokens; rows are padded with <pad>; "" is the null prompt
    assert ids[0, :3].tolist() == [2 + MNIST_CAPTION_VOCAB.index(w) for w in ("a", "handwritten", "seven")]
    assert ids[0, 3:].tolist() == [Tokenizer.PAD_ID] * 3
    assert ids[2].tolist() == [Tokenizer.NULL_ID] + [Tokenizer.PAD_ID] * 5
    assert tok1.decode(ids) == ["a handwritten seven", "the digit 7", ""]


def test_tokenizer_normalizes_case_and_punctuation():
    tok = Tokenizer(MNIST_CAPTION_VOCAB)
    assert torch.equal(tok.encode(["A Handwritten  SEVEN."], 8), tok.encode(["a handwritten seven"], 8))


def test_tokenizer_unknown_words_are_named_with_the_closest_known_ones():
    tok = Tokenizer(MNIST_CAPTION_VOCAB)
    with pytest.raises(UnknownWordsError) as err:
        tok.encode(["a purple thik seven", "an elephant", "a thik sevn"], 8)
    e = err.value
    assert isinstance(e, ValueError) and e.unknown == ["purple", "thik", "elephant", "sevn"]  # prompt order, once
    assert e.closest["thik"][0] == "thick" and e.closest["sevn"] == ["seven"] and e.closest["purple"] == []
    assert str(e).startswith("unknown word(s) ['purple', 'thik', 'elephant', 'sevn']; closest known: purple -> none; "
                             "thik -> thick, thin")
    assert "\n" not in str(e) and f"{len(MNIST_CAPTION_VOCAB)} known words" in str(e)
    with pytest.raises(UnknownWordsError, match="and 15 more") as err:  # a flood is counted, not listed
        tok.encode([" ".join(f"zz{i}" for i in range(20))], 8)
    assert len(str(err.value)) < 300
    with pytest.raises(ValueError, match="unknown"):
        tok.encode(["<null>"], 8)  # special tokens cannot be typed
    with pytest.raises(ValueError, match=r"has 3 words; this text encoder reads at most 2 \(max_prompt_len\)"):
        tok.encode(["a handwritten seven"], 2)
    with pytest.raises(ValueError, match="list of strings"):
        tok.encode("a seven", 8)


def test_tokenizer_rejects_bad_vocab():
    with pytest.raises(ValueError, match="duplicate"):
        Tokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="single lowercase words"):
        Tokenizer(["two words"])


# ---------------------------------------------------------------------------------- conditioners


def test_class_conditioner_null_and_validation():
    cc = ClassConditioner(10, 16)
    ids = cc.to_ids(torch.tensor([0, 9, -1]), 3, torch.device("cpu"))
    assert ids.tolist() == [0, 9, 10]  # -1 -> the null row
    assert cc.to_ids(None, 2, torch.device("cpu")).tolist() == [10, 10]
    assert cc(ids).shape == (3, 16)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        cc.to_ids(torch.tensor([3, 10]), 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="integer"):
        cc.to_ids(torch.tensor([1.0, 2.0]), 2, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        cc.to_ids(torch.tensor([1, 2, 3]), 2, torch.device("cpu"))


def test_text_conditioner_shapes_and_padding_invariance():
    torch.manual_seed(0)
    tok = Tokenizer(MNIST_CAPTION_VOCAB)
    tc = TextConditioner(tok, max_len=8, dim=32, layers=2, heads=4, emb_dim=48).eval()
    ids = tc.to_ids(["a handwritten seven", ""], 2, torch.device("cpu"))
    pooled, tokens, mask = tc(ids)
    assert pooled.shape == (2, 48) and tokens.shape == (2, 8, 32) and mask.shape == (2, 8)
    assert mask.sum(1).tolist() == [3, 1]
    # <pad> is masked out: extra padding changes nothing
    short = tok.encode(["a handwritten seven"], 3)
    torch.testing.assert_close(tc(short)[0], pooled[:1])
    with pytest.raises(ValueError, match="all <pad>"):
        tc.to_ids(torch.zeros(1, 8, dtype=torch.long), 1, torch.device("cpu"))
    with pytest.raises(ValueError, match="list of B=2 prompts"):
        tc.to_ids(["one prompt"], 2, torch.device("cpu"))


def test_text_codes_start_at_the_scale_of_a_class_embedding():
    """At init the pooled code of a prompt has about unit scale per dimension, and prompts that differ in the
    digit are about as far apart as a class table's rows are from a shared mean: word vectors N(0, 1) (Adam's
    steps of ~lr leave them recognisable), to_emb of unit gain (larger codes drown the time embedding; see
    docs/results.md, "Why the text path learned slowly")."""
    torch.manual_seed(0)
    tc = TextConditioner(Tokenizer(MNIST_CAPTION_VOCAB), max_len=14, dim=64, layers=2, heads=4, emb_dim=128)
    assert 0.9 < tc.token_embedding.weight.std().item() < 1.1
    prompts = [mnist_captions(k)[0] for k in range(10)]  # "a handwritten zero", ...
    with torch.no_grad():
        pooled = tc(tc.to_ids(prompts, 10, torch.device("cpu")))[0]
    per_dim = pooled.std(dim=1).mean().item()
    spread = (pooled - pooled.mean(0)).norm(dim=1).mean().item() / math.sqrt(128)  # per dimension
    assert 0.3 < per_dim < 1.2, per_dim  # gain 3 gave 1.7 here, and grey, noisy samples
    assert 0.15 < spread < 0.7, spread


def test_attention_mask_equals_dropping_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    torch.testing.assert_close(attention(q, k, v, mask), attention(q, k[:, :2], v[:, :2]))
