"""fedpet export / predict / evaluate: a run's model in its library's format, and back."""

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import refused, run_argv
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from fedpet.cli import main
from fedpet.export import open_model

TEXTS = ["a gorgeous, witty film", "dull and far too long", "it has its moments"]


def _run(model: Path, out: Path, method: str = "lora") -> Path:
    assert main(run_argv(model, out, "--method", method, samples=48)) == 0
    return out


def _logits(loaded, texts: list[str]) -> torch.Tensor:
    batch = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(batch["input_ids"], batch["attention_mask"])  # as predict does


def test_a_lora_export_loads_with_peft_alone_and_gives_fedpets_logits(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    run = _run(tiny_model_dir, tmp_path / "run")
    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    meta = json.loads((export / "fedpet.json").read_text())
    assert meta["format"] == "peft" and meta["labels"] == ["rotten", "fresh"]
    summary = json.loads((run / "summary.json").read_text())
    assert meta["round"] == summary["best_round"]
    assert meta["test_metric"] == summary["test_metric"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {
        p.name for p in export.iterdir()
    }
    # peft and transformers only: the encoder, then fedpet's documented pooling and head
    encoder = PeftModel.from_pretrained(AutoModel.from_pretrained(str(tiny_model_dir)), export)
    encoder.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(export))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    assert meta["pooling"] == "mean" and not meta["normalize"]
    head = load_file(str(export / "head.safetensors"))
    by_peft = pooled @ head["weight"].T + head["bias"]
    by_fedpet = _logits(open_model(run), TEXTS)
    torch.testing.assert_close(by_peft, by_fedpet, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(open_model(export), TEXTS), by_fedpet)


FORMATS = {
    "lora": "peft",
    "prefix": "peft",
    "prompt": "peft",
    "ia3": "peft",
    "adapter": "adapters",
    "bitfit": "transformers",
    "full": "transformers",
}


def _card_logits(export: Path, texts: list[str]) -> torch.Tensor:
    """The logits of the model card's own recipe, run as written (in a namespace of its own)."""
    card = (export / "README.md").read_text()
    [code] = re.findall(r"```python\n(.*?)```", card, re.S)
    assert "texts = [" in code and "print(" in code
    code = re.sub(r"texts = \[.*?\]\n", f"texts = {texts!r}\n", code)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "README.md", "exec"), namespace)
    return namespace["logits"]


@pytest.mark.parametrize(
    ("method", "family"),
    [*((m, "bert") for m in FORMATS), ("lora", "gpt2"), ("prompt", "llama")],
)
def test_every_method_s_export_round_trips_and_its_card_s_recipe_gives_fedpet_s_logits(
    tiny_model_dir: Path, tiny_decoder_dirs, tmp_path: Path, method: str, family: str
) -> None:
    model = tiny_model_dir if family == "bert" else tiny_decoder_dirs[family]
    run = _run(model, tmp_path / "run", method)
    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export), "--round", "last"]) == 0
    meta = json.loads((export / "fedpet.json").read_text())
    assert meta["format"] == FORMATS[method]
    assert meta["pooling"] == ("mean" if family == "bert" else "last")
    assert meta["leading_positions"] == (10 if method == "prompt" else 0)
    files = {p.name for p in export.iterdir()}
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files), files  # no pickles
    by_run = _logits(open_model(run, "last"), TEXTS)
    torch.testing.assert_close(_logits(open_model(export), TEXTS), by_run)
    torch.testing.assert_close(_card_logits(export, TEXTS), by_run, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def _lora_export(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run's export, made once: each damage test breaks a copy of it."""
    root = tmp_path_factory.mktemp("lora-export")
    run = _run(tiny_model_dir, root / "run")
    assert main(["export", str(run), "--out", str(root / "export")]) == 0
    return root / "export"


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda e: (e / "head.safetensors").unlink(), "head.safetensors cannot be read"),
        (lambda e: (e / "head.safetensors").write_text("x"), "head.safetensors cannot be read"),
        (lambda e: (e / "adapter_model.safetensors").unlink(), "no adapter_model.safetensors"),
        (lambda e: (e / "adapter_config.json").write_text("{"), "its peft encoder cannot be"),
        (lambda e: _edit_labels(e, ["rotten", "fresh", "meh"]), "were the labels edited?"),
        (lambda e: _edit_labels(e, "rf"), "fedpet.json cannot be read (ValueError: labels"),
        (lambda e: (e / "tokenizer.json").unlink() or (e / "vocab.txt").unlink(), "tokenizer"),
    ],
)
def test_a_damaged_export_is_refused_in_one_line(
    _lora_export: Path, tmp_path: Path, capsys, damage, says: str
) -> None:
    export = tmp_path / "export"
    shutil.copytree(_lora_export, export)
    damage(export)
    capsys.readouterr()
    err = refused(["predict", str(export), "--text", "fine"], capsys, keep=tmp_path)
    assert says in err, err


def _edit_labels(export: Path, labels) -> None:
    meta = json.loads((export / "fedpet.json").read_text())
    (export / "fedpet.json").write_text(json.dumps({**meta, "labels": labels}))


def test_predict_and_evaluate(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    run = _run(tiny_model_dir, tmp_path / "run")
    capsys.readouterr()
    argv = ["predict", str(run)]
    assert main([*argv, *(x for t in TEXTS for x in ("--text", t))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in lines] == TEXTS
    assert {line.split("\t")[0] for line in lines} <= {"rotten", "fresh"}
    assert all(0.5 <= float(line.split("\t")[1]) <= 1 for line in lines)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "pred.jsonl"
    assert main([*argv, "--file", str(texts), "--out", str(out)]) == 0
    rows = [json.loads(r) for r in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    assert all(r["p_rotten"] + r["p_fresh"] == pytest.approx(1, abs=1e-3) for r in rows)
    # evaluate: the run's own test split, as the run cut it, gives the run's test figure
    assert main(["evaluate", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    said = capsys.readouterr().out
    assert f"accuracy {summary['test_accuracy']:.4f}" in said
    assert f"{summary['test_macro_f1']:.4f}" in said
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\n" + "".join(f'"{t}",fresh\n' for t in TEXTS))
    assert main(["evaluate", str(run), "--file", str(labelled)]) == 0
    fresh = sum(line.split("\t")[0] == "fresh" for line in lines)
    assert f"3 examples · accuracy {fresh / 3:.4f}" in capsys.readouterr().out


def test_bad_model_input_is_one_line(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    assert "neither a run directory (no config.yaml) nor an export" in refused(
        ["predict", str(tmp_path), "--text", "x"], capsys, keep=tmp_path
    )
    run = _run(tiny_model_dir, tmp_path / "run")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "is not empty" in refused(
        ["export", str(run), "--out", str(tmp_path / "full")], capsys, keep=tmp_path
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,meh\n")
    assert "labels ['meh'] are not the model's" in refused(
        ["evaluate", str(run), "--file", str(bad)], capsys, keep=tmp_path
    )


RULES = {
    "ffa-lora": ("--algorithm", "ffa-lora"),
    "flexlora": ("--algorithm", "flexlora", "--set", "algorithm.ranks=[4,8]"),
    "hetlora": ("--algorithm", "hetlora", "--set", "algorithm.ranks=[4,8]"),
    "rolora": ("--algorithm", "rolora"),
    "fedsvd": ("--algorithm", "fedsvd"),
    "fedex-lora": ("--algorithm", "fedex-lora"),
    "flora": ("--algorithm", "flora"),
    "lora-sb": ("--method", "lora-sb"),
}
MERGED = {"fedex-lora", "flora", "lora-sb"}  # saved as the full encoder, weights merged


@pytest.mark.parametrize("rule", RULES)
def test_a_lora_rule_s_export_gives_the_run_s_model(
    tiny_model_dir: Path, tmp_path: Path, rule: str, capsys
) -> None:
    from fedpet.experiment import prepare
    from fedpet.export.loading import cpu_config
    from fedpet.rundir import load_checkpoint

    run, export = tmp_path / "run", tmp_path / "export"
    argv = run_argv(tiny_model_dir, run, *RULES[rule], "--rounds", "3", samples=48)
    assert main(argv) == 0
    assert main(["export", str(run), "--out", str(export)]) == 0
    meta = json.loads((export / "fedpet.json").read_text())
    assert meta["format"] == ("transformers" if rule in MERGED else "peft")
    card = (export / "README.md").read_text()
    assert ("base weights" in card) == (rule in ("fedex-lora", "flora"))
    # the best state as the run evaluated it: the shared model, LoRA and corrections applied
    exp = prepare(cpu_config(run))
    exp.load_state(load_checkpoint(run).tensors["best"])
    batch = open_model(export).tokenizer(TEXTS, padding=True, return_tensors="pt")
    exp.model.eval()
    with torch.no_grad():
        by_run = exp.model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(_logits(open_model(export), TEXTS), by_run, rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert main(["evaluate", str(export)]) == 0  # the run's test split: its test figure
    summary = json.loads((run / "summary.json").read_text())
    assert f"accuracy {summary['test_accuracy']:.4f}" in capsys.readouterr().out
