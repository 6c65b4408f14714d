"""The configuration reference: written from the fields' declarations, and current."""

import pytest

from fedpet.reference import (
    FLAGS,
    REPO,
    field_docs,
    flag_help,
    lookup,
    render_reference,
    with_flags,
)


def test_the_reference_page_and_the_readme_flag_table_are_current() -> None:
    # after changing a field's declaration: python -m fedpet.reference
    assert (REPO / "docs" / "config.md").read_text(encoding="utf-8") == render_reference()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert with_flags(readme) == readme


def test_every_field_has_help_and_every_flag_says_its_field_s_default() -> None:
    docs = field_docs()
    assert all(d.help for d in docs), [d.dotted for d in docs if not d.help]
    assert len({d.dotted for d in docs}) == len(docs)  # no field declared twice
    assert lookup("method.r").owners == ("lora",)
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
