"""The LoRA method owns LoRA's layout; the LoRA-aware algorithms and metrics follow it.

Checked on a real peft model whose LoRA covers a linear layer and an embedding, with DoRA's
magnitude vectors: every factor kind peft has.
"""

import pytest
import torch

R = 4


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """The trainable state of a tiny BERT with DoRA on ``query`` and the word embeddings."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        vocab_size=50,
    )  # fmt: skip
    torch.manual_seed(0)
    lora = LoraConfig(r=R, target_modules=["query", "word_embeddings"], use_dora=True)
    model = get_peft_model(BertModel(config), lora)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    gen = torch.Generator().manual_seed(1)
    return {n: t + torch.randn(t.shape, generator=gen) for n, t in params.items()}  # B != 0


def test_the_method_names_every_factor_peft_has() -> None:
    from peft.tuners.lora import LoraLayer

    from fedpet.methods.lora import FACTORS

    factors = {*FACTORS, *FACTORS.values()}
    assert factors == set(LoraLayer.adapter_layer_names) - {"lora_magnitude_vector"}


def test_factor_pairs_and_rank_axes_cover_embeddings_and_dora(state) -> None:
    from fedpet.methods.lora import factor_pairs, lora_factor, rank_axis

    pairs = factor_pairs(state)
    assert len(pairs) == 2 and all(a in state and b in state for a, b in pairs)
    assert any("lora_embedding_A" in a and "lora_embedding_B" in b for a, b in pairs)
    for name, t in state.items():
        axis = rank_axis(name)
        if "magnitude" in name:
            assert axis is None and lora_factor(name) is None
        else:
            assert t.shape[axis] == R


def test_a_rank_cut_and_ffa_lora_follow_the_layout(state) -> None:
    from fedpet.algorithms.ffa_lora import FfaLora
    from fedpet.algorithms.ranks import truncate
    from fedpet.config import AlgorithmOptions

    cut = truncate(state, 2)
    for name, t in cut.items():
        kept = state[name]
        if "magnitude" in name:
            assert torch.equal(t, kept)
        elif "_A" in name.split(".")[-2] or "_A." in name:
            assert torch.equal(t, kept[:2])
        else:
            assert torch.equal(t, kept[:, :2])
    ffa = FfaLora(AlgorithmOptions())
    frozen = {n for n in state if not ffa.trainable(n)}
    assert len(frozen) == 2 and all("_A" in n for n in frozen)


def test_flexlora_averages_products_of_every_factor_pair(state) -> None:
    from fedpet.algorithms import Aggregate
    from fedpet.algorithms.flexlora import FlexLora
    from fedpet.algorithms.ranks import RankedOptions
    from fedpet.methods.lora import factor_pairs

    algorithm = FlexLora(RankedOptions())
    gen = torch.Generator().manual_seed(2)
    update = {n: 0.1 * torch.randn(t.shape, generator=gen) for n, t in state.items()}
    aggregate = Aggregate()
    aggregate.add(algorithm.server_view(state, update, 0), 3.0)
    new, _ = algorithm.server_update(state, {}, aggregate)
    assert {n: t.shape for n, t in new.items()} == {n: t.shape for n, t in state.items()}
    for a, b in factor_pairs(state):  # one client of full rank: its product, exactly
        trained = (state[b] + update[b]) @ (state[a] + update[a])
        assert torch.allclose(new[b] @ new[a], trained, atol=1e-4)
    for name in state:
        if "magnitude" in name:  # averaged as FedAvg does
            assert torch.allclose(new[name], state[name] + update[name])


def test_the_aggregation_error_pairs_the_method_s_factors(state) -> None:
    from fedpet.methods.lora import factor_pairs
    from fedpet.runtime.lora_error import LoraError

    same = LoraError(factor_pairs(state), {})
    same.add(state, 1.0)
    same.add(state, 2.0)
    assert same.error() == pytest.approx(0.0, abs=1e-12)
    # the same products B A from B / 3 and 3 A: the factors' means give (2/3 B)(2 A)
    scaled = {n: t / 3 if "_B" in n else 3 * t for n, t in state.items()}
    differ = LoraError(factor_pairs(state), {})
    differ.add(state, 1.0)
    differ.add(scaled, 1.0)
    assert differ.error() == pytest.approx(1 / 3, rel=1e-6)
