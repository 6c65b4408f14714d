"""The configuration reference: written from the fields' declarations, and current."""

import pytest

from fedpet.cli.pages import rendered
from fedpet.reference import FLAGS, REPO, cell, field_docs, flag_help, lookup


def test_the_generated_reference_pages_are_current() -> None:
    # after changing a field's declaration or a flag: python -m fedpet.cli.pages
    for path, text in rendered().items():
        assert (REPO / path).read_text(encoding="utf-8") == text, path


def test_the_cli_page_lists_every_command_and_each_run_flag_with_its_field() -> None:
    from fedpet.cli import build_parser

    page = rendered()["docs/reference/cli.md"]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert [x for x in page.splitlines() if x.startswith("## ")] == [
        f"## `fedpet {name}`" for name in sub.choices
    ]
    run = page[page.index("## `fedpet run`") : page.index("## `fedpet study`")]
    for flag, field in FLAGS.items():
        assert f"| `{flag}` | `{field}` | {cell(flag_help(flag))} |" in run
    assert "| `--resume RUN_DIR` |" in run and "| `--set KEY=VALUE` |" in run


def test_every_field_has_help_and_every_flag_says_its_field_s_default() -> None:
    docs = field_docs()
    assert all(d.help for d in docs), [d.dotted for d in docs if not d.help]
    assert len({d.dotted for d in docs}) == len(docs)  # no field declared twice
    assert lookup("method.r").owners == ("lora", "lora-sb")  # one declaration, inherited
    assert lookup("algorithm.ranks").owners == ("hetlora", "flexlora", "flora")
    assert set(lookup("method.num_virtual_tokens").owners) == {"prefix", "prompt"}
    assert lookup("algorithm.beta2").owners == ("fedadam", "fedyogi", "fedadagrad")
    for flag, field in FLAGS.items():
        assert flag_help(flag).endswith(f"(default {lookup(field).shown_default})")
    assert "adamw, sgd" in flag_help("--optimizer") and "lora" in flag_help("--method")


@pytest.mark.parametrize("flag", ["--clients", "--lr", "--dp"])
def test_flags_read_their_field_s_type(flag: str, capsys) -> None:
    from fedpet.cli import build_parser

    parser = build_parser()
    args = {"--clients": ["7"], "--lr": ["1e-3"], "--dp": []}[flag]
    parsed = parser.parse_args(["run", flag, *args])
    value = getattr(parsed, FLAGS[flag])
    assert value == {"--clients": 7, "--lr": 1e-3, "--dp": True}[flag]


def test_the_results_table_is_computed_from_the_study_rows_by_hand() -> None:
    import pandas as pd

    from fedpet.cli.pages import BEGIN, END, render_results, with_results

    rows = [
        ("full", "iid", 0, 0.80, 1000.0),
        ("full", "iid", 1, 0.90, 1000.0),
        ("lora", "iid", 0, 0.70, 4.0),
        ("lora", "iid", 1, 0.80, 6.0),
        ("lora", "alpha=0.1", 0, 0.50, 5.0),
        ("lora", "centralized", 0, 0.85, 0.0),
    ]
    frame = pd.DataFrame(
        [
            {"run": f"{m}-{s}-{seed}", "task": "t", "method": m, "setting": s, "seed": seed}
            | {"status": "done", "test_metric": acc, "mb_total": mb}
            for m, s, seed, acc, mb in rows
        ]
    )
    table = render_results(frame).splitlines()
    assert table[0] == "| method | iid | alpha=0.1 | centralized | MB per run | % of FedFT's MB |"
    # 85 +- sample std of (80, 90) = 7.07; lora's MB: mean of 4, 6, 5 = 5, 0.50% of 1,000
    assert table[2] == "| full | 85.0 ± 7.1 | - | - | 1,000.0 | 100.00% |"
    assert table[3] == "| lora | 75.0 ± 7.1 | 50.0 ± 0.0 | 85.0 ± 0.0 | 5.0 | 0.50% |"
    page = with_results(f"a\n{BEGIN}\nold\n{END}\nb", "new")
    assert page == f"a\n{BEGIN}\nnew\n{END}\nb"
