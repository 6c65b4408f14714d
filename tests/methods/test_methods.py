import pytest
import torch
from helpers import refused

from fedpet.errors import FedpetError
from fedpet.experiment import prepare
from fedpet.methods import METHODS
from fedpet.model import build_model
from fedpet.state import trainable_parameters

HEAD = {"head.weight", "head.bias"}
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def method_names(tiny_config, method: str, **extra: object) -> tuple[set[str], int, int]:
    model, _ = build_model(tiny_config(**{"method.name": method, **extra}), num_labels=2)
    params = trainable_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    return set(params), sum(p.numel() for p in params.values()), total


def test_registry_has_every_method() -> None:
    expected = {"full", "lora", "lora-sb", "adapter", "prefix", "bitfit", "prompt", "ia3"}
    assert set(METHODS) == expected


def test_full_trains_everything_but_the_dropped_pooler(tiny_config) -> None:
    names, n, total = method_names(tiny_config, "full")
    assert n == total
    assert names >= HEAD and not any("pooler" in x for x in names)


def test_lora_trains_only_lora_matrices_on_query_value_and_the_head(tiny_config) -> None:
    names, n, _ = method_names(tiny_config, "lora", **{"method.r": 4})
    body = names - HEAD
    assert names >= HEAD
    assert body and all("lora_A" in x or "lora_B" in x for x in body)
    assert {x.split(".")[-4] for x in body} == {"query", "value"}
    # 2 layers x 2 modules x (A: 4x32 + B: 32x4) + head 32*2+2
    assert n == 2 * 2 * (4 * 32 + 32 * 4) + 66


def test_lora_target_modules_option(tiny_config) -> None:
    names, _, _ = method_names(tiny_config, "lora", **{"method.target_modules": ["key"]})
    assert {x.split(".")[-4] for x in names - HEAD} == {"key"}


def test_bitfit_trains_only_biases_and_the_head(tiny_config) -> None:
    names, _, _ = method_names(tiny_config, "bitfit")
    assert all(x.endswith("bias") for x in names - HEAD) and len(names - HEAD) > 10


@pytest.mark.parametrize("kind,per_layer", [("pfeiffer", 1), ("houlsby", 2)])
def test_adapter_kinds_and_bottleneck(tiny_config, kind: str, per_layer: int) -> None:
    names, n, _ = method_names(
        tiny_config, "adapter", **{"method.adapter": kind, "method.reduction_factor": 4}
    )
    body = names - HEAD
    assert body and all("adapters.fedpet" in x for x in body)
    # bottleneck 32/4 = 8: down 32*8+8, up 8*32+32 per adapter; 2 layers
    assert n == 2 * per_layer * (32 * 8 + 8 + 8 * 32 + 32) + 66


@pytest.mark.parametrize("method,size", [("prefix", 2 * 2 * 32), ("prompt", 32)])
def test_virtual_token_methods(tiny_config, method: str, size: int) -> None:
    _, n, _ = method_names(tiny_config, method, **{"method.num_virtual_tokens": 5})
    assert n == 5 * size + 66


def test_ia3_trains_scaling_vectors(tiny_config) -> None:
    names, _, _ = method_names(tiny_config, "ia3")
    assert names - HEAD and all("ia3_l" in x for x in names - HEAD)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_changes_the_logits_through_its_parameters(tiny_config, method: str) -> None:
    cfg = tiny_config(**{"method.name": method, "train.dropout": 0.0})
    model = prepare(cfg).model if METHODS[method].from_data else build_model(cfg, 2)[0]
    model.eval()
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102]])
    mask = torch.ones_like(ids)
    before = model(ids, mask).detach()
    torch.manual_seed(0)
    with torch.no_grad():  # random, not constant: LayerNorm would cancel a constant shift
        for name, p in trainable_parameters(model).items():
            if not name.startswith("head."):
                p.add_(torch.randn_like(p))
    assert not torch.allclose(model(ids, mask), before)


def test_same_seed_same_initial_state_other_seed_differs(tiny_config) -> None:
    def state(seed: int) -> dict[str, torch.Tensor]:
        model, _ = build_model(tiny_config(seed=seed), 2)
        return {k: v.detach().clone() for k, v in trainable_parameters(model).items()}

    a, b, c = state(1), state(1), state(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_other_encoder_families(tmp_path, tiny_config, family: str, method: str) -> None:
    from transformers import (
        AutoTokenizer,
        DistilBertConfig,
        DistilBertModel,
        RobertaConfig,
        RobertaModel,
    )

    from fedpet.model import model_path

    tokenizer = AutoTokenizer.from_pretrained(model_path("all-MiniLM-L6-v2"))
    small = {"vocab_size": tokenizer.vocab_size, "max_position_embeddings": 130}
    if family == "roberta":
        config = RobertaConfig(pad_token_id=0, **TINY, **small)
        RobertaModel(config).save_pretrained(tmp_path)
    else:
        config = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **small)
        DistilBertModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg = tiny_config(**{"model": str(tmp_path), "method.name": method, "train.dropout": 0.0})
    if (family, method) == ("distilbert", "prefix"):
        with pytest.raises(FedpetError, match="takes no past key values"):
            build_model(cfg, 3)
        return
    model, _ = build_model(cfg, 3)
    names = set(trainable_parameters(model))
    assert names >= HEAD and len(names) > 2
    logits = model(torch.tensor([[101, 2023, 102]]), torch.ones(1, 3, dtype=torch.long))
    assert logits.shape == (1, 3)


def _saved(path, model) -> str:
    from transformers import AutoTokenizer

    from fedpet.model import model_path

    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(model_path("all-MiniLM-L6-v2")).save_pretrained(path)
    return str(path)


def test_a_method_that_finds_nothing_to_train_is_refused(tmp_path, tiny_config, capsys) -> None:
    from transformers import ModernBertConfig, ModernBertModel

    # an encoder without a single bias term: BitFit would train the head alone
    bias = {"attention_bias": False, "mlp_bias": False, "norm_bias": False}
    config = ModernBertConfig(vocab_size=30522, pad_token_id=0, **TINY, **bias)
    model = _saved(tmp_path / "no-bias", ModernBertModel(config))
    with pytest.raises(FedpetError, match=r"'bitfit' is not allowed with model .*: it adds or"):
        build_model(tiny_config(model=model, **{"method.name": "bitfit"}), 2)
    # LoRA adds its matrices: it trains, on the layers it is told to adapt
    with pytest.raises(FedpetError, match="peft knows no default LoRA targets for it"):
        build_model(tiny_config(model=model), 2)
    with pytest.raises(FedpetError, match=r"\['nope'\] is not allowed .*not found in the base"):
        build_model(tiny_config(model=model, **{"method.target_modules": ["nope"]}), 2)
    assert build_model(tiny_config(model=model, **{"method.target_modules": ["Wqkv"]}), 2)
    out = tmp_path / "run"
    args = ["run", "--model", model, "--method", "bitfit", "--out", str(out)]
    err = refused([*args, "--max-train-samples", "64", "--clients", "2"], capsys, keep=tmp_path)
    assert "adds or unfreezes no parameter" in err
