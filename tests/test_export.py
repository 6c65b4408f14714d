"""fedpet export / predict / evaluate: a run's model in its library's format, and back."""

import json
from pathlib import Path

import pytest
import torch
from helpers import run_argv
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
        return loaded.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


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


@pytest.mark.parametrize(
    ("method", "kind"),
    [("adapter", "adapters"), ("bitfit", "transformers"), ("prompt", "peft"), ("ia3", "peft")],
)
def test_each_library_format_round_trips(
    tiny_model_dir: Path, tmp_path: Path, method: str, kind: str
) -> None:
    run = _run(tiny_model_dir, tmp_path / "run", method)
    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export), "--round", "last"]) == 0
    assert json.loads((export / "fedpet.json").read_text())["format"] == kind
    by_run = _logits(open_model(run, "last"), TEXTS)
    torch.testing.assert_close(_logits(open_model(export), TEXTS), by_run)


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
    assert main(["predict", str(tmp_path), "--text", "x"]) == 2
    assert "neither a run directory (no config.yaml) nor an export" in capsys.readouterr().err
    run = _run(tiny_model_dir, tmp_path / "run")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["export", str(run), "--out", str(tmp_path / "full")]) == 2
    assert "is not empty" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,meh\n")
    assert main(["evaluate", str(run), "--file", str(bad)]) == 2
    assert "labels ['meh'] are not the model's" in capsys.readouterr().err
