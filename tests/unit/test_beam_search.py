"""Greedy and beam search against tiny deterministic toy models whose best outputs can be worked out
by hand or by brute force, so every assertion is about exact tokens and scores."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from model.beam_search import (
    Translation,
    beam_search,
    greedy_search,
    length_factor,
    length_penalty,
    output_length_limits,
)
from model.encoder_decoder import Decoder, Encoder, EncoderOutput
from model.model import Seq2Seq
from model.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID

A, B, C = 4, 5, 6  # the toy target words
SRC_VOCAB = 9


class ToyEncoder(Encoder):
    """An embedding: no mixing across positions, so padding cannot change a sentence's states."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.embedding = nn.Embedding(SRC_VOCAB, dim, padding_idx=PAD_ID)
        self.output_size = dim

    def forward(self, src: Tensor, lengths: Tensor) -> EncoderOutput:
        # The extra exercises EncoderOutput.index_select on architecture extras.
        return EncoderOutput(self.embedding(src), src != PAD_ID, lengths, extras={"ids": src})


class ToyDecoder(Decoder):
    """Logits are ``table[position, prev]`` plus ``mix`` times a readout of a tiny recurrence ``h``
    and of attention over the source; ``h`` lives in the state, so a wrong reorder changes scores.
    ``length_eos`` ties </s> to the source length (output length = source length), for sentences
    that finish at different steps."""

    def __init__(self, table: Tensor, dim: int = 4, mix: float = 0.0, length_eos: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("table", table)
        vocab = table.size(-1)
        self.embedding = nn.Embedding(vocab, dim)
        self.output_layer = nn.Linear(2 * dim, vocab)
        self.dim, self.mix, self.length_eos = dim, mix, length_eos
        self.calls: list[tuple[int, int, bool]] = []  # (position, rows, inference mode) per step

    def init_state(self, enc: EncoderOutput) -> dict[str, Tensor]:
        rows = enc.states.size(0)
        return {"h": enc.states.new_zeros(rows, self.dim), "pos": enc.lengths.new_zeros(rows)}

    def step(
        self, enc: EncoderOutput, prev: Tensor, state: dict[str, Tensor], position: int
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        assert bool((state["pos"] == position).all()) and prev.shape == enc.lengths.shape
        self.calls.append((position, prev.size(0), torch.is_inference_mode_enabled()))
        h = torch.tanh(0.5 * state["h"] + self.embedding(prev))
        scores = (enc.states * h[:, None, :]).sum(-1).masked_fill(~enc.mask, float("-inf"))
        attn = scores.softmax(-1)
        ctx = (attn[..., None] * enc.states).sum(1)
        logits = self.table[min(position, self.table.size(0) - 1)][prev]
        logits = logits + self.mix * self.output_layer(torch.cat([h, ctx], -1))
        if self.length_eos:
            at_end = (position + 1 >= enc.lengths).float() * 2 - 1
            logits = logits.clone()
            logits[:, EOS_ID] = logits[:, EOS_ID] + self.length_eos * at_end
        return logits, attn, {"h": h, "pos": state["pos"] + 1}

    def forward(self, enc: EncoderOutput, trg_in: Tensor, select: Tensor | None = None) -> Tensor:
        state = self.init_state(enc)
        out = []
        for t in range(trg_in.size(1)):
            logits, _, state = self.step(enc, trg_in[:, t], state, t)
            out.append(logits)
        logits = torch.stack(out, 1)
        return logits if select is None else logits[select]


def make_model(table: Tensor, mix: float = 0.0, length_eos: float = 0.0, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(ToyEncoder(), ToyDecoder(table, mix=mix, length_eos=length_eos)).eval()


def crafted_table(rows: dict[tuple[int, int], dict[int, float]], positions: int = 6, vocab: int = 7) -> Tensor:
    """Logits = log of the given next-token probabilities, for (position, prev); the probability
    left over is spread evenly over the other tokens. Unlisted rows: </s> 0.6."""
    table = torch.empty(positions, vocab, vocab)
    for t in range(positions):
        for prev in range(vocab):
            probs = rows.get((t, prev), {EOS_ID: 0.6})
            rest = (1.0 - sum(probs.values())) / (vocab - len(probs))
            table[t, prev] = torch.tensor([math.log(probs.get(v, rest)) for v in range(vocab)])
    return table


def random_table(seed: int, positions: int = 8, vocab: int = 8) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(positions, vocab, vocab, generator=g) * 1.5
    table[:, :, EOS_ID] += torch.arange(positions).float()[:, None] * 0.6 - 2.0  # </s> grows likelier
    return table


def random_model(seed: int, table: Tensor | None = None) -> Seq2Seq:
    """A model whose outputs depend on the source, the whole prefix (through ``h``) and the position."""
    return make_model(random_table(seed) if table is None else table, mix=3.0, seed=seed)


def sources(lengths: list[int], seed: int = 1) -> tuple[Tensor, Tensor]:
    """Padded source ids (real ids 4.., </s> last) for sentences of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(4, SRC_VOCAB, (n - 1,), generator=g)
        src[i, n - 1] = EOS_ID
    return src, torch.tensor(lengths)


def emitted(tr: Translation, max_output_length: int) -> list[int]:
    """The ids the search emitted: the tokens plus </s> unless the hypothesis was cut at the limit."""
    return tr.tokens if len(tr.tokens) == max_output_length else [*tr.tokens, EOS_ID]


def replay(model: Seq2Seq, src: Tensor, length: int, ids: list[int]) -> tuple[float, list[list[float]]]:
    """Teacher forcing of one sentence alone: the sum of log-probabilities (from ``forward``, unmasked)
    and the attention rows ``step`` returns along the same prefix."""
    src1, len1 = src[None, :length], torch.tensor([length])
    trg_in = torch.tensor([[BOS_ID, *ids[:-1]]])
    with torch.no_grad():
        logp = torch.log_softmax(model(src1, len1, trg_in).float(), -1)[0]
        score = sum(logp[t, tok].item() for t, tok in enumerate(ids))
        enc = model.encode(src1, len1)
        state = model.decoder.init_state(enc)
        rows = []
        for t, prev in enumerate(trg_in[0].tolist()):
            _, attn, state = model.decoder.step(enc, torch.tensor([prev]), state, t)
            rows.append(attn[0].tolist())
    return score, rows


def brute_force(table: Tensor, max_output_length: int, alpha: float, beta: float = 0.0) -> tuple[list[int], float]:
    """The best sequence by normalized score over every sequence a table model can emit."""
    logp = torch.log_softmax(table.double(), -1).tolist()
    allowed = [v for v in range(table.size(-1)) if v not in (PAD_ID, BOS_ID, EOS_ID)]
    best: tuple[float, list[int], float] = (-math.inf, [], 0.0)
    for n in range(max_output_length + 1):
        for body in itertools.product(allowed, repeat=n):
            ids = [*body, EOS_ID] if n < max_output_length else list(body)
            if not ids:
                continue
            prevs = [BOS_ID, *ids[:-1]]
            score = sum(logp[min(t, table.size(0) - 1)][p][tok] for t, (p, tok) in enumerate(zip(prevs, ids)))
            key = score / length_penalty(len(ids), alpha, beta)
            if key > best[0]:
                best = (key, list(body), score)
    return best[1], best[2]


def assert_same_as(tr: Translation, expected: tuple[list[int], float]) -> None:
    assert tr.tokens == expected[0]
    assert tr.score == pytest.approx(expected[1], abs=1e-5)


ONE_SRC = sources([3])

# Greedy takes A (0.5 > 0.4), then A </s> = 0.2; B </s> = 0.36 is better and beam search finds it.
GREEDY_TRAP = crafted_table({
    (0, BOS_ID): {A: 0.5, B: 0.4, EOS_ID: 0.05},
    (1, A): {EOS_ID: 0.4, A: 0.3, B: 0.25},
    (1, B): {EOS_ID: 0.9},
})

# "A </s>" = 0.25 beats "B C C </s>" = 0.45 * 0.8**3 = 0.2304 in total log-probability,
# but not per token: alpha 0 picks the first, alpha 1 the second.
LENGTH_TRADE = crafted_table({
    (0, BOS_ID): {A: 0.5, B: 0.45},
    (1, A): {EOS_ID: 0.5, A: 0.1, B: 0.1, C: 0.1},
    (1, B): {C: 0.8},
    (2, C): {C: 0.8},
    (3, C): {EOS_ID: 0.8},
})


def test_length_penalty_is_gnmt_sockeye():
    assert length_penalty(1, 1.0, 0.0) == 1.0
    assert length_penalty(5, 1.0, 0.0) == 5.0
    assert length_penalty(7, 0.0, 3.0) == 1.0
    assert length_penalty(10, 0.6, 5.0) == pytest.approx(((5 + 10) / 6) ** 0.6)
    lengths = torch.tensor([1, 4])
    assert torch.allclose(length_penalty(lengths, 2.0, 1.0), torch.tensor([1.0, 6.25]))


def test_greedy_falls_into_the_trap():
    (tr,) = greedy_search(make_model(GREEDY_TRAP), *ONE_SRC, max_output_length=5)
    assert tr.tokens == [A]
    assert tr.score == pytest.approx(math.log(0.5) + math.log(0.4), abs=1e-5)
    assert tr.normalized_score == pytest.approx(tr.score / 2)
    assert tr.attention is None


@pytest.mark.parametrize("beam_size", [2, 3])
def test_beam_finds_the_globally_better_sequence(beam_size):
    (tr,) = beam_search(make_model(GREEDY_TRAP), *ONE_SRC, beam_size=beam_size, max_output_length=5)
    assert tr.tokens == [B]
    assert tr.score == pytest.approx(math.log(0.4) + math.log(0.9), abs=1e-5)
    assert tr.normalized_score == pytest.approx(tr.score / 2)
    assert_same_as(tr, brute_force(GREEDY_TRAP, 5, alpha=1.0))


@pytest.mark.parametrize(("alpha", "tokens", "prob"), [(0.0, [A], 0.5 * 0.5), (1.0, [B, C, C], 0.45 * 0.8**3)])
def test_length_penalty_changes_the_choice(alpha, tokens, prob):
    (tr,) = beam_search(make_model(LENGTH_TRADE), *ONE_SRC, beam_size=2, max_output_length=6,
                        length_penalty_alpha=alpha)
    assert tr.tokens == tokens
    assert tr.score == pytest.approx(math.log(prob), abs=1e-5)
    assert tr.normalized_score == pytest.approx(tr.score / length_penalty(len(tokens) + 1, alpha, 0.0))
    assert_same_as(tr, brute_force(LENGTH_TRADE, 6, alpha=alpha))


def test_beta_softens_the_penalty():
    # Large beta makes the penalty almost flat in length, so the raw-score winner comes back.
    (tr,) = beam_search(make_model(LENGTH_TRADE), *ONE_SRC, beam_size=2, max_output_length=6,
                        length_penalty_alpha=1.0, length_penalty_beta=1000.0)
    assert tr.tokens == [A]
    assert tr.normalized_score == pytest.approx(tr.score / (1002 / 1001))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_size_one_is_exactly_greedy(seed):
    model = random_model(seed)
    src, lengths = sources([5, 2, 7, 4], seed=seed)
    greedy = greedy_search(model, src, lengths, max_output_length=8, return_attention=True)
    beam = beam_search(model, src, lengths, beam_size=1, max_output_length=8, return_attention=True)
    assert beam == greedy  # tokens, float32 scores and attention, bit for bit
    assert len({tuple(t.tokens) for t in greedy}) > 1  # the sentences really differ


@pytest.mark.parametrize(("beam_size", "alpha", "beta"), [(1, 1.0, 0.0), (3, 1.0, 0.0), (4, 0.6, 5.0), (2, 0.0, 0.0)])
def test_batch_equals_one_sentence_at_a_time(beam_size, alpha, beta):
    model = random_model(3)
    src, lengths = sources([6, 2, 4, 3, 6], seed=4)
    batched = beam_search(model, src, lengths, beam_size, 8, alpha, beta, return_attention=True)
    for i, n in enumerate(lengths.tolist()):
        (alone,) = beam_search(model, src[i : i + 1, :n], lengths[i : i + 1], beam_size, 8, alpha, beta,
                               return_attention=True)
        assert batched[i].tokens == alone.tokens
        assert batched[i].score == pytest.approx(alone.score, abs=1e-5)
        assert batched[i].normalized_score == pytest.approx(alone.normalized_score, abs=1e-5)
        assert torch.allclose(torch.tensor(batched[i].attention), torch.tensor(alone.attention), atol=1e-6)


def test_greedy_batch_equals_one_sentence_at_a_time():
    model = random_model(5)
    src, lengths = sources([3, 7, 2], seed=6)
    batched = greedy_search(model, src, lengths, max_output_length=8)
    for i, n in enumerate(lengths.tolist()):
        (alone,) = greedy_search(model, src[i : i + 1, :n], lengths[i : i + 1], max_output_length=8)
        assert batched[i].tokens == alone.tokens
        assert batched[i].score == pytest.approx(alone.score, abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 2, 5])
def test_scores_and_attention_match_teacher_forcing(beam_size):
    model = random_model(7)
    src, lengths = sources([5, 3, 8, 2], seed=8)
    out = beam_search(model, src, lengths, beam_size, max_output_length=8, length_penalty_alpha=0.8,
                      return_attention=True)
    for i, tr in enumerate(out):
        ids = emitted(tr, 8)
        score, rows = replay(model, src[i], int(lengths[i]), ids)
        assert tr.score == pytest.approx(score, abs=1e-4)
        assert tr.normalized_score == pytest.approx(score / length_penalty(len(ids), 0.8, 0.0), abs=1e-4)
        assert tr.attention is not None
        assert len(tr.attention) == len(ids) and all(len(r) == lengths[i] for r in tr.attention)
        assert torch.allclose(torch.tensor(tr.attention), torch.tensor(rows), atol=1e-5)
        assert torch.allclose(torch.tensor(tr.attention).sum(1), torch.ones(len(ids)), atol=1e-5)


def exhaustive_best(model: Seq2Seq, src: Tensor, length: int, max_output_length: int,
                    alpha: float) -> tuple[list[int], float]:
    """The best of every sequence the model can emit for one sentence, by teacher forcing them all."""
    vocab = model.decoder.embedding.num_embeddings
    allowed = [v for v in range(vocab) if v not in (PAD_ID, BOS_ID, EOS_ID)]
    seqs = [[*body, EOS_ID] for n in range(max_output_length) for body in itertools.product(allowed, repeat=n)]
    seqs += [list(body) for body in itertools.product(allowed, repeat=max_output_length)]
    trg_in = torch.tensor([[BOS_ID, *ids[:-1]] + [PAD_ID] * (max_output_length - len(ids)) for ids in seqs])
    trg_out = torch.tensor([ids + [PAD_ID] * (max_output_length - len(ids)) for ids in seqs])
    with torch.no_grad():
        logp = torch.log_softmax(model(src[None, :length].expand(len(seqs), -1),
                                       torch.full((len(seqs),), length), trg_in).double(), -1)
    picked = logp.gather(2, trg_out[..., None])[..., 0].masked_fill(trg_out == PAD_ID, 0.0)
    scores = picked.sum(1)
    n = torch.tensor([len(ids) for ids in seqs])
    best = int((scores / length_penalty(n, alpha, 0.0)).argmax())
    ids = seqs[best]
    return (ids[:-1] if ids[-1] == EOS_ID else ids), float(scores[best])


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_beam_wide_enough_to_hold_everything_is_exhaustive(alpha):
    # 5 emittable ids, 4 steps: at most 1+5+25+125 = 156 hypotheses ever need a slot.
    model = random_model(19)
    src, lengths = sources([4, 6, 2], seed=20)
    out = beam_search(model, src, lengths, beam_size=156, max_output_length=4, length_penalty_alpha=alpha)
    for i, tr in enumerate(out):
        assert_same_as(tr, exhaustive_best(model, src[i], int(lengths[i]), 4, alpha))


def reference_beam(model: Seq2Seq, src: Tensor, length: int, beam_size: int, max_output_length: int,
                   alpha: float, beta: float) -> tuple[list[int], float]:
    """The same search written the slow, obvious way for one sentence: hypotheses as Python lists,
    every prefix scored from scratch by teacher forcing, candidates sorted by normalized score."""
    def next_logp(ids: list[int]) -> list[float]:
        with torch.no_grad():
            logits = model(src[None, :length], torch.tensor([length]), torch.tensor([[BOS_ID, *ids]]))
        return torch.log_softmax(logits[0, -1].double(), -1).tolist()

    lp = lambda n: length_penalty(n, alpha, beta)  # noqa: E731
    beam = [(0.0, [], False)]  # (score, ids emitted, finished)
    best = (-math.inf, [], 0.0)  # (normalized score, ids, score)
    for t in range(max_output_length):
        candidates = []
        for score, ids, done in beam:
            if done:
                candidates.append((score / lp(len(ids)), score, ids, True))
                continue
            for tok, logp in enumerate(next_logp(ids)):
                if tok not in (PAD_ID, BOS_ID):
                    candidates.append(((score + logp) / lp(t + 1), score + logp, [*ids, tok], tok == EOS_ID))
        candidates.sort(key=lambda c: -c[0])
        last = t == max_output_length - 1
        for key, score, ids, done in candidates[:beam_size]:
            if len(ids) == t + 1 and (done or last) and key > best[0]:
                best = (key, ids, score)
        beam = [(score, ids, done) for _, score, ids, done in candidates[:beam_size]]
        live = [score for score, _, done in beam if not done]
        if not live or best[0] >= max(live) / lp(max_output_length):
            break
    ids = best[1]
    return (ids[:-1] if ids and ids[-1] == EOS_ID else ids), best[2]


@pytest.mark.parametrize(("beam_size", "alpha", "beta"), [(2, 1.0, 0.0), (3, 0.6, 2.0), (4, 1.0, 0.0), (3, 0.0, 0.0)])
def test_matches_a_plain_python_reference(beam_size, alpha, beta):
    # Several models: how finished and live hypotheses interleave in the beam varies a lot between them.
    for seed in range(20, 30):
        model = random_model(seed)
        src, lengths = sources([3, 6, 2, 5], seed=seed + 1)
        out = beam_search(model, src, lengths, beam_size, 6, alpha, beta)
        for i, tr in enumerate(out):
            assert_same_as(tr, reference_beam(model, src[i], int(lengths[i]), beam_size, 6, alpha, beta))


def test_finished_hypotheses_keep_their_slot():
    # Step 1 ranks B B (-0.51 per token) > A </s> (-0.69) > A A (-0.75): with 2 slots A A is dropped,
    # although A A </s> (-0.50) would have won. That is the Sockeye search, not exhaustive search.
    table = crafted_table({
        (0, BOS_ID): {A: 0.5, B: 0.4},
        (1, A): {EOS_ID: 0.5, A: 0.45},
        (1, B): {B: 0.9},
        (2, A): {EOS_ID: 0.99},
        (2, B): {EOS_ID: 0.5, B: 0.4},
    })
    (tr,) = beam_search(make_model(table), *ONE_SRC, beam_size=2, max_output_length=6)
    assert tr.tokens == [B, B]
    assert tr.score == pytest.approx(math.log(0.4 * 0.9 * 0.5), abs=1e-5)
    assert brute_force(table, 6, alpha=1.0)[0] == [A, A]
    (wide,) = beam_search(make_model(table), *ONE_SRC, beam_size=3, max_output_length=6)
    assert wide.tokens == [A, A]


def test_stops_once_the_best_finished_hypothesis_cannot_be_beaten():
    # "</s>" first (0.9) already beats anything A (0.05) can become, even normalized by 10 tokens.
    table = crafted_table({(0, BOS_ID): {EOS_ID: 0.9, A: 0.05}})
    for alpha in (0.0, 1.0):
        model = make_model(table)
        (tr,) = beam_search(model, *ONE_SRC, beam_size=2, max_output_length=10, length_penalty_alpha=alpha)
        assert tr.tokens == [] and tr.score == pytest.approx(math.log(0.9), abs=1e-5)
        assert [pos for pos, _, _ in model.decoder.calls] == [0]


def test_never_emits_pad_or_bos():
    table = random_table(11)
    table[:, :, PAD_ID] += 8.0  # the model's favourite tokens are the forbidden ones
    table[:, :, BOS_ID] += 6.0
    model = random_model(11, table)
    src, lengths = sources([4, 2, 6], seed=12)
    results = [greedy_search(model, src, lengths, max_output_length=7)]
    results += [beam_search(model, src, lengths, k, max_output_length=7) for k in (1, 3, 6)]
    for out in results:
        for i, tr in enumerate(out):
            assert PAD_ID not in tr.tokens and BOS_ID not in tr.tokens and EOS_ID not in tr.tokens
            # Masking happens after the softmax: scores are still the model's own log-probabilities.
            assert tr.score == pytest.approx(replay(model, src[i], int(lengths[i]), emitted(tr, 7))[0], abs=1e-4)


def test_beam_wider_than_the_vocabulary():
    # Only <unk>, </s> and A can be emitted: 3 candidates at step 0 for a beam of 6.
    table = crafted_table({(0, BOS_ID): {A: 0.7, UNK_ID: 0.2}, (1, A): {A: 0.6, EOS_ID: 0.3}}, vocab=5)
    (tr,) = beam_search(make_model(table), *ONE_SRC, beam_size=6, max_output_length=4)
    assert_same_as(tr, brute_force(table, 4, alpha=1.0))
    assert tr.score > -math.inf and PAD_ID not in tr.tokens and BOS_ID not in tr.tokens


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_max_output_length_is_respected(search):
    table = random_table(13)
    table[:, :, EOS_ID] = -30.0  # </s> practically never wins: hypotheses run to the limit
    model = random_model(13, table)
    src, lengths = sources([3, 5], seed=14)
    for limit in (1, 4):
        if search == "greedy":
            out = greedy_search(model, src, lengths, limit, return_attention=True)
        else:
            out = beam_search(model, src, lengths, 3, limit, return_attention=True)
        for i, tr in enumerate(out):
            assert len(tr.tokens) == limit  # cut at the limit, no </s> appended
            assert tr.attention is not None and len(tr.attention) == limit
            score, rows = replay(model, src[i], int(lengths[i]), tr.tokens)
            assert tr.score == pytest.approx(score, abs=1e-4)
            assert tr.normalized_score == pytest.approx(score / limit, abs=1e-4)
            assert torch.allclose(torch.tensor(tr.attention), torch.tensor(rows), atol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_per_sentence_limits_equal_each_sentence_alone_with_its_own_limit(beam_size):
    table = random_table(21)
    table[:, :, EOS_ID] = -3.0  # </s> is likely but not certain: some hypotheses hit their limit
    model = random_model(21, table)
    src, lengths = sources([5, 2, 6, 3], seed=22)
    limits = torch.tensor([2, 7, 1, 4])
    for search in ("greedy", "beam"):
        if search == "greedy":
            batched = greedy_search(model, src, lengths, limits, return_attention=True)
        else:
            batched = beam_search(model, src, lengths, beam_size, limits, return_attention=True)
        for i, n in enumerate(lengths.tolist()):
            limit = int(limits[i])
            one = (src[i:i + 1, :n], lengths[i:i + 1])
            (alone,) = (greedy_search(model, *one, limit, return_attention=True) if search == "greedy"
                        else beam_search(model, *one, beam_size, limit, return_attention=True))
            assert batched[i].tokens == alone.tokens
            assert batched[i].score == pytest.approx(alone.score, abs=1e-5)
            assert len(emitted(batched[i], limit)) <= limit


def test_output_length_limits_follow_the_source_length():
    lengths = torch.tensor([1, 4, 10, 60])
    assert output_length_limits(lengths, 1.5, 61).tolist() == [2, 6, 15, 61]
    assert output_length_limits(lengths, 0.1, 61).tolist() == [1, 1, 1, 6]
    assert output_length_limits(torch.tensor([3]), 2.0, 100).tolist() == [6]  # exact products are not rounded up
    assert length_factor((1.1, 0.2)) == pytest.approx(1.5)
    assert length_factor((1.1, 0.2), num_stds=0) == pytest.approx(1.1)
    assert length_factor(None) == length_factor((1.1, 0.2), num_stds=-1) == 2.0
    with pytest.raises(ValueError, match="one max_output_length per sentence"):
        greedy_search(random_model(3), *sources([2, 3], seed=1), torch.tensor([4]))
    with pytest.raises(ValueError, match="must be >= 1"):
        beam_search(random_model(3), *sources([2, 3], seed=1), 2, torch.tensor([4, 0]))


def test_max_output_length_counts_the_end_of_sentence():
    model = random_model(15)
    src, lengths = sources([4, 6, 2, 5], seed=16)
    for limit in (2, 3, 5):
        for tr in beam_search(model, src, lengths, 4, limit) + greedy_search(model, src, lengths, limit):
            assert len(emitted(tr, limit)) <= limit


def test_finished_sentences_leave_the_batch_and_search_stops_early():
    table = torch.zeros(1, 7, 7)
    model = make_model(table, length_eos=30.0)  # output length = source length, nothing else matters
    src, lengths = sources([2, 5], seed=17)
    model.decoder.calls.clear()
    out = beam_search(model, src, lengths, beam_size=3, max_output_length=50)
    assert [len(emitted(tr, 50)) for tr in out] == [2, 5]
    assert [rows for _, rows, _ in model.decoder.calls] == [6, 6, 3, 3, 3]
    model.decoder.calls.clear()
    out = greedy_search(model, src, lengths, max_output_length=50)
    assert [len(emitted(tr, 50)) for tr in out] == [2, 5]
    assert [pos for pos, _, _ in model.decoder.calls] == [0, 1, 2, 3, 4]


def test_runs_in_inference_mode_and_leaves_training_flag_alone():
    model = make_model(GREEDY_TRAP).train()
    model.decoder.calls.clear()
    beam_search(model, *ONE_SRC, beam_size=2, max_output_length=3)
    greedy_search(model, *ONE_SRC, max_output_length=3)
    assert model.training and model.decoder.training
    assert model.decoder.calls and all(inference for _, _, inference in model.decoder.calls)


def test_empty_batch():
    model = make_model(GREEDY_TRAP)
    src, lengths = torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    assert beam_search(model, src, lengths, 3, 5) == []
    assert greedy_search(model, src, lengths, 5) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beam_size": 0}, "beam_size"),
        ({"max_output_length": 0}, "max_output_length"),
        ({"length_penalty_alpha": -0.5}, "length_penalty"),
        ({"length_penalty_beta": -1.0}, "length_penalty"),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = {"beam_size": 2, "max_output_length": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        beam_search(make_model(GREEDY_TRAP), *ONE_SRC, **args)


def test_greedy_rejects_mismatched_inputs():
    src, _ = sources([3, 4])
    with pytest.raises(ValueError, match="lengths"):
        greedy_search(make_model(GREEDY_TRAP), src, torch.tensor([3]), 5)


def test_works_under_bfloat16_autocast():
    # bf16 logits are coarse (exact ties are common): beam size 1 must still match greedy bit for bit.
    model = random_model(23)
    src, lengths = sources([5, 2, 7], seed=24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        greedy = greedy_search(model, src, lengths, 8, return_attention=True)
        beam1 = beam_search(model, src, lengths, 1, 8, return_attention=True)
        beam = beam_search(model, src, lengths, 4, 8, return_attention=True)
    assert beam1 == greedy
    for i, tr in enumerate(beam):
        assert math.isfinite(tr.score) and PAD_ID not in tr.tokens and BOS_ID not in tr.tokens
        assert tr.attention is not None and len(tr.attention[0]) == lengths[i]
